#!/usr/bin/env python
"""PFMEL pre-training with the three NSP tasks (mixed-modal, text-only, multimodal), optionally role-swapped.

Thin front end of :mod:`modeling_mel.scripts.pretrain_nsp` (installed with the package; its ``main`` holds the numbered
steps of the run). The same run: ``mel pretrain``, ``python -m modeling_mel.scripts.pretrain_nsp``, and under
``accelerate launch`` either this file or ``-m modeling_mel.scripts.pretrain_nsp``. ``--help`` lists the arguments.
"""

import sys

from modeling_mel.scripts import run_as_script
from modeling_mel.scripts.pretrain_nsp import main

if __name__ == "__main__":
    sys.exit(run_as_script(main, "pretrain_nsp"))
