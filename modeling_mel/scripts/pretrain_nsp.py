"""PFMEL pre-training with the three NSP tasks (mixed-modal, text-only, multimodal), optionally role-swapped.

    python -m modeling_mel.scripts.pretrain_nsp --dataset twitter_mel --data_dir D --output_dir O/pretrained
    python -m modeling_mel.scripts.pretrain_nsp ... --tasks mixed text --swap_roles False      # PFMELmt
    accelerate launch --config_file train/accelerate_multi_gpu.yaml -m modeling_mel.scripts.pretrain_nsp ...

Defaults are the paper's (Table 3): max length 300, 5 epochs, batch 4, AdamW, lr 5e-6 with linear decay.
Every ``TrainingArguments`` option applies (``--bf16``, ``--use_cpu``, ``--save_steps``, ``--max_steps``, ...).
The output folder holds the model and processor (``save_pretrained``); fine-tune it with
``mel finetune --init_from O/pretrained``.
"""

from __future__ import annotations

import json
import logging
import sys

from transformers import HfArgumentParser

from modeling_mel.pfmel_training import (
    PFMELDataArguments,
    PFMELModelArguments,
    PFMELPretrainingArguments,
    load_corpus,
    prepare_output_dir,
    resolve_resume_checkpoint,
    run_pretraining,
)

logger = logging.getLogger("pretrain_nsp")


def main(argv: list[str] | None = None, callbacks=None) -> dict:
    # 1. Parse arguments (ValueError names a bad value before anything is loaded).
    parser = HfArgumentParser((PFMELDataArguments, PFMELModelArguments, PFMELPretrainingArguments))
    data_args, model_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO if train_args.should_log else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Refuse an --output_dir holding another run (model / checkpoint-*) unless --overwrite_output_dir (removes its
    # checkpoints) or --resume_from_checkpoint; check the checkpoint to resume before loading anything.
    with train_args.main_process_first(local=False, desc="output_dir check"):
        prepare_output_dir(train_args.output_dir, train_args.overwrite_output_dir, train_args.resume_from_checkpoint)
        train_args.resume_from_checkpoint = resolve_resume_checkpoint(train_args.output_dir, train_args.resume_from_checkpoint)

    # 2. Load the corpus and its image features (each image is encoded once; cached by content hash).
    corpus = load_corpus(data_args, model_dir=model_args.init_from)  # default encoder: the one --init_from records

    # 3. Build the NSP pairs, pre-train, save model + processor.
    summary = run_pretraining(data_args, model_args, train_args, corpus=corpus, callbacks=callbacks)

    # 4. Report.
    if train_args.should_log:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    from modeling_mel.scripts import run_as_script

    sys.exit(run_as_script(main, "pretrain_nsp"))
