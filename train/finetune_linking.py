#!/usr/bin/env python
"""PFMEL fine-tuning: NSP linking with the paper's prompts, then accuracy on dev and test.

Thin front end of :mod:`modeling_mel.scripts.finetune_linking` (installed with the package; its ``main`` holds the numbered
steps of the run). The same run: ``mel finetune``, ``python -m modeling_mel.scripts.finetune_linking``, and under
``accelerate launch`` either this file or ``-m modeling_mel.scripts.finetune_linking``. ``--help`` lists the arguments.
"""

import sys

from modeling_mel.scripts import run_as_script
from modeling_mel.scripts.finetune_linking import main

if __name__ == "__main__":
    sys.exit(run_as_script(main, "finetune_linking"))
