"""``mel build-dataset`` / ``mel export-dataset``: a corpus built with its datasets builder and saved to disk, or
exported as a Hub dataset folder (the corpus code lives in ``corpus.py`` / ``hub_dataset.py``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger(__name__)

def build_dataset_main(argv: list[str]) -> int:
    """``mel build-dataset``: build the ``mentions`` and ``kb`` configs of a corpus and save them with save_to_disk."""
    parser = argparse.ArgumentParser(
        prog="mel build-dataset",
        description="Build a corpus with its datasets builder (mentions + kb configs) and save both with "
        "save_to_disk: OUT/mentions (a DatasetDict of splits) and OUT/kb (a Dataset).",
    )
    parser.add_argument(
        "--dataset", required=True,
        help="builder name: twitter_mel, zemeld, mel_jsonl, wikimel, richpedia_mel, mimic_mel"
    )
    parser.add_argument("--data_dir", required=True, help="folder with the corpus files in the builder's raw layout")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--cache_dir", default=None, help="Arrow cache folder of the builder")
    args = parser.parse_args(argv)
    from .corpus import load_mel_corpus

    try:
        for config in ("mentions", "kb"):
            ds = load_mel_corpus(args.dataset, args.data_dir, config=config, cache_dir=args.cache_dir)
            ds.save_to_disk(os.path.join(args.out, config))
            logger.info("%s/%s: %s -> %s", args.dataset, config, ds, os.path.join(args.out, config))
    except (ValueError, FileNotFoundError) as err:
        print(f"mel build-dataset: {err}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


def export_dataset_main(argv: list[str]) -> int:
    """``mel export-dataset``: :func:`modeling_mel.hub_dataset.export_main`."""
    from .hub_dataset import export_main

    return int(export_main(argv, prog="mel export-dataset") or 0)


__all__ = ["build_dataset_main", "export_dataset_main"]
