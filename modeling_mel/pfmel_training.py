"""PFMEL training: a ``Trainer`` that logs the per-task NSP losses, linking prediction and run functions.

Loss of a batch (paper, section 3.3: ``L_pre = L_mix + L_text + L_multi``): the per-example NSP cross-entropy
is averaged within each task present in the batch, and the task means are summed. A batch that lacks a task
adds nothing for it (its term is 0 in that batch), so every present task has weight 1 whatever the batch's
task mix; with one task (fine-tuning: ``link``) the loss is the plain mean. The logs carry ``loss_mix``,
``loss_text``, ``loss_multi`` (and ``loss_link``): the mean per-example loss of each task since the previous
log, summed over processes.

The ``run_*`` functions hold the logic of :mod:`modeling_mel.scripts.pretrain_nsp`, :mod:`modeling_mel.scripts.finetune_linking` and
:mod:`modeling_mel.scripts.evaluate_linking` (the scripts are thin numbered-step wrappers over them), so the demo, the
ablations and ``mel`` subcommands share one implementation.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from .linking_cross import CrossLinker
from .modeling_multimodal_nsp import MultimodalNSPOutput
from .pfmel_data import (
    IMAGE_FEATURE_MODES,
    NEGATIVE_DRAWS,
    TASK_LOSS_NAMES,
    TASKS,
    LinkingData,
    ListDataset,
    PFMELCollator,
    PFMELCorpus,
    check_tasks,
    encode_pairs,
    make_pretraining_pairs,
)
from .entity_index import load_retriever  # noqa: F401 - re-exported (it lived here before)

logger = logging.getLogger(__name__)

DATASETS = ("twitter_mel", "mel_jsonl", "wikimel", "richpedia_mel", "mimic_mel")
SPLITS = ("train", "train07", "train05", "dev", "test")


# ---------------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------------
class PFMELTrainer(Trainer):
    """``Trainer`` for NSP pairs with ``task_ids``: ``L = sum over present tasks of the task's mean loss``.

    Logs ``loss_<task>`` beside ``loss`` (see the module docstring). Use :class:`~modeling_mel.pfmel_data.PFMELCollator`
    as the data collator (dynamic padding) and ``train_sampling_strategy="group_by_length"``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        n = max(TASK_LOSS_NAMES) + 1
        self._task_sums = torch.zeros(n, dtype=torch.float64)
        self._task_counts = torch.zeros(n, dtype=torch.float64)
        self.loss_is_scaled_for_ga = False  # our loss is a per-batch quantity; Trainer divides by GA steps

    def create_optimizer(self, model=None):
        """AdamW as usual; with ``args.head_learning_rate`` the new layers (``image_projection``, ``cls``) get that
        learning rate instead of ``learning_rate`` (they start from random weights, BERT does not)."""
        head_lr = getattr(self.args, "head_learning_rate", None)
        if head_lr is None or self.optimizer is not None:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        model = model if model is not None else self.model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                head = name.startswith(("image_projection.", "cls.")) or ".image_projection." in name or ".cls." in name
                groups.setdefault((head, name in decay), []).append(p)
        params = [
            {"params": ps, "lr": head_lr if head else self.args.learning_rate, "weight_decay": self.args.weight_decay if dec else 0.0}
            for (head, dec), ps in groups.items()
        ]
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(params, lr=self.args.learning_rate, **kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        inputs = dict(inputs)
        task_ids = inputs.pop("task_ids", None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        per_example = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, reduction="none")  # (B,)
        if task_ids is None:
            task_ids = torch.full_like(labels, 3)
        loss = per_example.new_zeros(())
        for t in torch.unique(task_ids).tolist():
            sel = task_ids == t
            loss = loss + per_example[sel].mean()
            if model.training:
                self._task_sums[t] += float(per_example[sel].detach().sum())
                self._task_counts[t] += int(sel.sum())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: every process gets here at the same step
            stats = torch.cat([self._task_sums, self._task_counts]).to(self.args.device)
            if self.accelerator.num_processes > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            stats = stats.cpu()
            n = len(self._task_sums)
            for t in range(n):
                if stats[n + t] > 0:
                    logs[f"loss_{TASK_LOSS_NAMES[t]}"] = round(float(stats[t] / stats[n + t]), 6)
            self._task_sums.zero_()
            self._task_counts.zero_()
        super().log(logs, start_time)


# ---------------------------------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class LinkingPrediction:
    """Ranked candidates of one mention: ``ranked`` = ``[(entity_id, score), ...]``, best first (log p(is next))."""

    mention_id: str
    mention: str
    gold: str
    ranked: list[tuple[str, float]]

    @property
    def predicted(self) -> str | None:
        return self.ranked[0][0] if self.ranked else None


def predict_linking(
    model,
    processor,
    examples: LinkingData,
    batch_size: int = 64,
    bf16: bool = False,
    progress: bool = False,
    retriever_weight: float | None = None,
) -> list[LinkingPrediction]:
    """Score every (mention, candidate) pair of ``examples`` with the cross linker of the product
    (:class:`~modeling_mel.linking_cross.CrossLinker`: length-sorted batches of at most ``batch_size`` pairs and
    ``batch_size * 64`` tokens, ties by KB order) and rank the candidates.

    Uses ``torch.inference_mode`` and, with ``bf16=True``, ``torch.autocast(bfloat16)`` (CPU or GPU). The score of
    a pair is ``link_scores(logits)`` = log p(B follows A), plus ``retriever_weight`` (default: the model's
    ``config.retriever_score_weight``, 0 when absent) times the retriever score when the mentions carry
    ``retriever_scores`` (retrieve-then-rerank, as the pipeline does). Mentions without candidates get ``ranked=[]``.
    """
    linker = CrossLinker(model, processor, bf16=bf16, pair_batch_size=batch_size)
    features, _ = examples.candidate_features(processor)
    collate = PFMELCollator(processor, examples.table)
    order = examples.kb_order or {e: i for i, e in enumerate(examples.entity_text)}
    positions = [[order[c] for c in m.candidates] for m in examples.mentions]
    where = {(i, p): j for j, (i, p) in enumerate((i, p) for i, row in enumerate(positions) for p in row)}
    first = [{order[e]: s for e, s in m.retriever_scores.items() if e in order} if m.retriever_scores else {}
             for m in examples.mentions]
    ids = {p: e for e, p in order.items()}
    calls = iter([True])  # the first call (the top_k wave or every pair) shows the progress bar

    def score_pairs(pairs: list[tuple[int, int]]) -> torch.Tensor:
        return linker.score_features([features[where[pair]] for pair in pairs], collate,
                                     progress=progress and next(calls, False))

    ranked = linker.link(positions, score_pairs, first, weight=retriever_weight)
    return [LinkingPrediction(m.mention_id, m.mention, m.gold, [(ids[p], s) for p, s in row])
            for m, row in zip(examples.mentions, ranked)]


def linking_metrics(predictions: Sequence[LinkingPrediction], kb_size: int | None = None) -> dict[str, float]:
    """Accuracy, candidate recall, MRR and n of predictions (offline ``evaluate`` modules of :mod:`.metrics`); with
    ``kb_size`` (the KB the candidates come from) also the field's ``H@1/3/5/10/20``, ``MR``, ``MRR`` and
    ``n_unranked`` (:func:`modeling_mel.metrics.ranking_metrics`; a gold outside the mention's ranked candidates has no
    rank: 0 in H@k and MRR, ``kb_size + 1`` in MR)."""
    from .metrics import gold_ranks, load_metric, ranking_metrics

    ranked = [[e for e, _ in p.ranked] for p in predictions]
    golds = [p.gold for p in predictions]
    out = load_metric("linking").compute(predictions=ranked, references=golds)
    if kb_size:
        out.update({k: v for k, v in ranking_metrics(gold_ranks(ranked, golds), kb_size).items() if k != "n"})
    return out


def name_match_baseline(examples: LinkingData, names: dict[str, str]) -> list[LinkingPrediction]:
    """Baseline: rank candidates by the length of their user name (shortest first, ties in KB order)."""
    out = []
    for m in examples.mentions:
        ranked = sorted(m.candidates, key=lambda e: len(names.get(e, e)))
        out.append(LinkingPrediction(m.mention_id, m.mention, m.gold, [(e, -float(len(names.get(e, e)))) for e in ranked]))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Arguments (HfArgumentParser dataclasses shared by the modeling_mel.scripts runs)
# ---------------------------------------------------------------------------------------------------------------------
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



from .run_outputs import (  # noqa: F401 - re-exported: modeling_mel.scripts import them from here
    RESUME_LAST,
    SafeOutputTrainingArguments,
    check_checkpoint,
    check_output_dir_args,
    prepare_output_dir,
    resolve_resume_checkpoint,
)


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


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks of the scripts
# ---------------------------------------------------------------------------------------------------------------------
def default_image_cache_dir() -> str:
    """``$HF_HOME/modeling_mel/image_features`` (HF_HOME defaults to ``~/.cache/huggingface``)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "modeling_mel", "image_features")


def load_corpus(data_args: PFMELDataArguments, extractor=None, model_dir: str | None = None) -> PFMELCorpus:
    """Load the corpus of ``data_args`` with its image feature source (``model_dir``: the saved model whose recorded
    image encoder is the default)."""
    if not data_args.data_dir:
        raise ValueError("--data_dir is required: the folder with the corpus files")
    if data_args.image_features == "resnet50" and extractor is None and getattr(data_args, "features", None):
        # extract once: the cache made by mel features, checked against the encoder recorded in model_dir
        from .feature_cache import open_features
        from .image_encoders import read_recorded_image_encoder

        extractor = open_features(data_args.features, image_model=data_args.image_model,
                                  recorded=read_recorded_image_encoder(model_dir), what=f"the model {model_dir}")
    if data_args.image_features == "resnet50" and extractor is None:
        # the image encoder recorded in model_dir (an --init_from or evaluated model) unless --image_model (checked
        # against it), else --image_model / microsoft/resnet-50 (image_features.extractor_for)
        from .image_encoders import read_recorded_image_encoder
        from .image_features import extractor_for

        extractor = extractor_for(
            read_recorded_image_encoder(model_dir), data_args.image_model, what=f"the model {model_dir}",
            image_size=data_args.image_size, feature=data_args.image_feature,
            cache_dir=data_args.image_cache_dir or default_image_cache_dir(),
        )
    return PFMELCorpus.load(
        data_args.dataset,
        data_args.data_dir,
        cache_dir=data_args.dataset_cache_dir,
        image_features=data_args.image_features,
        extractor=extractor,
        features_path=data_args.features_path,
        max_candidates=data_args.max_candidates,
        feature_norm=data_args.feature_norm,
    )


def load_model_and_processor(model_args: PFMELModelArguments, feature_dim: int = 2048, seed: int = 0):
    """The model and processor: from ``init_from`` (a saved PFMEL dir) or a fresh NSP head on ``backbone``.

    Raises ``ValueError`` when ``backbone`` and ``init_from`` disagree on the hidden size, or when the image
    features are not ``config.image_feature_dim``-d (the loaded image projection could not take them).
    """
    from transformers import set_seed

    from .backbones import load_backbone_config, resolve_backbone
    from .modeling_multimodal_nsp import BertForMultimodalNSP
    from .processing_multimodal_nsp import MultimodalNSPProcessor

    set_seed(seed)
    if model_args.init_from:
        model = BertForMultimodalNSP.from_pretrained(model_args.init_from)
        if model_args.backbone:
            hidden = load_backbone_config(model_args.backbone).hidden_size
            if hidden != model.config.hidden_size:
                raise ValueError(
                    f"--backbone {model_args.backbone!r} has hidden size {hidden} but --init_from "
                    f"{model_args.init_from!r} (its image projection and encoder) has {model.config.hidden_size}; "
                    "drop --backbone or pre-train on the same backbone"
                )
        try:
            processor = MultimodalNSPProcessor.from_pretrained(model_args.init_from)
        except (OSError, ValueError, TypeError):
            processor = MultimodalNSPProcessor.from_backbone(model_args.backbone, image_feature_dim=model.config.image_feature_dim)
        processor.max_length = model_args.max_length
    else:
        model, info = BertForMultimodalNSP.from_pretrained(
            resolve_backbone(model_args.backbone), image_feature_dim=feature_dim, output_loading_info=True
        )
        model.config.nsp_head_pretrained = not any(k.startswith("cls.seq_relationship") for k in info["missing_keys"])
        processor = MultimodalNSPProcessor.from_backbone(
            model_args.backbone, max_length=model_args.max_length, image_feature_dim=feature_dim
        )
    if model.config.image_feature_dim != feature_dim:
        raise ValueError(
            f"the image features are {feature_dim}-d but the model's image projection takes "
            f"{model.config.image_feature_dim}-d features; use the image model the model was trained with"
        )
    processor.configure_model(model)
    warn_if_nsp_head_random(model, model_args.init_from or model_args.backbone)
    return model, processor


def saved_max_length(model_dir: str) -> int | None:
    """The pair length of a saved model's processor (``processor_config.json``'s ``max_length``), if recorded."""
    try:
        with open(os.path.join(model_dir, "processor_config.json"), encoding="utf-8") as f:
            value = json.load(f).get("max_length")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def warn_if_nsp_head_random(model, source: str | None) -> None:
    """Log a warning when the model's NSP head did not come from a pre-trained NSP head (``nsp_head_pretrained``
    False): PFMEL and NSP-BERT then learn next-sentence prediction from scratch instead of mining it."""
    if getattr(model.config, "nsp_head_pretrained", None) is False:
        logger.warning(
            "%s has no pre-trained next-sentence-prediction head (cls.seq_relationship): the NSP head starts from "
            "random weights, so this PFMEL / NSP-BERT does not mine BERT's pre-trained NSP head as the paper does; "
            "use --backbone bert-base-uncased (the paper's backbone) for that", source or "the backbone")


def _image_setting(processor, model, name: str):
    """A trained image setting: the processor's (``feature_norm`` ...), else the model config's ``pfmel_<name>``
    (where models saved before the settings moved to the processor kept it)."""
    value = getattr(processor, name, None)
    return value if value is not None else getattr(model.config, f"pfmel_{name}", None)


def _mark_image_mode(model, processor, corpus: PFMELCorpus) -> None:
    """Record in the processor (saved with the model) the image settings of training: whether the model takes image
    tokens, the feature normalisation and its centre, the image encoder's identity (``image_encoder``) and input side;
    refuse a mismatch with earlier runs."""
    previous = _image_setting(processor, model, "image_features")
    if previous is not None and (previous == "none") != (not corpus.use_images):
        raise ValueError(
            f"the model was trained with --image_features {previous!r} but this run uses {corpus.image_mode!r}; "
            "pass the same --image_features (text-only models need 'none')"
        )
    processor.image_features = corpus.image_mode
    norm = _image_setting(processor, model, "feature_norm")
    if corpus.use_images and norm is not None and norm != corpus.feature_norm:
        raise ValueError(
            f"the model was trained with --feature_norm {norm!r} but this run uses {corpus.feature_norm!r}; pass --feature_norm {norm}"
        )
    if corpus.use_images and corpus.feature_norm == "center_l2":
        mean = _image_setting(processor, model, "feature_mean")
        if mean is None:  # a new model: the corpus's centre, or the mean of the (training) images loaded so far
            centre = corpus.table.center if corpus.table.center is not None else corpus.table.nonzero_mean()
            mean = [round(float(v), 6) for v in centre]
        if len(mean) != corpus.table.dim:
            raise ValueError(f"the recorded feature_mean has {len(mean)} values; the image features are {corpus.table.dim}-d")
        corpus.table.center = np.asarray(mean, np.float32)
        processor.feature_mean = [float(v) for v in mean]
    processor.feature_norm = corpus.feature_norm
    # the extractor of the features (none for precomputed features: the property would build the default encoder)
    extractor = getattr(corpus, "extractor", None) if corpus.use_images and corpus.image_mode == "resnet50" else None
    if extractor is not None and hasattr(extractor, "image_size"):
        # what the inference pipeline needs to rebuild the same image features
        processor.image_size = int(extractor.image_size)
    identity = getattr(extractor, "identity", None) if extractor is not None else None
    if isinstance(identity, dict):
        # the image encoder is part of the model: an --init_from model trained with another one is refused, and the
        # identity goes into processor_config.json (image_encoder), which mel index / link / serve and the pipeline
        # read to build the same encoder
        from .image_encoders import check_image_encoder, recorded_image_encoder

        check_image_encoder(recorded_image_encoder(processor), extractor, what="the model (--init_from)",
                            fix="drop --image_model to use the recorded encoder, or start from a model trained with "
                                "this one")
        processor.image_encoder = identity


def train_pairs(
    model, processor, features: list[dict], table, args: TrainingArguments, resume_from_checkpoint=None, callbacks=None,
    listwise: bool = False,
) -> PFMELTrainer:
    """Train ``model`` on encoded NSP features with :class:`PFMELTrainer` (``listwise``: on list items of
    :func:`listwise_groups` with :class:`ListwiseNSPTrainer`); returns the trainer."""
    if not features:
        raise ValueError("no training pairs; check the split and --max_train_samples")
    # "last" -> the newest checkpoint-* of output_dir; a missing folder or a corrupt checkpoint is a one-line ValueError
    resume_from_checkpoint = resolve_resume_checkpoint(args.output_dir, resume_from_checkpoint)
    trainer = (ListwiseNSPTrainer if listwise else PFMELTrainer)(
        model=model,
        args=args,
        train_dataset=ListDataset(features),
        data_collator=ListwiseCollator(processor, table) if listwise else PFMELCollator(processor, table),
        processing_class=processor,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
    return trainer


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)


def evaluate_splits(
    model, processor, corpus: PFMELCorpus, splits: Sequence[str], batch_size: int = 64, bf16: bool = False,
    max_samples: int | None = None, retriever: Any = None, retriever_k: int = 10,
) -> tuple[dict[str, dict], dict[str, list[LinkingPrediction]]]:
    """Accuracy, candidate recall and MRR of each split, the field's H@1/3/5/10/20, MR and MRR over the ranked
    candidates against the KB's size (:func:`linking_metrics`), and the predictions.

    Every gold mention of the split is in the denominator ``n``: a mention without candidates or whose gold is not
    in the KB counts as wrong (``n_unusable``, with ``n_no_candidates`` and ``n_gold_not_in_kb``; ``n_nil``: the
    mentions the corpus labels NIL). With ``retriever`` the two-stage linker is evaluated (candidates and fused scores
    as in the pipeline).
    """
    from .nil import is_nil_gold

    results, predictions = {}, {}
    for split in splits:
        data = corpus.linking_data(split, max_samples, retriever=retriever, retriever_k=retriever_k)
        preds = predict_linking(model, processor, data, batch_size=batch_size, bf16=bf16, progress=len(data.mentions) > 200)
        results[split] = {**linking_metrics(preds, kb_size=len(corpus.entities)),
                          "candidate_recall_before_cap": data.candidate_recall(before_cap=True),
                          **data.unusable_counts(), "n_nil": sum(is_nil_gold(p.gold) for p in preds)}
        predictions[split] = preds
        logger.info("%s: %s", split, results[split])
    return results, predictions


# ---------------------------------------------------------------------------------------------------------------------
# Retrieve-then-rerank: listwise training of the NSP reranker and the retriever-score weight
# ---------------------------------------------------------------------------------------------------------------------
def listwise_groups(data: LinkingData, list_size: int, processor, use_images: bool = True) -> list[dict]:
    """One training item per mention whose gold is in the KB: the gold pair first, then the ``list_size - 1``
    best candidates by retriever score (or in candidate order without a retriever). Items:
    ``{"features": [encoded pair, ...], "group": [mention index]}``; mentions with no negative are skipped."""
    pairs, owners = [], []
    for i, m in enumerate(data.mentions):
        if not m.gold_in_kb:
            continue
        negatives = [c for c in m.candidates if c != m.gold][: int(list_size) - 1]
        if not negatives:
            continue
        for j, e in enumerate([m.gold, *negatives]):
            pairs.append(data.pair(m, e, 0 if j == 0 else 1))
            owners.append(i)
    features = encode_pairs(processor, pairs, use_images=use_images)
    items: dict[int, list[dict]] = {}
    for owner, feature in zip(owners, features):
        items.setdefault(owner, []).append(feature)
    return [{"features": feats} for feats in items.values()]


class ListwiseCollator:
    """Flattens list items into one padded pair batch (:class:`PFMELCollator`) plus ``list_index`` ``(P,)``: the
    item each pair belongs to (its gold pair comes first)."""

    def __init__(self, processor, table=None) -> None:
        self.pairs = PFMELCollator(processor, table)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        flat, owner = [], []
        for i, item in enumerate(items):
            flat += item["features"]
            owner += [i] * len(item["features"])
        batch = self.pairs(flat)
        batch.pop("labels", None)
        batch.pop("task_ids", None)
        batch["list_index"] = torch.tensor(owner, dtype=torch.long)
        return batch


def listwise_loss(scores: torch.Tensor, list_index: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over each list's pair scores ``(P,)``, the gold being each list's first pair."""
    n = int(list_index.max()) + 1
    counts = torch.bincount(list_index, minlength=n)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    column = torch.arange(len(list_index), device=scores.device) - starts[list_index]
    table = scores.new_full((n, width), torch.finfo(scores.dtype).min)
    table[list_index, column] = scores
    return torch.nn.functional.cross_entropy(table, torch.zeros(n, dtype=torch.long, device=scores.device))


class ListwiseNSPTrainer(PFMELTrainer):
    """:class:`PFMELTrainer` whose loss is :func:`listwise_loss` over ``model.link_scores`` (log p(is next)) of
    each mention's candidate list, so training ranks candidates as linking does."""

    def _get_train_sampler(self, train_dataset=None):
        """``group_by_length`` over list items: a list's length is its longest pair (the width it pads to), so a
        batch of lists pads to about its own length instead of the longest of a random draw (2x fewer tokens on
        WikiMEL). Other strategies as ``Trainer`` has them."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        lengths = [max(len(f["input_ids"]) for f in dataset[i]["features"]) for i in range(len(dataset))]
        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=lengths)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        inputs = dict(inputs)
        list_index = inputs.pop("list_index")
        chunk = int(getattr(self.args, "pairs_per_forward", 0) or 0)
        # one process only: a DistributedDataParallel wrapper (``.module``) expects one forward per backward
        if chunk and len(list_index) > chunk and "attention_mask" in inputs and not hasattr(model, "module"):
            outputs = MultimodalNSPOutput(logits=length_sorted_logits(model, inputs, chunk))
        else:
            outputs = model(**inputs)
        unwrapped = model.module if hasattr(model, "module") else model
        loss = listwise_loss(unwrapped.link_scores(outputs.logits), list_index)
        return (loss, outputs) if return_outputs else loss


def length_sorted_logits(model, inputs: dict[str, torch.Tensor], chunk: int) -> torch.Tensor:
    """``model(**inputs).logits`` computed in chunks of ``chunk`` pairs sorted by length, each chunk cut to its own
    longest pair (a multiple of 8); rows in input order. Equal to one pass up to float rounding (padding is masked,
    on the right), with fewer padded tokens when the pairs of a batch differ in length."""
    lengths = inputs["attention_mask"].sum(1)
    order = torch.argsort(lengths)
    width = inputs["input_ids"].shape[1]
    parts = []
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        cut = min(width, -(-int(lengths[idx].max()) // 8) * 8)
        sub = {k: (v[idx, :cut] if k in ("input_ids", "attention_mask", "token_type_ids") else v[idx])
               for k, v in inputs.items()}
        parts.append(model(**sub).logits)
    return torch.cat(parts)[torch.argsort(order)]


def calibrate_retriever_weight(
    model, processor, data: LinkingData, grid: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0), batch_size: int = 64,
    bf16: bool = False,
) -> tuple[float, dict[str, float]]:
    """The weight ``w`` of ``NSP log-prob + w * retriever score`` with the best accuracy on ``data`` (held-out
    mentions with ``retriever_scores``); ties go to the smaller weight. Returns ``(w, {str(w): accuracy})``."""
    from .ranking import rank_keys

    preds = predict_linking(model, processor, data, batch_size=batch_size, bf16=bf16, retriever_weight=0.0)
    order = data.kb_order or {e: i for i, e in enumerate(data.entity_text)}
    table: dict[str, float] = {}
    best, best_acc = 0.0, -1.0
    for w in map(float, grid):
        hits = 0
        for p, m in zip(preds, data.mentions):
            if not p.ranked:
                continue
            first = m.retriever_scores or {}
            fused = [s + w * first.get(e, 0.0) for e, s in p.ranked]
            top = rank_keys([e for e, _ in p.ranked], fused, order)[0][0]  # the linkers' tie rule, as the pipeline
            hits += top == m.gold
        acc = hits / max(1, len(data.mentions))
        table[str(w)] = round(acc, 4)
        if acc > best_acc:
            best, best_acc = float(w), acc
    return best, table


# ---------------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------------
def run_pretraining(
    data_args: PFMELDataArguments,
    model_args: PFMELModelArguments,
    args: PFMELPretrainingArguments,
    corpus: PFMELCorpus | None = None,
    callbacks=None,
) -> dict:
    """PFMEL pre-training: NSP pairs of the chosen tasks from ``args.pretrain_split``; saves model + processor."""
    tasks = check_tasks(args.tasks)
    corpus = corpus or load_corpus(data_args, model_dir=model_args.init_from)
    if not corpus.use_images and set(tasks) - {"text"}:
        raise ValueError(f"pre-training tasks {list(tasks)} need images; with --image_features none use --tasks text")
    sentences = corpus.sentences(args.pretrain_split, data_args.max_train_samples)
    model, processor = load_model_and_processor(model_args, corpus.table.dim, seed=args.seed)
    _mark_image_mode(model, processor, corpus)
    pairs = make_pretraining_pairs(
        sentences, tasks, swap_roles=args.swap_roles, seed=args.seed if args.pair_seed is None else args.pair_seed,
        negative_draw=args.negative_draw,
    )
    features = encode_pairs(processor, pairs, use_images=corpus.use_images)
    counts = {t: sum(p.task == t for p in pairs) for t in tasks}
    logger.info("pre-training on %d pairs from %d sentences: %s", len(pairs), len(sentences), counts)
    trainer = train_pairs(model, processor, features, corpus.table, args, args.resume_from_checkpoint, callbacks)
    trainer.save_model(args.output_dir)
    summary = {
        "pairs": len(pairs),
        "negative_draw": args.negative_draw,
        "pairs_per_task": counts,
        "sentences": len(sentences),
        "global_step": trainer.state.global_step,
        "train_loss": next((h["train_loss"] for h in trainer.state.log_history if "train_loss" in h), None),
    }
    if trainer.is_world_process_zero():
        _write_json(os.path.join(args.output_dir, "pretrain_results.json"), summary)
    return summary


def run_finetuning(
    data_args: PFMELDataArguments,
    model_args: PFMELModelArguments,
    args: PFMELFinetuningArguments,
    corpus: PFMELCorpus | None = None,
    callbacks=None,
) -> dict:
    """NSP fine-tuning for linking on ``args.train_split``, then evaluation of ``args.eval_splits``.

    Saves model + processor to ``args.output_dir`` and writes ``eval_results.json``
    (``{split: {accuracy, candidate_recall, mrr, n, n_unusable, n_no_candidates, n_gold_not_in_kb}}``).
    """
    corpus = corpus or load_corpus(data_args, model_dir=model_args.init_from)
    for s in args.eval_splits:  # fail before training on a missing eval split
        corpus.split(s)
    retriever = load_retriever(args.retriever, args.retriever_model) if args.retriever else None
    n_cal = int(args.calibration_mentions) if retriever is not None else 0
    calibration = None
    if n_cal:
        # The calibration mentions are the LAST n_cal of the split whatever --max_train_samples is, so that a
        # retriever trained on the first (total - n_cal) mentions never saw them either (its scores on its own
        # training mentions are over-confident and would choose too large a weight).
        total = corpus.split_size(args.train_split)
        if total <= n_cal:
            raise ValueError(f"--calibration_mentions {n_cal} leaves no training mention of {total}")
        n_train = total - n_cal if data_args.max_train_samples is None else min(int(data_args.max_train_samples), total - n_cal)
        calibration = corpus.linking_data(args.train_split, retriever=retriever, retriever_k=args.retriever_k,
                                          rows=range(total - n_cal, total))
        data = corpus.linking_data(args.train_split, retriever=retriever, retriever_k=args.retriever_k, rows=range(n_train))
    else:
        data = corpus.linking_data(args.train_split, data_args.max_train_samples, retriever=retriever,
                                   retriever_k=args.retriever_k)
    model, processor = load_model_and_processor(model_args, corpus.table.dim, seed=args.seed)
    _mark_image_mode(model, processor, corpus)
    listwise = args.loss == "listwise"
    if listwise:
        features = listwise_groups(data, args.list_size, processor, use_images=corpus.use_images)
        n_pairs = sum(len(f["features"]) for f in features)
    else:
        pairs = data.training_pairs(args.num_negatives, seed=args.seed)
        features = encode_pairs(processor, pairs, use_images=corpus.use_images)
        n_pairs = len(pairs)
    logger.info(
        "fine-tuning (%s loss) on %d pairs from %d mentions (candidate recall %.3f, %.3f before the cap)", args.loss,
        n_pairs, len(data.mentions), data.candidate_recall(), data.candidate_recall(before_cap=True),
    )
    trainer = train_pairs(model, processor, features, corpus.table, args, args.resume_from_checkpoint, callbacks, listwise)
    trained = trainer.model if not hasattr(trainer.model, "module") else trainer.model.module
    train_summary: dict[str, Any] = {"pairs": n_pairs, "mentions": len(data.mentions), "global_step": trainer.state.global_step,
                                     "loss": args.loss, "candidate_recall": round(data.candidate_recall(), 4),
                                     "candidate_recall_before_cap": round(data.candidate_recall(before_cap=True), 4)}
    if calibration is not None:
        weight, table = calibrate_retriever_weight(trained, processor, calibration, batch_size=args.per_device_eval_batch_size,
                                                   bf16=args.bf16_eval)
        trained.config.retriever_score_weight = weight
        trained.config.retriever_k = int(args.retriever_k)
        train_summary.update(retriever_score_weight=weight, calibration_accuracy=table, calibration_mentions=n_cal,
                             calibration_ids=[m.mention_id for m in calibration.mentions])
        logger.info("retriever score weight %s (held-out accuracy by weight: %s)", weight, table)
    trained.config.max_candidates = int(data_args.max_candidates)  # the pipeline scores as many name-rule candidates
    trained.config.training_dataset = data_args.dataset  # the model card names the corpus
    trainer.save_model(args.output_dir)
    results, _ = evaluate_splits(
        trained, processor, corpus, args.eval_splits, args.per_device_eval_batch_size, args.bf16_eval,
        data_args.max_eval_samples, retriever=retriever, retriever_k=args.retriever_k,
    )
    results["train"] = train_summary
    if trainer.is_world_process_zero():
        _write_json(os.path.join(args.output_dir, "eval_results.json"), results)
    return results


def run_evaluation(
    model_dir: str,
    data_args: PFMELDataArguments,
    splits: Sequence[str] = ("test",),
    batch_size: int = 64,
    bf16: bool = False,
    output_file: str | None = None,
    corpus: PFMELCorpus | None = None,
    predictions_file: str | None = None,
    nil_threshold: str | float | None = "calibrated",
    nil_fraction: float | None = None,
    nil_seed: int | None = None,
    retriever: str | None = None,
    retriever_model: str | None = None,
    retriever_k: int | None = None,
) -> dict:
    """Evaluate a saved model on ``splits``; writes ``output_file`` (default ``<model_dir>/eval_results.json``).

    Each split also gets the NIL metrics of :func:`modeling_mel.nil.nil_evaluation` (``nil_*`` entries) at
    ``nil_threshold`` (default: the model's calibrated threshold, off without one). With ``retriever`` (an entity
    index folder) the two-stage linker is evaluated: the index's dense top ``retriever_k`` (default: the model's
    ``config.retriever_k``) and the closest names, reranked with the fused score."""
    from .nil import nil_evaluation, nil_settings

    threshold, fraction, seed = nil_settings(model_dir, nil_threshold, nil_fraction, nil_seed)
    corpus = corpus or load_corpus(data_args, model_dir=model_dir)
    for s in splits:
        corpus.split(s)
    # the pair length the model was fine-tuned and is linked with (its saved processor's), not the paper's default
    model, processor = load_model_and_processor(
        PFMELModelArguments(init_from=model_dir, max_length=saved_max_length(model_dir) or 300), corpus.table.dim)
    _mark_image_mode(model, processor, corpus)
    index = load_retriever(retriever, retriever_model) if retriever else None
    if index is not None:
        index.bf16 = bool(bf16)  # the evaluation's precision for both stages
    k = int(retriever_k or getattr(model.config, "retriever_k", 0) or 10)
    results, predictions = evaluate_splits(model, processor, corpus, splits, batch_size, bf16, data_args.max_eval_samples,
                                           retriever=index, retriever_k=k)
    kb_ids = [str(row["entity_id"]) for row in corpus.kb]
    for split, preds in predictions.items():
        results[split].update(nil_evaluation([p.ranked for p in preds], [p.gold for p in preds], kb_ids, threshold,
                                             fraction, seed))
    _write_json(output_file or os.path.join(model_dir, "eval_results.json"), results)
    if predictions_file:
        rows = [
            {"split": s, **asdict(p)} for s, preds in predictions.items() for p in preds
        ]
        with open(predictions_file, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return results


__all__ = [
    "PFMELTrainer",
    "LinkingPrediction",
    "predict_linking",
    "linking_metrics",
    "name_match_baseline",
    "PFMELDataArguments",
    "PFMELModelArguments",
    "PFMELPretrainingArguments",
    "PFMELFinetuningArguments",
    "load_corpus",
    "load_model_and_processor",
    "train_pairs",
    "evaluate_splits",
    "run_pretraining",
    "run_finetuning",
    "run_evaluation",
    "listwise_groups",
    "ListwiseCollator",
    "listwise_loss",
    "length_sorted_logits",
    "ListwiseNSPTrainer",
    "calibrate_retriever_weight",
    "load_retriever",
]
