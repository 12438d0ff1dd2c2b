#!/usr/bin/env python
"""ZEMEL training (zero-shot multimodal entity linking, Zheng et al. 2022), then evaluation on dev and test.

Thin front end of :mod:`modeling_mel.scripts.train_zemel` (installed with the package; its ``main`` holds the numbered
steps of the run). The same run: ``mel train-zemel``, ``python -m modeling_mel.scripts.train_zemel``, and under
``accelerate launch`` either this file or ``-m modeling_mel.scripts.train_zemel``. ``--help`` lists the arguments.
"""

import sys

from modeling_mel.scripts import run_as_script
from modeling_mel.scripts.train_zemel import main

if __name__ == "__main__":
    sys.exit(run_as_script(main, "train_zemel"))
