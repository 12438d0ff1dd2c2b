"""The training and evaluation runs of ``mel`` as importable modules (installed with the package).

Each module has ``main(argv) -> results`` whose numbered steps are the run (parse arguments, check the output
folder, load the corpus, train, save, evaluate), so ``mel <command>``, ``python -m modeling_mel.scripts.<name>``,
``accelerate launch -m modeling_mel.scripts.<name>`` and the thin front ends of a source checkout's ``train/``
folder run the same code:

=====================  ===================  ===========================================
module                 ``mel`` subcommand   what it runs
=====================  ===================  ===========================================
``pretrain_nsp``       ``pretrain``         PFMEL's three NSP pre-training tasks
``finetune_linking``   ``finetune``         PFMEL NSP fine-tuning for linking
``evaluate_linking``   ``evaluate``         a saved PFMEL linker on a corpus
``train_zemel``        ``train-zemel``      ZEMEL training, then evaluation
``evaluate_zemel``     ``evaluate-zemel``   a saved ZEMEL model on a corpus
``ablations``          ``ablations``        the PFMEL ablation variants x seeds
``zemel_ablations``    ``zemel-ablations``  ZEMEL's Table 4 and Fig. 4 variants x seeds
=====================  ===================  ===========================================
"""

from __future__ import annotations

import sys
from typing import Any, Callable


def run_as_script(main: Callable[[list[str]], Any], prog: str, argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` as a command: argument, data and checkpoint errors (``ValueError``,
    ``FileNotFoundError``) become one line on stderr and exit code 2, with no traceback."""
    try:
        main(list(sys.argv[1:] if argv is None else argv))
    except (ValueError, FileNotFoundError) as err:
        print(f"{prog}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


__all__ = ["run_as_script"]
