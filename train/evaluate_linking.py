#!/usr/bin/env python
"""Evaluate a saved PFMEL linker: accuracy (argmax over the name-rule candidates), candidate recall, and the NIL

Thin front end of :mod:`modeling_mel.scripts.evaluate_linking` (installed with the package; its ``main`` holds the numbered
steps of the run). The same run: ``mel evaluate``, ``python -m modeling_mel.scripts.evaluate_linking``, and under
``accelerate launch`` either this file or ``-m modeling_mel.scripts.evaluate_linking``. ``--help`` lists the arguments.
"""

import sys

from modeling_mel.scripts import run_as_script
from modeling_mel.scripts.evaluate_linking import main

if __name__ == "__main__":
    sys.exit(run_as_script(main, "evaluate_linking"))
