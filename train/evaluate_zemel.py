#!/usr/bin/env python
"""Evaluate a saved ZEMEL model: precision / R@1 / micro-F1 at 5 and 100 candidates, V&T-KG and V-T-KG, and the

Thin front end of :mod:`modeling_mel.scripts.evaluate_zemel` (installed with the package; its ``main`` holds the numbered
steps of the run). The same run: ``mel evaluate-zemel``, ``python -m modeling_mel.scripts.evaluate_zemel``, and under
``accelerate launch`` either this file or ``-m modeling_mel.scripts.evaluate_zemel``. ``--help`` lists the arguments.
"""

import sys

from modeling_mel.scripts import run_as_script
from modeling_mel.scripts.evaluate_zemel import main

if __name__ == "__main__":
    sys.exit(run_as_script(main, "evaluate_zemel"))
