#!/usr/bin/env python
"""The ZEMEL paper's Table 4 (poly codes m, bi-encoder) and Fig. 4 (candidate images) over seeds: mean ± std.

Thin front end of :mod:`modeling_mel.scripts.zemel_ablations` (installed with the package; its ``main`` holds the
numbered steps of the run). The same run: ``mel zemel-ablations``, ``python -m modeling_mel.scripts.zemel_ablations``,
and under ``accelerate launch`` either this file or ``-m modeling_mel.scripts.zemel_ablations``. ``--help`` lists the
arguments.
"""

import sys

from modeling_mel.scripts import run_as_script
from modeling_mel.scripts.zemel_ablations import main

if __name__ == "__main__":
    sys.exit(run_as_script(main, "zemel_ablations"))
