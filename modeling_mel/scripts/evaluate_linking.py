"""Evaluate a saved PFMEL linker: accuracy (argmax over the name-rule candidates), candidate recall, the field's H@1,
H@3, H@5, H@10, H@20, MR and MRR over the ranked candidates (a gold outside them has no rank: counted after every KB
entity; ``modeling_mel.metrics.ranking_metrics``), and the NIL metrics (``nil_*``: in-KB accuracy, NIL precision / recall / F1, overall accuracy) under the NIL protocol of
``modeling_mel.nil`` at the model's calibrated threshold (``mel calibrate``).

    python -m modeling_mel.scripts.evaluate_linking --model O/linker --dataset twitter_mel --data_dir D --split test

Prints the results and writes them to ``--output_file`` (default ``<model>/eval_results.json``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from modeling_mel.nil import NIL_THRESHOLD_HELP
from modeling_mel.pfmel_training import SPLITS, PFMELDataArguments, load_corpus, run_evaluation


@dataclass
class EvaluationArguments:
    model: str = field(default=None, metadata={"help": "saved model dir (finetune_linking.py --output_dir)"})
    split: list[str] = field(default_factory=lambda: ["test"], metadata={"help": f"splits to evaluate, of {list(SPLITS)}"})
    batch_size: int = field(default=64, metadata={"help": "pairs per scoring batch"})
    bf16: bool = field(default=False, metadata={"help": "score under bf16 autocast (CPU or GPU)"})
    output_file: str | None = field(default=None, metadata={"help": "results JSON (default <model>/eval_results.json)"})
    predictions_file: str | None = field(default=None, metadata={"help": "also write ranked candidates as JSONL"})
    retriever: str | None = field(default=None, metadata={
        "help": "an entity index of a ZEMEL model (mel index): evaluate the two-stage linker, the retriever's dense top "
                "--retriever_k merged with the closest names and reranked with the fused score, as `mel link "
                "--retriever` runs it"})
    retriever_model: str | None = field(default=None, metadata={
        "help": "the ZEMEL model of --retriever (default: the model recorded in the index)"})
    retriever_k: int | None = field(default=None, metadata={
        "help": "with --retriever: dense candidates per mention (default: the reranker's config.retriever_k)"})
    nil_threshold: str = field(default="calibrated", metadata={"help": NIL_THRESHOLD_HELP})
    nil_fraction: float | None = field(default=None, metadata={"help": "NIL protocol: share of gold entities removed "
                                                                        "(default: the calibration's, else 0.2)"})
    nil_seed: int | None = field(default=None, metadata={"help": "NIL protocol seed (default: the calibration's, else 0)"})

    def __post_init__(self) -> None:
        if not self.model or not os.path.isfile(os.path.join(self.model, "config.json")):
            raise ValueError(f"--model {self.model!r} is not a saved model directory (no config.json)")
        for s in self.split:
            if s not in SPLITS:
                raise ValueError(f"unknown --split {s!r}; choose from {list(SPLITS)}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size!r}")
        if self.retriever is not None and not os.path.isfile(os.path.join(self.retriever, "index_config.json")):
            raise ValueError(f"--retriever {self.retriever!r} is not an entity index directory (build one with mel index)")
        if self.retriever_k is not None and self.retriever_k < 1:
            raise ValueError(f"--retriever_k must be >= 1, got {self.retriever_k!r}")


def main(argv: list[str] | None = None) -> dict:
    # 1. Parse arguments.
    parser = HfArgumentParser((EvaluationArguments, PFMELDataArguments))
    eval_args, data_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # 2. Load the corpus; the image feature source must match the model's (resnet50 / precomputed / none).
    corpus = load_corpus(data_args, model_dir=eval_args.model)  # the model's recorded image encoder by default

    # 3. Score every candidate of every mention, compute the metrics, write them.
    results = run_evaluation(
        eval_args.model, data_args, eval_args.split, eval_args.batch_size, eval_args.bf16,
        eval_args.output_file, corpus=corpus, predictions_file=eval_args.predictions_file,
        nil_threshold=eval_args.nil_threshold, nil_fraction=eval_args.nil_fraction, nil_seed=eval_args.nil_seed,
        retriever=eval_args.retriever, retriever_model=eval_args.retriever_model, retriever_k=eval_args.retriever_k,
    )

    # 4. Report.
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    from modeling_mel.scripts import run_as_script

    sys.exit(run_as_script(main, "evaluate_linking"))
