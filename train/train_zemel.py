#!/usr/bin/env python
"""ZEMEL training (zero-shot multimodal entity linking, Zheng et al. 2022), then evaluation on dev and test.

    python train/train_zemel.py --dataset zemeld --data_dir D --output_dir O
    python train/train_zemel.py --dataset zemeld --data_dir D --output_dir O --scoring bi          # bi-encoder
    python train/train_zemel.py --dataset mel_jsonl --data_dir D --output_dir O --image_features none
    accelerate launch --config_file train/accelerate_multi_gpu.yaml train/train_zemel.py --dataset zemeld ...

Each training mention is scored against ``--num_candidates`` candidates from BM25 + the three name rules over the
training KB (the gold inserted when missing) AND against the candidates of every other mention of the batch
(in-batch negatives; an entity equal to the row's gold is masked out). Loss: cross-entropy (eq. 5 scores).
The visual stream of a context gets the whole image and the mention's box; corpora without images train text only.
At the end: model + processor saved to ``O`` (``AutoModel.from_pretrained(O)`` reloads it), ``O/train_results.json``
(losses), ``O/eval_results.json`` (per split: precision / R@1 / micro-F1 at 5 and 100 candidates, V&T-KG, V-T-KG,
candidate recall; see ``modeling_mel.zemel_evaluation``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from modeling_mel.candidates import Bm25RuleCandidates
from modeling_mel.configuration_zemel import SCORING_MODES
from modeling_mel.corpus import ListDataset
from modeling_mel.zemel_evaluation import (
    EVAL_KB_HELP,
    EVAL_KB_MODES,
    IMAGE_FEATURE_MODES,
    ZEMEL_DATASETS,
    RegionFeatures,
    build_image_extractor,
    canonical_split,
    check_zero_shot,
    evaluate_splits,
    load_zemel_data,
)
from modeling_mel.zemel_training import HardNegativeCallback, ZemelCollator, ZemelTrainer, ZemelTrainingCollator

logger = logging.getLogger("train_zemel")


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------
def _split_list(value: str) -> list[str]:
    return [s.strip() for s in str(value).split(",") if s.strip()]


@dataclass
class ZemelDataArguments:
    """Corpus, candidates and image features."""

    dataset: str = field(default="zemeld", metadata={"help": f"corpus: one of {list(ZEMEL_DATASETS)}"})
    data_dir: str | None = field(default=None, metadata={"help": "folder with the corpus in the raw layout of --dataset"})
    train_split: str = field(default="train", metadata={"help": "training split"})
    eval_splits: str = field(default="dev,test", metadata={"help": "comma-separated splits evaluated at the end ('' for none)"})
    eval_kb: str = field(
        default="unseen",
        metadata={"help": EVAL_KB_HELP},
    )
    num_candidates: int = field(
        default=4,
        metadata={"help": "training candidates per mention: the gold + (N-1) negatives from --negatives, plus every other "
                  "mention's candidates of the batch (in-batch negatives)"},
    )
    negatives: str = field(
        default="dense",
        metadata={"help": "dense: hard negatives mined with the model being trained over the training KB, refreshed "
                  "before every epoch (BLINK-style rounds); bm25: BM25 + the three name rules"},
    )
    eval_num_candidates: str = field(default="5,100", metadata={"help": "candidate counts N of the metrics at /N"})
    image_features: str = field(
        default="resnet50",
        metadata={"help": "resnet50: pooled ResNet region features (text only when the corpus has no images); none: text only"},
    )
    image_model: str = field(
        default="microsoft/resnet-50",
        metadata={"help": "ResNet checkpoint (hub id or dir); offline a random-init ResNet-50 is used with a warning; "
                  "'tiny': a small random-init ResNet (tests)"},
    )
    image_size: int = field(default=224, metadata={"help": "image side fed to ResNet (224 as in the paper; 64 is fast)"})
    image_cache_dir: str | None = field(default=None, metadata={"help": "on-disk image feature cache (default: in memory)"})
    max_entity_images: int = field(default=9, metadata={"help": "most KB images per candidate entity (regions)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training mentions"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N mentions per eval split"})
    context_max_length: int = field(default=64, metadata={"help": "max tokens of a mention context"})
    candidate_max_length: int = field(default=64, metadata={"help": "max tokens of a candidate (name [ENT] description)"})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "Arrow cache of the corpus builder"})

    def __post_init__(self) -> None:
        if self.dataset not in ZEMEL_DATASETS:
            raise ValueError(f"unknown --dataset {self.dataset!r}; choose one of {list(ZEMEL_DATASETS)}")
        if self.image_features not in IMAGE_FEATURE_MODES:
            raise ValueError(f"unknown --image_features {self.image_features!r}; choose one of {list(IMAGE_FEATURE_MODES)}")
        if self.negatives not in ("dense", "bm25"):
            raise ValueError(f"unknown --negatives {self.negatives!r}; choose 'dense' or 'bm25'")
        if self.eval_kb not in EVAL_KB_MODES:
            raise ValueError(f"unknown --eval_kb {self.eval_kb!r}; choose one of {list(EVAL_KB_MODES)}")
        if self.data_dir is None:
            raise ValueError("--data_dir is required: the folder holding the corpus files")
        if not os.path.isdir(self.data_dir):
            raise ValueError(f"--data_dir {self.data_dir!r} is not a directory")
        for name in ("num_candidates", "image_size", "max_entity_images", "context_max_length", "candidate_max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"--{name} must be >= 1, got {v!r}")
        try:
            ns = [int(n) for n in _split_list(self.eval_num_candidates)]
        except ValueError:
            ns = []
        if not ns or min(ns) < 1:
            raise ValueError(f"--eval_num_candidates {self.eval_num_candidates!r} must be positive integers like '5,100'")
        self.ns = ns
        self.eval_split_list = _split_list(self.eval_splits)


@dataclass
class ZemelModelArguments:
    """Architecture of the ZEMEL model (``ZemelPolyEncoder.from_text_backbone``)."""

    backbone: str = field(default="minilm", metadata={"help": "text backbone: 'minilm' (embedded), a hub id or a BERT dir"})
    scoring: str = field(default="poly", metadata={"help": f"scoring head: one of {list(SCORING_MODES)}"})
    poly_m: int = field(default=16, metadata={"help": "number of poly codes m (paper's best: 360)"})
    max_regions: int = field(default=10, metadata={"help": "most visual regions per input (whole image first)"})
    context_template: str = field(
        default="mention_first",
        metadata={"help": "paper: [CLS] ctx_l [M] m [/M] ctx_r [SEP]; mention_first: [CLS] m . ctx_l [M] m [/M] ctx_r "
                  "[SEP] (better for sentence-transformers backbones, see README)"},
    )
    v_hidden_size: int | None = field(default=None, metadata={"help": "visual stream hidden size (config default 1024)"})
    v_intermediate_size: int | None = field(default=None, metadata={"help": "visual feed-forward size (default 1024)"})
    v_num_attention_heads: int | None = field(default=None, metadata={"help": "visual attention heads (default 8)"})
    v_num_hidden_layers: int | None = field(default=None, metadata={"help": "visual self-attention layers (default 2)"})
    bi_hidden_size: int | None = field(default=None, metadata={"help": "co-attention inner size (default 1024)"})
    bi_num_attention_heads: int | None = field(default=None, metadata={"help": "co-attention heads (default 8)"})
    config_overrides: str | None = field(
        default=None, metadata={"help": 'JSON dict of further ZemelConfig settings, e.g. \'{"fusion": "sum"}\''}
    )

    def __post_init__(self) -> None:
        if self.scoring not in SCORING_MODES:
            raise ValueError(f"unknown --scoring {self.scoring!r}; choose one of {list(SCORING_MODES)}")
        if int(self.poly_m) < 1:
            raise ValueError(f"--poly_m must be >= 1, got {self.poly_m!r}")
        if int(self.max_regions) < 2:
            raise ValueError(f"--max_regions must be >= 2 (whole image + a box), got {self.max_regions!r}")
        try:
            self.overrides = json.loads(self.config_overrides) if self.config_overrides else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"--config_overrides {self.config_overrides!r} is not valid JSON: {err}") from err
        if not isinstance(self.overrides, dict):
            raise ValueError(f"--config_overrides must be a JSON object, got {self.config_overrides!r}")

    def config_kwargs(self, feature_dim: int) -> dict:
        kwargs = {"scoring": self.scoring, "poly_m": self.poly_m, "max_regions": self.max_regions, "v_feature_dim": feature_dim}
        for name in ("v_hidden_size", "v_intermediate_size", "v_num_attention_heads", "v_num_hidden_layers",
                     "bi_hidden_size", "bi_num_attention_heads"):
            if getattr(self, name) is not None:
                kwargs[name] = int(getattr(self, name))
        kwargs.update(self.overrides)
        return kwargs


@dataclass
class ZemelTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with ZEMEL defaults. The paper gives no schedule; these were chosen on WikiMEL dev (text
    only, MiniLM, whole 18,880-entity KB: 2 epochs of 18,088 mentions, batch 32, lr 3e-5, 3 mined hard negatives +
    in-batch -> H@1 0.908, H@10 0.994 through ``mel index`` + ``mel link``; see README "Real-data quality")."""

    output_dir: str | None = field(default=None, metadata={"help": "where the model, processor and results go"})
    num_train_epochs: float = field(default=2.0, metadata={"help": "training epochs (hard negatives re-mined before each)"})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "mentions per batch and device"})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "contexts / entities per encoding batch"})
    learning_rate: float = field(default=3e-5, metadata={"help": "AdamW peak learning rate (linear decay)"})
    warmup_steps: float = field(default=0.1, metadata={"help": "linear warm-up: steps, or a share of the steps when < 1"})
    logging_steps: float = field(default=10, metadata={"help": "log the loss every N steps"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep raw rows for the ZEMEL collator"})
    in_batch_negatives: bool = field(
        default=True, metadata={"help": "also score each mention against the other mentions' candidates of the batch"}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "train into an --output_dir that holds another run's model or checkpoint-* folders (the old "
                  "checkpoints are removed first); without it such a folder is refused unless resuming"},
    )

    def __post_init__(self) -> None:
        from modeling_mel.pfmel_training import check_output_dir_args

        if not self.output_dir:
            raise ValueError("--output_dir is required")
        check_output_dir_args(self.output_dir, self.overwrite_output_dir, self.resume_from_checkpoint)
        super().__post_init__()
        if self.remove_unused_columns:
            raise ValueError("--remove_unused_columns must stay False: the ZEMEL collator reads the raw rows")


# ----------------------------------------------------------------------------------------------------------------------
# Training pieces
# ----------------------------------------------------------------------------------------------------------------------
def build_model(model_args: ZemelModelArguments, processor, feature_dim: int):
    """``ZemelPolyEncoder.from_text_backbone`` with the requested head and visual sizes, resized for the processor."""
    from modeling_mel.modeling_zemel import ZemelPolyEncoder

    model = ZemelPolyEncoder.from_text_backbone(model_args.backbone, **model_args.config_kwargs(feature_dim))
    model.resize_for_processor(processor)
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    # 1. Parse arguments (a ValueError names a bad value before anything is loaded).
    parser = HfArgumentParser((ZemelDataArguments, ZemelModelArguments, ZemelTrainingArguments))
    data_args, model_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(
        level=logging.INFO if train_args.should_log else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    set_seed(train_args.seed)
    # Refuse an --output_dir holding another run (model / checkpoint-*) unless --overwrite_output_dir (removes its
    # checkpoints) or --resume_from_checkpoint; resolve "last" and check the checkpoint before loading anything.
    from modeling_mel.pfmel_training import prepare_output_dir, resolve_resume_checkpoint

    with train_args.main_process_first(local=False, desc="output_dir check"):
        prepare_output_dir(train_args.output_dir, train_args.overwrite_output_dir, train_args.resume_from_checkpoint)
        train_args.resume_from_checkpoint = resolve_resume_checkpoint(train_args.output_dir, train_args.resume_from_checkpoint)

    # 2. Load the corpus (ZEMELD's zero-shot check raises here, before any training) and check the splits.
    data = load_zemel_data(data_args.dataset, data_args.data_dir, data_args.dataset_cache_dir)
    train_rows = list(data.split(data_args.train_split))
    eval_rows = {s: data.split(s) for s in data_args.eval_split_list}  # ValueError for a missing split
    if not train_rows:
        raise ValueError(f"training split {data_args.train_split!r} is empty")
    if data_args.max_train_samples is not None:
        train_rows = train_rows[: data_args.max_train_samples]
    for split, rows in eval_rows.items():
        leaked = check_zero_shot(train_rows, rows, split)
        if leaked and data.zero_shot:
            raise ValueError(f"zero-shot split violated: {len(leaked)} {split} entities occur in training: {leaked[:20]}")
        if leaked:
            logger.warning("%d of the %s entities also occur in training: not a zero-shot evaluation", len(leaked), split)
    train_kb = data.kb_for(data_args.train_split, "split")

    # 3. Image features: whole image + box crops per context image, KB images per entity (computed once).
    regions = None
    if data_args.image_features == "resnet50" and data.has_images:
        extractor = build_image_extractor(data_args.image_model, data_args.image_size, data_args.image_cache_dir)
        regions = RegionFeatures(extractor, data_args.max_entity_images)
        regions.add_rows(train_rows, progress=True)
        regions.add_entities(train_kb, progress=True)
        feature_dim = regions.feature_dim
    else:
        if data_args.image_features == "resnet50":
            logger.warning("the %s corpus has no images: training text only", data_args.dataset)
        feature_dim = 2048

    # 4. Processor and model (text streams from the backbone; new [M] [/M] [ENT] embeddings).
    from modeling_mel.processing_zemel import ZemelProcessor

    processor = ZemelProcessor.from_backbone(model_args.backbone, max_regions=model_args.max_regions,
                                             feature_dim=feature_dim, context_template=model_args.context_template)
    model = build_model(model_args, processor, feature_dim)
    model.config.image_features = data_args.image_features if regions is not None else "none"
    model.config.image_model = data_args.image_model
    model.config.image_size = data_args.image_size
    model.config.max_entity_images = data_args.max_entity_images
    model.config.context_max_length = data_args.context_max_length
    model.config.candidate_max_length = data_args.candidate_max_length

    # 5. Collator: each mention's list (gold + hard negatives: mined with the model before every epoch, or BM25+rules
    #    over the training KB), shuffled, plus in-batch negatives.
    k = min(data_args.num_candidates, len(train_kb))
    callbacks = []
    if data_args.negatives == "dense" and k > 1:
        candidates = None
        callbacks.append(HardNegativeCallback(
            processor, train_rows, list(train_kb), list(train_kb.values()), k - 1,
            context_max_length=data_args.context_max_length, candidate_max_length=data_args.candidate_max_length,
            batch_size=train_args.per_device_eval_batch_size,
        ))
    else:
        candidates = Bm25RuleCandidates(list(train_kb), [str(e.get("name") or "") for e in train_kb.values()])
    if candidates is None and k == 1:
        for row in train_rows:
            row["candidates"] = [str(row["entity_id"])]
    collator = ZemelTrainingCollator(
        ZemelCollator(
            processor, train_kb, mode="list", candidates=candidates, num_candidates=k,
            context_regions=regions.context if regions is not None else None,
            entity_image_features=regions.entity if regions is not None else None,
            context_max_length=data_args.context_max_length, candidate_max_length=data_args.candidate_max_length,
            train=True, seed=train_args.seed,
        )
    )

    # 6. Train.
    trainer = ZemelTrainer(
        model=model,
        args=train_args,
        train_dataset=ListDataset(train_rows),
        data_collator=collator,
        processing_class=processor,
        in_batch_negatives=train_args.in_batch_negatives,
        callbacks=callbacks,
    )
    train_output = trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)

    # 7. Save model + processor (auto_map and code files come from the package registration).
    trainer.save_model(train_args.output_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    train_results = {"train_loss": train_output.training_loss, "global_step": train_output.global_step, "losses": losses,
                     "train_mentions": len(train_rows), "train_kb": len(train_kb), "num_candidates": k}

    # 8. Evaluate dev/test with the candidate cache (main process only).
    results: dict = {}
    if trainer.is_world_process_zero():
        processor.save_pretrained(train_args.output_dir)
        with open(os.path.join(train_args.output_dir, "train_results.json"), "w") as f:
            json.dump(train_results, f, indent=2)
        if data_args.eval_split_list:
            results = evaluate_splits(
                trainer.model, processor, data, data_args.eval_split_list, regions=regions, eval_kb=data_args.eval_kb,
                max_samples=data_args.max_eval_samples, ns=data_args.ns,
                batch_size=train_args.per_device_eval_batch_size, context_max_length=data_args.context_max_length,
                candidate_max_length=data_args.candidate_max_length, bf16=train_args.bf16, progress=True,
            )
            with open(os.path.join(train_args.output_dir, "eval_results.json"), "w") as f:
                json.dump(results, f, indent=2, sort_keys=True)
    trainer.accelerator.wait_for_everyone()

    # 9. Report.
    if trainer.is_world_process_zero():
        logger.info("train: %s", {k_: v for k_, v in train_results.items() if k_ != "losses"})
        for split, metrics in results.items():
            logger.info("%s: %s", split, json.dumps(metrics, sort_keys=True))
    return {"train": train_results, "eval": results, "splits": [canonical_split(s) for s in data_args.eval_split_list]}


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as err:  # argument, data and checkpoint errors: one line, no traceback
        print(f"train_zemel: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
