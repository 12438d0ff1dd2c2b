"""Library-side training pieces for ZEMEL: a data collator and an evaluation helper.

The collator turns mention rows (``text``: ZEMELD rows as ``load_zemel_data`` adapts them; a mention and an ``entity_id``) into
:class:`~modeling_mel.modeling_zemel.ZemelPolyEncoder` inputs, in one of two modes:

* ``"in_batch"``: one candidate per row (its gold entity); 2-D ``candidate_*`` tensors and ``labels = arange(B)``
  (the other rows' entities are the negatives; a batch holding the same entity twice has a false negative).
* ``"list"``: ``num_candidates`` candidates per row from a candidate generator (e.g.
  :class:`~modeling_mel.candidates.Bm25RuleCandidates`) or a ``candidates`` column; during training the gold entity is
  inserted when missing (replacing the last candidate) and the list is shuffled with a seeded generator; short lists
  are padded with random KB entities. At evaluation (``train=False``) nothing is inserted: ``labels`` is the gold
  position or ``-100`` when the gold is not among the candidates. 3-D ``candidate_*`` tensors ``(B, K, ...)``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from transformers import Trainer, TrainerCallback

from .configuration_zemel import SCORING_MODES
from .linking_dense import DenseLinker, row_span, row_text
from .run_outputs import SafeOutputTrainingArguments
from .zemel_data import EVAL_KB_HELP, EVAL_KB_MODES, ZEMEL_DATASETS, canonical_split
from .zemel_evaluation import IMAGE_FEATURE_MODES

logger = logging.getLogger(__name__)

Regions = Mapping[str, Any]  # {"features": (R, D), "spatial": (R, 5)}


class ZemelCollator:
    """Build ZEMEL model inputs from rows.

    Args:
        processor: a :class:`~modeling_mel.processing_zemel.ZemelProcessor`.
        kb: ``entity_id -> {"name", "description"?}`` (a dict, or rows with ``entity_id``).
        mode: ``"in_batch"`` or ``"list"``.
        candidates: ``mention -> ranked entity ids`` (e.g. ``Bm25RuleCandidates(...)``, called as
            ``candidates(mention, num_candidates)``); rows with a ``candidates`` column use it instead.
        num_candidates: K of ``"list"`` mode.
        context_regions: ``row -> regions dict or None`` (visual context; None: text only).
        entity_image_features: ``entity_id -> (N, D) features or None`` (candidate images).
        context_max_length, candidate_max_length: token limits.
        train: insert the gold and shuffle (``"list"`` mode).
        seed: seed of the shuffling / padding generator.
        return_candidate_ids: add ``candidate_ids`` (the row's candidate ids; not a model input) to ``"list"``
            batches: K ids per row in training; at evaluation the row's own list, which can be shorter than K.

    At evaluation (``train=False``) a list shorter than K is never padded with other KB entities (a gold missed by
    the generator must stay missed): the tensors are padded by repeating the row's own candidates (an empty list gets
    blank placeholders with no entity), and positions ``>= len(candidate_ids[b])`` are padding. A repeated candidate
    scores exactly as its first copy, so the best-scored candidate is unchanged; :func:`rank_candidates` reads only
    the first ``len(candidate_ids[b])`` scores. ``labels`` is the gold's position in the row's list, or ``-100``.
    """

    def __init__(
        self,
        processor,
        kb: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
        mode: str = "in_batch",
        candidates: Callable[[str, int], Sequence[str]] | None = None,
        num_candidates: int = 5,
        context_regions: Callable[[Mapping[str, Any]], Regions | None] | None = None,
        entity_image_features: Callable[[str], Any] | None = None,
        context_max_length: int = 64,
        candidate_max_length: int = 64,
        train: bool = True,
        seed: int = 0,
        return_candidate_ids: bool = False,
    ):
        if mode not in ("in_batch", "list"):
            raise ValueError(f"unknown collator mode {mode!r}; expected 'in_batch' or 'list'")
        if int(num_candidates) < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates!r}")
        self.processor = processor
        self.kb = dict(kb) if isinstance(kb, Mapping) else {str(r["entity_id"]): r for r in kb}
        self.kb_ids = list(self.kb)
        self.mode = mode
        self.candidates = candidates
        self.num_candidates = int(num_candidates)
        self.context_regions = context_regions
        self.entity_image_features = entity_image_features
        self.context_max_length = context_max_length
        self.candidate_max_length = candidate_max_length
        self.train = train
        self.rng = random.Random(seed)
        self.return_candidate_ids = return_candidate_ids

    # -- pieces ----------------------------------------------------------------------------------------------------
    def _entity(self, eid: str) -> Mapping[str, Any]:
        if eid not in self.kb:
            raise ValueError(f"entity {eid!r} is not in the collator's KB")
        return self.kb[eid]

    def candidate_list(self, row: Mapping[str, Any]) -> tuple[list[str], int]:
        """Candidate ids of a row and the gold position (-100 when absent at evaluation).

        Training: K ids (gold inserted, short lists padded with random KB entities, shuffled). Evaluation: the row's
        own list cut to K, never padded (see :meth:`padded`)."""
        k, gold = self.num_candidates, str(row["entity_id"])
        if row.get("candidates") is not None:
            ids = [str(c) for c in row["candidates"]][:k]
        elif self.candidates is not None:
            ids = [str(c) for c in self.candidates(row["mention"], k)][:k]
        else:
            raise ValueError("list mode needs a candidate generator or a 'candidates' column")
        if self.train:
            if gold not in ids:
                ids = (ids[: k - 1] if len(ids) >= k else ids) + [gold]
            if len(ids) < k:  # pad with random KB entities (only when short: the pool is O(KB))
                taken = set(ids)
                pool = [e for e in self.kb_ids if e not in taken]
                while len(ids) < k and pool:
                    ids.append(pool.pop(self.rng.randrange(len(pool))))
            self.rng.shuffle(ids)
            if len(ids) < k:
                raise ValueError(f"the KB has fewer than num_candidates={k} entities")
        return ids, ids.index(gold) if gold in ids else -100

    def padded(self, ids: Sequence[str]) -> list[str | None]:
        """``ids`` filled up to K by repeating them in order (``None``: a blank placeholder, when ``ids`` is empty)."""
        k = self.num_candidates
        if not ids:
            return [None] * k
        return [ids[j % len(ids)] for j in range(k)]

    def _encode_entities(self, ids: Sequence[str | None]):
        ents = [self._entity(e) if e is not None else {"name": "", "description": None} for e in ids]  # None: blank
        feats = None
        if self.entity_image_features is not None:
            feats = [self.entity_image_features(e) if e is not None else None for e in ids]
        return self.processor.encode_candidates(
            [str(e.get("name", "")) for e in ents],
            [e.get("description") for e in ents],
            feats,
            max_length=self.candidate_max_length,
            prefix="candidate_",
        )

    # -- call ------------------------------------------------------------------------------------------------------
    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [row_text(r) for r in rows]
        regions = [self.context_regions(r) for r in rows] if self.context_regions is not None else None
        batch = dict(
            self.processor.encode_contexts(texts, [row_span(r) for r in rows], regions, max_length=self.context_max_length)
        )
        if self.mode == "in_batch":
            batch.update(self._encode_entities([str(r["entity_id"]) for r in rows]))
            batch["labels"] = torch.arange(len(rows))
            return batch
        lists, labels = zip(*(self.candidate_list(r) for r in rows))
        flat = self._encode_entities([e for ids in lists for e in self.padded(ids)])  # K per row
        k = self.num_candidates
        for key, value in flat.items():
            batch[key] = value.reshape(len(rows), k, *value.shape[1:])  # (B, K, ...)
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if self.return_candidate_ids:
            batch["candidate_ids"] = [list(ids) for ids in lists]  # not a model input: pop before forward
        return batch


@torch.no_grad()
def rank_candidates(model, collator: ZemelCollator, rows: Sequence[Mapping[str, Any]], batch_size: int = 16):
    """Score each row's candidate list (``"list"`` mode collator, ``train=False``) through the training forward and
    return the candidate ids sorted by descending score (ties by KB order, the package's rule), one list per row."""
    from .ranking import rank_keys

    position = {e: i for i, e in enumerate(collator.kb_ids)}
    model.eval()
    ranked = []
    previous, collator.return_candidate_ids = collator.return_candidate_ids, True
    try:
        batches = [collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    finally:
        collator.return_candidate_ids = previous
    for batch in batches:
        ids = batch.pop("candidate_ids")
        batch.pop("labels", None)
        scores = model(**batch).scores  # (B, K)
        for row_ids, row_scores in zip(ids, scores.tolist()):
            ranked.append([e for e, _ in rank_keys(row_ids, row_scores[: len(row_ids)], position)])
    return ranked


# ----------------------------------------------------------------------------------------------------------------------
# Training: one loss owner, hard negatives mined with the model being trained
# ----------------------------------------------------------------------------------------------------------------------


class ZemelTrainingCollator:
    """``ZemelCollator`` in ``"list"`` mode that also returns ``candidate_entity_index`` ``(B, K)`` (KB positions of the
    candidates, used to mask in-batch false negatives)."""

    def __init__(self, collator: ZemelCollator):
        self.collator = collator
        self.collator.return_candidate_ids = True
        self.position = {e: i for i, e in enumerate(collator.kb_ids)}

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collator(rows)
        ids = batch.pop("candidate_ids")
        batch["candidate_entity_index"] = torch.tensor([[self.position[e] for e in row] for row in ids], dtype=torch.long)
        return batch


def zemel_loss(model, inputs: Mapping[str, Any], in_batch_negatives: bool = True):
    """The ZEMEL training loss, computed by the model itself (its ``forward`` owns the loss): cross-entropy of
    ``logit_scale * score`` of each context against its own candidates and, with ``in_batch_negatives``, those of the
    whole batch (``candidate_entity_index`` passed on: scores ``(B, B*K)``, other copies of the gold masked out).
    Returns ``(loss, outputs)``."""
    inputs = dict(inputs)
    if in_batch_negatives:
        outputs = model(**inputs, loss_type="batch_candidates")
    else:
        inputs.pop("candidate_entity_index", None)
        outputs = model(**inputs, loss_type="candidates")
    return outputs.loss, outputs


class ZemelTrainer(Trainer):
    """``Trainer`` whose loss is :func:`zemel_loss` (in-batch negatives on top of each row's candidate list)."""

    def __init__(self, *args, in_batch_negatives: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.in_batch_negatives = in_batch_negatives

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        loss, outputs = zemel_loss(model, inputs, self.in_batch_negatives)
        return (loss, outputs) if return_outputs else loss


def _autocast_dtype(model) -> torch.dtype | None:
    try:
        from .hardware import bf16_is_fast

        return torch.bfloat16 if bf16_is_fast(model.device.type) else None
    except Exception:  # pragma: no cover - no oneDNN check on this platform
        return None


def encode_kb_vectors(
    model,
    processor,
    entities: Sequence[Mapping[str, Any]],
    max_length: int = 64,
    batch_size: int = 128,
    autocast_dtype: torch.dtype | None | str = "auto",
) -> torch.Tensor:
    """Text-only candidate vectors ``(N, H)`` (float32, KB order) through the one KB encoder of the product
    (:func:`~modeling_mel.knowledge_base.encode_entities`, what ``mel index`` runs): batched tokenisation,
    length-sorted batches, inference mode, bf16 autocast where it is fast (``autocast_dtype="auto"``)."""
    from .knowledge_base import encode_entities

    if autocast_dtype == "auto":
        autocast_dtype = _autocast_dtype(model)
    rows = [{"name": str(e.get("name") or ""), "description": e.get("description")} for e in entities]
    return encode_entities(model, processor, rows, batch_size=batch_size, max_length=max_length,
                           bf16=autocast_dtype == torch.bfloat16)


def rank_rows_dense(
    model,
    processor,
    rows: Sequence[Mapping[str, Any]],
    kb_vectors: torch.Tensor,
    k: int,
    max_length: int = 64,
    batch_size: int = 64,
    autocast_dtype: torch.dtype | None | str = "auto",
    progress: bool = False,
) -> tuple[list[list[int]], list[list[float]]]:
    """Exact top-``k`` KB positions (and scores), best first, of each row's mention context against cached candidate
    vectors (text only): the dense linker of the product (:class:`~modeling_mel.linking_dense.DenseLinker`, exhaustive,
    bf16 selection where it is fast with ``autocast_dtype="auto"``, float32 rescoring, ties by KB order)."""
    if autocast_dtype == "auto":
        autocast_dtype = _autocast_dtype(model)
    linker = DenseLinker(model, processor, kb_vectors.float(), device=model.device,
                         bf16=autocast_dtype == torch.bfloat16, max_length=max_length)
    ranked = linker.link([row_text(r) for r in rows], [row_span(r) for r in rows], int(k), batch_size=batch_size,
                         progress=progress)
    return [[p for p, _ in row] for row in ranked], [[s for _, s in row] for row in ranked]


class HardNegativeCallback(TrainerCallback):
    """BLINK-style hard negatives, refreshed each epoch: before every epoch the current model encodes the training KB
    and ranks every training mention against it; the ``num_negatives`` best-scored entities other than the gold become
    the row's ``candidates`` (the collator adds the gold and shuffles; the in-batch loss sees every row's list).

    Args:
        processor, rows (the training rows, edited in place), kb_ids / kb_rows (the training KB, same order),
        num_negatives, context_max_length, candidate_max_length, batch_size.
    """

    def __init__(
        self,
        processor,
        rows: list[dict],
        kb_ids: Sequence[str],
        kb_rows: Sequence[Mapping[str, Any]],
        num_negatives: int,
        context_max_length: int = 64,
        candidate_max_length: int = 64,
        batch_size: int = 64,
    ):
        if int(num_negatives) < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives!r}")
        self.processor = processor
        self.rows = rows
        self.kb_ids = list(kb_ids)
        self.kb_rows = list(kb_rows)
        self.num_negatives = int(num_negatives)
        self.context_max_length = context_max_length
        self.candidate_max_length = candidate_max_length
        self.batch_size = batch_size
        self.history: list[dict] = []

    def mine(self, model) -> dict:
        """Refresh every row's ``candidates``; returns the training R@1 / R@k of the current model (a progress sign)."""
        import time

        t0 = time.perf_counter()
        vectors = encode_kb_vectors(model, self.processor, self.kb_rows, max_length=self.candidate_max_length)
        pos, _ = rank_rows_dense(
            model, self.processor, self.rows, vectors, self.num_negatives + 1,
            max_length=self.context_max_length, batch_size=self.batch_size, progress=True,
        )
        hits1 = hitsk = 0
        for row, ranked in zip(self.rows, pos):
            gold = str(row["entity_id"])
            ids = [self.kb_ids[p] for p in ranked]
            hits1 += bool(ids) and ids[0] == gold
            hitsk += gold in ids
            row["candidates"] = [gold] + [e for e in ids if e != gold][: self.num_negatives]
        n = max(1, len(self.rows))
        stats = {"train_r@1": hits1 / n, f"train_r@{self.num_negatives + 1}": hitsk / n, "seconds": time.perf_counter() - t0}
        self.history.append(stats)
        logger.info("hard negatives mined: %s", stats)
        return stats

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.mine(model)
        return control


# ----------------------------------------------------------------------------------------------------------------------
# Arguments and run (:mod:`modeling_mel.scripts.train_zemel` is a thin script over these, as PFMEL's scripts are over pfmel_training)
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
        metadata={"help": "image encoder: any transformers vision checkpoint (hub id or dir: ResNet, CLIP, ViT, DINOv2, "
                  "SigLIP), or random:<arch> (random:resnet-50, random:clip-vit-b32, random:tiny-resnet, ...: random "
                  "init, tests and timing only; 'tiny' = random:tiny-resnet). A checkpoint that cannot be loaded is an "
                  "error; the encoder's identity is recorded in the processor config"},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "image side fed to the encoder (default: its processor's / config's; 224 for "
                                "ResNet as in the paper; 64 is fast; a ViT-like encoder takes only its own)"})
    image_feature: str | None = field(
        default=None, metadata={"help": "global image feature: pooled, projected (CLIP image_embeds) or cls (default: "
                                "projected for CLIP, cls for ViT, else pooled)"})
    image_regions: str = field(
        default="boxes", metadata={"help": "regions of a mention image after the whole image: boxes (a crop per box, "
                                   "the paper) or patches (the encoder's patch tokens; raise --max_regions to keep "
                                   "them, e.g. 50 for CLIP ViT-B/32)"})
    image_cache_dir: str | None = field(default=None, metadata={"help": "on-disk image feature cache (default: in memory)"})
    features: str | None = field(default=None, metadata={
        "help": "feature cache made by mel features (--image_model, --image_size, --image_feature come from it; an "
                "image not in it is an error naming the fix)"})
    max_entity_images: int = field(
        default=9, metadata={"help": "most KB images per candidate entity (regions); 0: candidates text only"}
    )
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
        if self.image_regions not in ("boxes", "patches"):
            raise ValueError(f"unknown --image_regions {self.image_regions!r}; choose boxes or patches")
        for name in ("num_candidates", "image_size", "context_max_length", "candidate_max_length"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.max_entity_images) < 0:  # 0: candidates text only (the ZEMEL paper's Fig. 4 starts at 0 images)
            raise ValueError(f"--max_entity_images must be >= 0, got {self.max_entity_images!r}")
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
    backbone_mixing: float = field(
        default=0.65,
        metadata={"help": "after training, mix each text-stream weight with the backbone's: alpha * trained + "
                  "(1 - alpha) * backbone (weight-space ensembling, modeling_mel.backbone_interpolation); 1: off. "
                  "0.65 (default) serves WikiMEL and RichpediaMEL in domain and transfers to the other (docs/results.md)"},
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
        if not 0.0 <= float(self.backbone_mixing) <= 1.0:
            raise ValueError(f"--backbone_mixing must be in [0, 1] (1: the trained weights, 0: the backbone's), got "
                             f"{self.backbone_mixing!r}")

    def config_kwargs(self, feature_dim: int) -> dict:
        kwargs = {"scoring": self.scoring, "poly_m": self.poly_m, "max_regions": self.max_regions, "v_feature_dim": feature_dim}
        for name in ("v_hidden_size", "v_intermediate_size", "v_num_attention_heads", "v_num_hidden_layers",
                     "bi_hidden_size", "bi_num_attention_heads"):
            if getattr(self, name) is not None:
                kwargs[name] = int(getattr(self, name))
        kwargs.update(self.overrides)
        return kwargs


@dataclass
class ZemelTrainingArguments(SafeOutputTrainingArguments):
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

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("--output_dir is required")
        super().__post_init__()  # the --output_dir check (SafeOutputTrainingArguments)
        if self.remove_unused_columns:
            raise ValueError("--remove_unused_columns must stay False: the ZEMEL collator reads the raw rows")


# ----------------------------------------------------------------------------------------------------------------------
# Training pieces
# ----------------------------------------------------------------------------------------------------------------------
def build_model(model_args: ZemelModelArguments, processor, feature_dim: int):
    """``ZemelPolyEncoder.from_text_backbone`` with the requested head and visual sizes, resized for the processor."""
    from .modeling_zemel import ZemelPolyEncoder

    model = ZemelPolyEncoder.from_text_backbone(model_args.backbone, **model_args.config_kwargs(feature_dim))
    model.resize_for_processor(processor)
    return model


def _training_data(data_args: ZemelDataArguments):
    """Step 2 of :func:`run_zemel_training`: the corpus (ZEMELD's zero-shot check raises here, before any training),
    its training rows (at most ``max_train_samples``) and training KB, after checking the evaluation splits exist and
    share no entity with training (ValueError on a zero-shot corpus, a warning otherwise)."""
    from .zemel_data import check_zero_shot, load_zemel_data

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
    return data, train_rows, data.kb_for(data_args.train_split, "split")


def _training_regions(data_args: ZemelDataArguments, data, train_rows: Sequence[Mapping[str, Any]], train_kb: Mapping):
    """Step 3 of :func:`run_zemel_training`: the image features of the training rows (whole image + box crops) and of
    the training KB's entities, computed once (``mel features``' cache with ``--features``), and their dimension;
    ``(None, 2048)`` when training text only."""
    from .zemel_evaluation import RegionFeatures, build_image_extractor

    if data_args.image_features != "resnet50" or not data.has_images:
        if data_args.image_features == "resnet50":
            logger.warning("the %s corpus has no images: training text only", data_args.dataset)
        return None, 2048
    if data_args.features:  # extract once: the cache made by mel features (its encoder; another is refused)
        from .feature_cache import open_features

        default_model = ZemelDataArguments.__dataclass_fields__["image_model"].default
        extractor = open_features(data_args.features, image_model=(
            data_args.image_model if data_args.image_model != default_model else None))
    else:
        extractor = build_image_extractor(data_args.image_model, data_args.image_size, data_args.image_cache_dir,
                                          feature=data_args.image_feature)
    regions = RegionFeatures(extractor, data_args.max_entity_images, regions=data_args.image_regions)
    regions.add_rows(train_rows, progress=True)
    regions.add_entities(train_kb, progress=True)
    return regions, regions.feature_dim


def _processor_and_model(data_args: ZemelDataArguments, model_args: ZemelModelArguments, regions, feature_dim: int):
    """Step 4 of :func:`run_zemel_training`: the processor and the model (text streams from the backbone; new
    ``[M] [/M] [ENT]`` embeddings), the image encoder's identity in the processor config (what ``mel index`` / ``link``
    / ``serve`` and the pipeline build by default, and check) and the training settings in the model config."""
    from .processing_zemel import ZemelProcessor

    encoder = regions.extractor.identity if regions is not None else None
    processor = ZemelProcessor.from_backbone(model_args.backbone, max_regions=model_args.max_regions,
                                             feature_dim=feature_dim, context_template=model_args.context_template,
                                             image_encoder=encoder,
                                             image_regions=data_args.image_regions if regions is not None else "boxes")
    model = build_model(model_args, processor, feature_dim)
    model.config.image_features = data_args.image_features if regions is not None else "none"
    # informative copies (the processor's image_encoder is what inference reads): the name the encoder is recorded
    # under (random:<arch> for a random one, an absolute path for a folder) and its input side
    model.config.image_model = encoder["name"] if encoder else data_args.image_model
    model.config.image_size = encoder["image_size"] if encoder else data_args.image_size
    model.config.max_entity_images = data_args.max_entity_images
    model.config.context_max_length = data_args.context_max_length
    model.config.candidate_max_length = data_args.candidate_max_length
    return processor, model


def _training_collator(data_args: ZemelDataArguments, train_args: ZemelTrainingArguments, processor, train_rows: list,
                       train_kb: Mapping, regions):
    """Step 5 of :func:`run_zemel_training`: the collator of each mention's list (gold + ``k - 1`` hard negatives:
    mined with the model before every epoch by the returned callbacks, or BM25+rules over the training KB), shuffled,
    plus in-batch negatives. Returns ``(collator, callbacks, k)``."""
    from .candidates import Bm25RuleCandidates

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
    return collator, callbacks, k


def _save_and_evaluate(trainer: ZemelTrainer, processor, data, regions, train_results: dict,
                       data_args: ZemelDataArguments, train_args: ZemelTrainingArguments) -> dict:
    """Step 8 of :func:`run_zemel_training` (main process only): save the processor and ``train_results.json``,
    evaluate the evaluation splits with the candidate cache into ``eval_results.json``; returns their metrics (``{}``
    on the other processes or without evaluation splits)."""
    from .zemel_evaluation import evaluate_splits

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
    return results


def run_zemel_training(
    data_args: ZemelDataArguments, model_args: ZemelModelArguments, train_args: ZemelTrainingArguments
) -> dict:
    """ZEMEL training and evaluation (the steps of :mod:`modeling_mel.scripts.train_zemel`): load the corpus and check the zero-shot
    splits, compute image features, build processor and model from the backbone, train with :class:`ZemelTrainer`
    (mined hard negatives + in-batch negatives), save model + processor + ``train_results.json``, evaluate the
    evaluation splits into ``eval_results.json``. Returns ``{"train", "eval", "splits"}``."""
    from transformers import set_seed

    from .corpus import ListDataset

    # 1. The seed before anything random: the new weights (poly codes, [M] [/M] [ENT] embeddings, co-attention) are
    #    drawn when the model is built, before the Trainer seeds its own run, so two runs must start from one seed.
    set_seed(train_args.seed)
    # 2.-5. The corpus, image features, processor and model, collator (the steps' functions above).
    data, train_rows, train_kb = _training_data(data_args)
    regions, feature_dim = _training_regions(data_args, data, train_rows, train_kb)
    processor, model = _processor_and_model(data_args, model_args, regions, feature_dim)
    collator, callbacks, k = _training_collator(data_args, train_args, processor, train_rows, train_kb, regions)

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

    # 7. Save model + processor (auto_map and code files come from the package registration); the config records the
    #    negatives and the corpus it was trained with (the model card states them).
    model.config.training_negatives = data_args.negatives if k > 1 else "none"
    model.config.training_dataset = data_args.dataset
    if float(model_args.backbone_mixing) < 1.0:  # weight-space ensembling with the backbone it started from
        from .backbone_interpolation import interpolate_with_backbone

        interpolate_with_backbone(model, model_args.backbone_mixing, model_args.backbone, processor)
        model.config.backbone_mixing = float(model_args.backbone_mixing)
    trainer.save_model(train_args.output_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    train_results = {"train_loss": train_output.training_loss, "global_step": train_output.global_step, "losses": losses,
                     "train_mentions": len(train_rows), "train_kb": len(train_kb), "num_candidates": k,
                     "negatives": model.config.training_negatives}

    # 8. Evaluate dev/test with the candidate cache (main process only).
    results = _save_and_evaluate(trainer, processor, data, regions, train_results, data_args, train_args)
    trainer.accelerator.wait_for_everyone()

    # 9. Report.
    if trainer.is_world_process_zero():
        logger.info("train: %s", {k_: v for k_, v in train_results.items() if k_ != "losses"})
        for split, metrics in results.items():
            logger.info("%s: %s", split, json.dumps(metrics, sort_keys=True))
    return {"train": train_results, "eval": results, "splits": [canonical_split(s) for s in data_args.eval_split_list]}


__all__ = [
    "ZemelCollator",
    "rank_candidates",
    "ZemelTrainingCollator",
    "ZemelTrainer",
    "zemel_loss",
    "HardNegativeCallback",
    "encode_kb_vectors",
    "rank_rows_dense",
    "ZemelDataArguments",
    "ZemelModelArguments",
    "ZemelTrainingArguments",
    "build_model",
    "run_zemel_training",
]
