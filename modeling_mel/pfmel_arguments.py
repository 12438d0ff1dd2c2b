"""PFMEL's run arguments: the ``HfArgumentParser`` dataclasses of pre-training, fine-tuning and evaluation
(:mod:`modeling_mel.scripts.pretrain_nsp`, :mod:`~modeling_mel.scripts.finetune_linking`,
:mod:`~modeling_mel.scripts.evaluate_linking`, the ablations and the demo), with the paper's defaults (Table 3) and
their checks (a bad value is a ``ValueError`` naming the option, before anything is loaded)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .pfmel_data import IMAGE_FEATURE_MODES
from .pfmel_pretraining_pairs import NEGATIVE_DRAWS, TASKS, check_tasks
from .run_outputs import SafeOutputTrainingArguments

DATASETS = ("twitter_mel", "mel_jsonl", "wikimel", "richpedia_mel", "mimic_mel")
SPLITS = ("train", "train07", "train05", "dev", "test")


@dataclass
class PFMELDataArguments:
    """Where the corpus is and how images become features."""

    dataset: str = field(default="twitter_mel", metadata={"help": f"corpus builder: one of {list(DATASETS)}"})
    data_dir: str | None = field(default=None, metadata={"help": "folder with the corpus files (raw layout of --dataset)"})
    image_features: str = field(
        default="resnet50",
        metadata={
            "help": "resnet50: extract pooled ResNet features (cached by content hash); precomputed: read the "
            "--features_path map (.safetensors/.npz with 'mention:<id>' and 'entity:<entity_id>' vectors); "
            "none: text only (NSP-BERT)"
        },
    )
    features_path: str | None = field(default=None, metadata={"help": "precomputed feature map (see --image_features)"})
    features: str | None = field(default=None, metadata={
        "help": "feature cache made by mel features (with --image_features resnet50): its encoder, refused when "
                "--image_model or the --init_from / evaluated model's recorded encoder is another one"})
    image_model: str | None = field(default=None, metadata={
        "help": "image encoder: any transformers vision checkpoint (hub id or dir: ResNet, CLIP, ViT, DINOv2, SigLIP) or "
                "random:<arch> (random:resnet-50, random:clip-vit-b32, random:tiny-resnet, ...: random init, tests and "
                "timing only); default: the one recorded in --init_from / the evaluated model, else microsoft/resnet-50 "
                "(an error when it cannot be loaded). Its identity is recorded in the processor config"})
    image_size: int | None = field(default=None, metadata={
        "help": "image side fed to the encoder (default: as recorded, else the encoder's: 224 for ResNet as in the "
                "paper; 64 is fast; a ViT-like encoder takes only its own)"})
    image_feature: str | None = field(default=None, metadata={
        "help": "global image feature: pooled, projected (CLIP image_embeds) or cls (default: as recorded, else "
                "projected for CLIP, cls for ViT, pooled otherwise)"})
    image_cache_dir: str | None = field(
        default=None, metadata={"help": "on-disk image feature cache (default: <HF_HOME>/modeling_mel/image_features)"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training mentions"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N mentions per eval split"})
    feature_norm: str = field(
        default="center_l2",
        metadata={"help": "center_l2: centre (mean stored in the model config) and unit-norm the image vectors before "
                  "the projection; l2: unit norm only; none: raw features (paper)"}
    )
    max_candidates: int = field(default=32, metadata={"help": "keep at most N name-rule candidates per mention"})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "Arrow cache of the corpus builder"})

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown --dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        if self.image_features not in IMAGE_FEATURE_MODES:
            raise ValueError(f"unknown --image_features {self.image_features!r}; choose one of {list(IMAGE_FEATURE_MODES)}")
        if self.feature_norm not in ("center_l2", "l2", "none"):
            raise ValueError(f"unknown --feature_norm {self.feature_norm!r}; choose center_l2, l2 or none")
        if self.image_features == "precomputed" and not self.features_path:
            raise ValueError("--image_features precomputed needs --features_path <map.safetensors|map.npz>")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise ValueError(f"--data_dir {self.data_dir!r} is not a directory")
        for name in ("image_size", "max_candidates"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"--{name} must be >= 1, got {v!r}")


@dataclass
class PFMELModelArguments:
    """Which text backbone or pre-trained PFMEL model to start from."""

    backbone: str | None = field(
        default=None,
        metadata={"help": "text backbone: 'minilm' (embedded default), a hub id or a BERT checkpoint dir"},
    )
    init_from: str | None = field(default=None, metadata={"help": "start from a saved PFMEL model dir (e.g. pre-trained)"})
    max_length: int = field(default=300, metadata={"help": "max tokens of a pair, image tokens included (paper: 300)"})

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ValueError(f"--max_length must be >= 8, got {self.max_length!r}")
        if self.init_from is not None and not os.path.isfile(os.path.join(self.init_from, "config.json")):
            raise ValueError(f"--init_from {self.init_from!r} is not a saved model directory (no config.json)")


@dataclass
class PFMELTrainingArguments(SafeOutputTrainingArguments):
    """``TrainingArguments`` with the settings PFMEL's pre-training and fine-tuning share (Table 3: AdamW, lr 5e-6,
    linear decay) and the data options of this package (length-grouped batches, per-task columns kept)."""

    per_device_eval_batch_size: int = field(default=64, metadata={"help": "pairs per scoring batch"})
    learning_rate: float = field(default=5e-6, metadata={"help": "AdamW learning rate, linear decay (paper: 5e-6)"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "learning-rate schedule (paper: linear)"})
    optim: str = field(default="adamw_torch", metadata={"help": "optimizer (paper: AdamW)"})
    train_sampling_strategy: str = field(default="group_by_length", metadata={"help": "length-grouped batches"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep task_ids for the per-task losses"})
    save_strategy: str = field(default="epoch", metadata={"help": "checkpoint every epoch (resume with --resume_from_checkpoint)"})
    save_total_limit: int | None = field(default=2, metadata={"help": "keep the last N checkpoints"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "learning rate of the new layers (image projection, NSP head); default: --learning_rate"}
    )


@dataclass
class PFMELPretrainingArguments(PFMELTrainingArguments):
    """``TrainingArguments`` with the paper's pre-training settings (Table 3) and the task options."""

    num_train_epochs: float = field(default=5.0, metadata={"help": "epochs (paper: 5)"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "batch size (paper: 4)"})
    tasks: list[str] = field(
        default_factory=lambda: list(TASKS), metadata={"help": f"pre-training tasks, any of {list(TASKS)}"}
    )
    swap_roles: bool = field(default=True, metadata={"help": "add the role-swapped pairs (doubles the data)"})
    pretrain_split: str = field(default="train", metadata={"help": "split whose linked mentions make the sentences"})
    pair_seed: int | None = field(default=None, metadata={"help": "seed of the next-sentence draw (default: --seed)"})
    negative_draw: str = field(
        default="distinct",
        metadata={"help": "random next sentence: 'distinct' (default: another tweet whose entity is gold for no mention "
                  "of either tweet, so no input pair carries both labels) or 'paper' (any other sentence, the paper's "
                  "text; contradictory pairs possible with multi-mention tweets)", "choices": list(NEGATIVE_DRAWS)},
    )

    def __post_init__(self) -> None:
        if self.negative_draw not in NEGATIVE_DRAWS:
            raise ValueError(f"unknown --negative_draw {self.negative_draw!r}; choose one of {list(NEGATIVE_DRAWS)}")
        self.tasks = list(check_tasks(self.tasks))
        if self.pretrain_split not in SPLITS:
            raise ValueError(f"unknown --pretrain_split {self.pretrain_split!r}; choose one of {list(SPLITS)}")
        super().__post_init__()


@dataclass
class PFMELFinetuningArguments(PFMELTrainingArguments):
    """``TrainingArguments`` with the paper's fine-tuning settings (Table 3) and the linking options."""

    num_train_epochs: float = field(default=4.0, metadata={"help": "epochs (paper: 4)"})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "batch size (paper: 16)"})
    train_split: str = field(default="train", metadata={"help": "fine-tuning split: train, train07 or train05"})
    eval_splits: list[str] = field(default_factory=lambda: ["dev", "test"], metadata={"help": "splits evaluated at the end"})
    num_negatives: int = field(default=32, metadata={"help": "negatives (other candidates) per mention, at most"})
    bf16_eval: bool = field(default=False, metadata={"help": "score candidates under bf16 autocast"})
    retriever: str | None = field(
        default=None,
        metadata={"help": "entity index dir built by a ZEMEL model (`mel index`): train and evaluate the NSP model as the "
                  "reranker of retrieve-then-rerank, on the retriever's top --retriever_k merged with the name-rule "
                  "candidates (hard negatives) instead of the name-rule candidates only"},
    )
    retriever_model: str | None = field(
        default=None, metadata={"help": "the ZEMEL model of --retriever (default: the model recorded in the index)"}
    )
    retriever_k: int = field(default=10, metadata={"help": "dense candidates per mention from --retriever"})
    loss: str = field(
        default="binary",
        metadata={"help": "binary: the paper's NSP cross-entropy per pair; listwise: softmax over each mention's "
                  "gold + --list_size-1 hardest candidates (best with --retriever)"},
    )
    list_size: int = field(default=8, metadata={"help": "listwise: candidates per mention (gold included)"})
    pairs_per_forward: int = field(
        default=32,
        metadata={"help": "listwise: a batch's pairs go through the model in length-sorted chunks of this many, each "
                  "cut to its own longest pair (the pairs of one list differ in length; same loss, fewer padded tokens; "
                  "0: one forward pass per batch, as multi-process runs always do)"},
    )
    calibration_mentions: int = field(
        default=500,
        metadata={"help": "with --retriever: the last N mentions of the training split are held out of training "
                  "(whatever --max_train_samples is) and choose config.retriever_score_weight (final score = NSP "
                  "log-prob + weight * retriever score); train the retriever without them too "
                  "(train_zemel.py --max_train_samples TOTAL-N) so that its scores there are not over-confident"},
    )

    def __post_init__(self) -> None:
        for s in [self.train_split, *self.eval_splits]:
            if s not in SPLITS:
                raise ValueError(f"unknown split {s!r}; choose from {list(SPLITS)}")
        if self.num_negatives < 0:
            raise ValueError(f"--num_negatives must be >= 0, got {self.num_negatives!r}")
        if self.loss not in ("binary", "listwise"):
            raise ValueError(f"unknown --loss {self.loss!r}; choose 'binary' or 'listwise'")
        if self.pairs_per_forward < 0:
            raise ValueError(f"--pairs_per_forward must be >= 0, got {self.pairs_per_forward!r}")
        for name in ("retriever_k", "list_size"):
            if int(getattr(self, name)) < (2 if name == "list_size" else 1):
                raise ValueError(f"--{name} must be >= {2 if name == 'list_size' else 1}, got {getattr(self, name)!r}")
        if self.calibration_mentions < 0:
            raise ValueError(f"--calibration_mentions must be >= 0, got {self.calibration_mentions!r}")
        if self.retriever is not None and not os.path.isdir(self.retriever):
            raise ValueError(f"--retriever {self.retriever!r} is not an entity index directory (build one with `mel index`)")
        super().__post_init__()


__all__ = [
    "DATASETS",
    "SPLITS",
    "PFMELDataArguments",
    "PFMELModelArguments",
    "PFMELTrainingArguments",
    "PFMELPretrainingArguments",
    "PFMELFinetuningArguments",
]
