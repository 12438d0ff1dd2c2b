"""ZEMEL training (zero-shot multimodal entity linking, Zheng et al. 2022), then evaluation on dev and test.

    python -m modeling_mel.scripts.train_zemel --dataset zemeld --data_dir D --output_dir O
    python -m modeling_mel.scripts.train_zemel --dataset zemeld --data_dir D --output_dir O --scoring bi          # bi-encoder
    python -m modeling_mel.scripts.train_zemel --dataset mel_jsonl --data_dir D --output_dir O --image_features none
    accelerate launch --config_file train/accelerate_multi_gpu.yaml -m modeling_mel.scripts.train_zemel --dataset zemeld ...

Each training mention is scored against ``--num_candidates`` candidates from BM25 + the three name rules over the
training KB (the gold inserted when missing) AND against the candidates of every other mention of the batch
(in-batch negatives; an entity equal to the row's gold is masked out). Loss: cross-entropy (eq. 5 scores).
The visual stream of a context gets the whole image and the mention's box; corpora without images train text only.
At the end: model + processor saved to ``O`` (``AutoModel.from_pretrained(O)`` reloads it), ``O/train_results.json``
(losses), ``O/eval_results.json`` (per split: precision / R@1 / micro-F1 at 5 and 100 candidates, V&T-KG, V-T-KG,
candidate recall; see ``modeling_mel.zemel_evaluation``).
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser, set_seed

from modeling_mel.zemel_training import (  # noqa: F401 - the argument classes are the script's interface
    ZemelDataArguments,
    ZemelModelArguments,
    ZemelTrainingArguments,
    build_model,
    run_zemel_training,
)

logger = logging.getLogger("train_zemel")


def main(argv: list[str] | None = None) -> dict:
    # 1. Parse arguments (a ValueError names a bad value before anything is loaded).
    parser = HfArgumentParser((ZemelDataArguments, ZemelModelArguments, ZemelTrainingArguments))
    data_args, model_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(
        level=logging.INFO if train_args.should_log else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    set_seed(train_args.seed)
    # 2. Refuse an --output_dir holding another run (model / checkpoint-*) unless --overwrite_output_dir (removes its
    #    checkpoints) or --resume_from_checkpoint; resolve "last" and check the checkpoint before loading anything.
    from modeling_mel.run_outputs import prepare_output_dir, resolve_resume_checkpoint

    with train_args.main_process_first(local=False, desc="output_dir check"):
        prepare_output_dir(train_args.output_dir, train_args.overwrite_output_dir, train_args.resume_from_checkpoint)
        train_args.resume_from_checkpoint = resolve_resume_checkpoint(train_args.output_dir, train_args.resume_from_checkpoint)
    # 3. Corpus, image features, model, training, saving and evaluation (modeling_mel.zemel_training).
    return run_zemel_training(data_args, model_args, train_args)


if __name__ == "__main__":
    from modeling_mel.scripts import run_as_script

    sys.exit(run_as_script(main, "train_zemel"))
