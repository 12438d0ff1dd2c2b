"""PFMEL fine-tuning: NSP linking with the paper's prompts, then accuracy on dev and test.

    python -m modeling_mel.scripts.finetune_linking --dataset twitter_mel --data_dir D --init_from O/pretrained --output_dir O/linker
    python -m modeling_mel.scripts.finetune_linking ... --image_features none                     # NSP-BERT (text only)
    python -m modeling_mel.scripts.finetune_linking ... --train_split train07                      # PFMEL07
    accelerate launch --config_file train/accelerate_multi_gpu.yaml -m modeling_mel.scripts.finetune_linking ...

Defaults are the paper's (Table 3): max length 300, 4 epochs, batch 16, AdamW, lr 5e-6 with linear decay.
Per mention: the gold entity (label 0) plus up to ``--num_negatives`` other name-rule candidates (label 1).
Writes ``O/eval_results.json`` (``{split: {accuracy, candidate_recall, mrr, n}}``) and saves model + processor.
"""

from __future__ import annotations

import json
import logging
import sys

from transformers import HfArgumentParser

from modeling_mel.pfmel_training import (
    PFMELDataArguments,
    PFMELFinetuningArguments,
    PFMELModelArguments,
    load_corpus,
    prepare_output_dir,
    resolve_resume_checkpoint,
    run_finetuning,
)

logger = logging.getLogger("finetune_linking")


def main(argv: list[str] | None = None, callbacks=None) -> dict:
    # 1. Parse arguments (ValueError names a bad value before anything is loaded).
    parser = HfArgumentParser((PFMELDataArguments, PFMELModelArguments, PFMELFinetuningArguments))
    data_args, model_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO if train_args.should_log else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Refuse an --output_dir holding another run (model / checkpoint-*) unless --overwrite_output_dir (removes its
    # checkpoints) or --resume_from_checkpoint; check the checkpoint to resume before loading anything.
    with train_args.main_process_first(local=False, desc="output_dir check"):
        prepare_output_dir(train_args.output_dir, train_args.overwrite_output_dir, train_args.resume_from_checkpoint)
        train_args.resume_from_checkpoint = resolve_resume_checkpoint(train_args.output_dir, train_args.resume_from_checkpoint)

    # 2. Load the corpus and its image features.
    corpus = load_corpus(data_args, model_dir=model_args.init_from)  # default encoder: the one --init_from records

    # 3. Fine-tune on the training split, save, evaluate the eval splits, write eval_results.json.
    results = run_finetuning(data_args, model_args, train_args, corpus=corpus, callbacks=callbacks)

    # 4. Report.
    if train_args.should_log:
        print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    from modeling_mel.scripts import run_as_script

    sys.exit(run_as_script(main, "finetune_linking"))
