"""``mel``: the command line of modeling-mel.

    mel demo [--output_dir outputs/demo] [--full]
    mel pretrain | finetune | evaluate | ablations            PFMEL (modeling_mel.scripts.*)
    mel train-zemel | evaluate-zemel | zemel-ablations        ZEMEL (modeling_mel.scripts.*)
    mel build-dataset | export-dataset | index | link | calibrate | serve | model-card

Each subcommand is one entry of :data:`COMMANDS`: ``name -> (help, target)``, where ``target`` is a function
``f(argv)`` or the string ``"module:function"`` of one, imported only when the subcommand runs (so ``mel --help`` and
``mel <name> --help`` start without torch, transformers or the pipeline). ``f`` parses its own arguments (so
``mel <name> --help`` shows them) and returns an exit code, ``None`` or a result (both meaning success). Adding a
subcommand is one line::

    COMMANDS["index"] = ("build a FAISS index of entity embeddings", "modeling_mel.cli_index:index_main")
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any, Callable, Union

Command = Callable[[list[str]], Any]

#: Subcommands: name -> (one-line help, function(argv) or "module:function").
COMMANDS: dict[str, tuple[str, Union[str, Command]]] = {
    "demo": ("PFMEL end to end on the sample corpus in a few minutes", "modeling_mel.demo:demo_main"),
    "build-dataset": (
        "build a corpus (twitter_mel, zemeld, mel_jsonl, wikimel, richpedia_mel, mimic_mel) into datasets saved on disk",
        "modeling_mel.cli_datasets:build_dataset_main",
    ),
    "export-dataset": ("export a corpus as a code-free Hub dataset (Parquet + card)",
                       "modeling_mel.cli_datasets:export_dataset_main"),
    "pretrain": ("PFMEL NSP pre-training (modeling_mel.scripts.pretrain_nsp)", "modeling_mel.scripts.pretrain_nsp:main"),
    "finetune": ("PFMEL NSP fine-tuning for linking + dev/test accuracy (modeling_mel.scripts.finetune_linking)",
                 "modeling_mel.scripts.finetune_linking:main"),
    "evaluate": ("evaluate a saved PFMEL linker (modeling_mel.scripts.evaluate_linking)",
                 "modeling_mel.scripts.evaluate_linking:main"),
    "train-zemel": ("ZEMEL training, then evaluation (modeling_mel.scripts.train_zemel)",
                    "modeling_mel.scripts.train_zemel:main"),
    "evaluate-zemel": ("evaluate a saved ZEMEL model (modeling_mel.scripts.evaluate_zemel)",
                       "modeling_mel.scripts.evaluate_zemel:main"),
    "ablations": ("PFMEL ablation variants x seeds (modeling_mel.scripts.ablations)", "modeling_mel.scripts.ablations:main"),
    "zemel-ablations": ("ZEMEL Table 4 (poly codes m, bi) and Fig. 4 (candidate images) x seeds "
                        "(modeling_mel.scripts.zemel_ablations)", "modeling_mel.scripts.zemel_ablations:main"),
    "features": ("extract every mention and KB image's features once into a safetensors cache (--features F)",
                 "modeling_mel.feature_cache:features_main"),
    "index": ("encode a KB with a ZEMEL model into a FAISS entity index", "modeling_mel.cli_index:index_main"),
    "link": ("link the mentions of a JSONL file to a KB or an entity index", "modeling_mel.cli_link:link_main"),
    "calibrate": ("choose and save a model's NIL ('not in the KB') threshold on labelled dev mentions",
                  "modeling_mel.cli_calibrate:calibrate_main"),
    "serve": ("serve a linking model over HTTP with dynamic batching (FastAPI + uvicorn)",
              "modeling_mel.cli_serve:serve_main"),
    "model-card": ("render the model card (README.md) of a saved model with its evaluation results",
                   "modeling_mel.cli_model_card:model_card_main"),
}


def resolve_command(target: Union[str, Command]) -> Command:
    """The function of a :data:`COMMANDS` target (``"module:function"`` is imported now)."""
    if callable(target):
        return target
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


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
        code = resolve_command(COMMANDS[name][1])(rest)
    except (ValueError, FileNotFoundError) as err:
        # argument, data and checkpoint errors: one line naming the problem, no traceback (argparse's SystemExit and
        # other exceptions pass through unchanged)
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"mel {name}: {message}", file=sys.stderr)
        return 2
    return int(code) if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
