"""Library-side training pieces for ZEMEL: a data collator and an evaluation helper.

The collator turns ZEMELD ``mentions`` rows (or any rows with a caption/text, a mention and an ``entity_id``) into
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

import logging
import random
from typing import Any, Callable, Mapping, Sequence

import torch
from transformers import Trainer, TrainerCallback

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
    @staticmethod
    def _span(row: Mapping[str, Any]) -> Any:
        if row.get("mention_start") is not None and row.get("mention_end") is not None:
            return (int(row["mention_start"]), int(row["mention_end"]))
        return row["mention"]

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
        texts = [r.get("caption", r.get("text")) for r in rows]
        regions = [self.context_regions(r) for r in rows] if self.context_regions is not None else None
        batch = dict(
            self.processor.encode_contexts(texts, [self._span(r) for r in rows], regions, max_length=self.context_max_length)
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
    """Score each row's candidate list (``"list"`` mode collator, ``train=False``) and return the candidate ids
    sorted by descending score, one list per row."""
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
            order = sorted(range(len(row_ids)), key=lambda j: -row_scores[j])
            ranked.append([row_ids[j] for j in order])
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
    """The ZEMEL training loss: cross-entropy of ``logit_scale * score`` of each context against its own candidates
    and, with ``in_batch_negatives``, those of the whole batch (scores ``(B, B*K)``, target ``b*K + label_b``, other
    copies of the gold entity masked out). Returns ``(loss, outputs)``."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")  # (B,)
    cand_index = inputs.pop("candidate_entity_index", None)  # (B, K)
    if not in_batch_negatives or cand_index is None:
        outputs = model(**inputs, labels=labels)
        return outputs.loss, outputs
    b, k = inputs["candidate_input_ids"].shape[:2]
    for key in [k_ for k_ in inputs if k_.startswith("candidate_")]:
        inputs[key] = inputs[key].flatten(0, 1)  # (B*K, ...): one shared candidate set
    outputs = model(**inputs)
    scale = float(getattr(getattr(model, "config", None), "logit_scale", 1.0) or 1.0)
    scores = outputs.scores.float() * scale  # (B, B*K)
    target = torch.arange(b, device=scores.device) * k + labels.to(scores.device)
    flat = cand_index.reshape(-1).to(scores.device)  # (B*K,)
    gold = flat[target]  # (B,)
    false_negative = flat[None, :] == gold[:, None]  # (B, B*K)
    false_negative[torch.arange(b, device=scores.device), target] = False
    scores = scores.masked_fill(false_negative, torch.finfo(scores.dtype).min)
    return torch.nn.functional.cross_entropy(scores, target), outputs


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


@torch.no_grad()
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
    """Exact top-``k`` KB positions (and scores) of each row's mention context against cached candidate vectors
    (text only; poly or bi score of the model). Rows are encoded in length-sorted batches."""
    if autocast_dtype == "auto":
        autocast_dtype = _autocast_dtype(model)
    texts = [r.get("caption", r.get("text")) or "" for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(texts[i]))
    cache = kb_vectors.to(model.device, torch.float32)
    k = min(int(k), cache.shape[0])
    top_idx: list[list[int]] = [[] for _ in rows]
    top_val: list[list[float]] = [[] for _ in rows]
    starts = range(0, len(rows), int(batch_size))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="ranking mentions", unit="batch")
    for start in starts:
        idx = order[start : start + int(batch_size)]
        enc = processor.encode_contexts([texts[i] for i in idx], [ZemelCollator._span(rows[i]) for i in idx], max_length=max_length)
        context = model.inference_context(**{key: v.to(model.device) for key, v in enc.items()}, autocast_dtype=autocast_dtype)
        with torch.inference_mode():
            scores = model.score(context, cache)  # (b, N)
            val, pos = scores.topk(k, dim=1)
        for row, i in enumerate(idx):
            top_idx[i], top_val[i] = pos[row].tolist(), val[row].tolist()
    return top_idx, top_val


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


__all__ = [
    "ZemelCollator",
    "rank_candidates",
    "ZemelTrainingCollator",
    "ZemelTrainer",
    "zemel_loss",
    "HardNegativeCallback",
    "encode_kb_vectors",
    "rank_rows_dense",
]
