"""``mel``: the command line of modeling-mel.

    mel demo [--output_dir outputs/demo] [--full]
    mel pretrain  ...   (= python train/pretrain_nsp.py ...)
    mel finetune  ...   (= python train/finetune_linking.py ...)
    mel evaluate  ...   (= python train/evaluate_linking.py ...)

Each subcommand is one entry of :data:`COMMANDS`: ``name -> (help, function)``, where ``function(argv)`` parses its
own arguments (so ``mel <name> --help`` shows them) and returns an exit code or ``None``. Adding a subcommand is
one line::

    COMMANDS["index"] = ("build a FAISS index of entity embeddings", _index_main)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

Command = Callable[[list[str]], "int | None"]


def _train_dir() -> Path:
    """``<repo>/train`` (the scripts live beside the package in a source checkout / editable install)."""
    return Path(__file__).resolve().parents[1] / "train"


def _load_train_script(name: str):
    """Import ``<repo>/train/<name>.py`` by path (``train/`` is not a package)."""
    path = _train_dir() / f"{name}.py"
    if not path.is_file():
        raise SystemExit(
            f"mel: {path} not found; the training subcommands need a source checkout of modeling-mel "
            "(pip install -e .), or run the train/ scripts directly"
        )
    from .corpus import import_file

    return import_file(path, f"modeling_mel_train_{name}")  # registered: the script's dataclasses look it up


def _script(name: str) -> Command:
    def run(argv: list[str]) -> int | None:
        _load_train_script(name).main(argv)
        return 0

    return run


def _demo(argv: list[str]) -> int | None:
    parser = argparse.ArgumentParser(
        prog="mel demo",
        description="PFMEL end to end on the generated sample corpus (a few minutes on CPU): pre-train, fine-tune, "
        "evaluate against NSP-BERT and a name-match baseline, save the model, link one mention.",
    )
    parser.add_argument("--output_dir", default="outputs/demo", help="where the sample, features and models go")
    parser.add_argument("--full", action="store_true", help="the paper's settings instead of the quick CPU ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample corpus and of training")
    parser.add_argument("--backbone", default=None, help="text backbone (default: embedded all-MiniLM-L6-v2)")
    args = parser.parse_args(argv)
    from .demo import run_demo

    run_demo(args.output_dir, quick=not args.full, seed=args.seed, backbone=args.backbone)
    return 0


#: Subcommands: name -> (one-line help, function(argv) -> exit code).
COMMANDS: dict[str, tuple[str, Command]] = {
    "demo": ("PFMEL end to end on the sample corpus in a few minutes", _demo),
    "pretrain": ("PFMEL NSP pre-training (train/pretrain_nsp.py)", _script("pretrain_nsp")),
    "finetune": ("PFMEL NSP fine-tuning for linking + dev/test accuracy (train/finetune_linking.py)", _script("finetune_linking")),
    "evaluate": ("evaluate a saved PFMEL linker (train/evaluate_linking.py)", _script("evaluate_linking")),
}

from .cli_inference import INFERENCE_COMMANDS  # noqa: E402  (inference, ZEMEL training and dataset subcommands)

COMMANDS["train-zemel"] = INFERENCE_COMMANDS["train-zemel"]
COMMANDS["build-dataset"] = INFERENCE_COMMANDS["build-dataset"]
COMMANDS["export-dataset"] = INFERENCE_COMMANDS["export-dataset"]
COMMANDS["index"] = INFERENCE_COMMANDS["index"]
COMMANDS["link"] = INFERENCE_COMMANDS["link"]
COMMANDS["calibrate"] = INFERENCE_COMMANDS["calibrate"]
COMMANDS["serve"] = INFERENCE_COMMANDS["serve"]
COMMANDS["model-card"] = INFERENCE_COMMANDS["model-card"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mel", description="multimodal entity linking (PFMEL, ZEMEL)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mel`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; choose one of {sorted(COMMANDS)}")
    logging.basicConfig(level=os.environ.get("MEL_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    try:
        code = COMMANDS[name][1](rest)
    except (ValueError, FileNotFoundError) as err:
        # argument, data and checkpoint errors: one line naming the problem, no traceback (argparse's SystemExit and
        # other exceptions pass through unchanged)
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"mel {name}: {message}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
