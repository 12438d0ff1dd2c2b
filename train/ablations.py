#!/usr/bin/env python
"""Every PFMEL variant of the paper (Tables 4-6) over seeds: mean ± std accuracy.

Thin front end of :mod:`modeling_mel.scripts.ablations` (installed with the package; its ``main`` holds the numbered
steps of the run). The same run: ``mel ablations``, ``python -m modeling_mel.scripts.ablations``, and under
``accelerate launch`` either this file or ``-m modeling_mel.scripts.ablations``. ``--help`` lists the arguments.
"""

import sys

from modeling_mel.scripts import run_as_script
from modeling_mel.scripts.ablations import main

if __name__ == "__main__":
    sys.exit(run_as_script(main, "ablations"))
