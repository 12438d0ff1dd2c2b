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
        return_candidate_ids: add ``candidate_ids`` (list of K ids per row; not a model input) to ``"list"`` batches.
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
        """Candidate ids of a row (length K) and the gold position (-100 when absent at evaluation)."""
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
            pool = [e for e in self.kb_ids if e not in ids]
            while len(ids) < k and pool:
                ids.append(pool.pop(self.rng.randrange(len(pool))))
            self.rng.shuffle(ids)
        else:
            pool = [e for e in self.kb_ids if e not in ids]
            while len(ids) < k and pool:
                ids.append(pool.pop(self.rng.randrange(len(pool))))
        if len(ids) < k:
            raise ValueError(f"the KB has fewer than num_candidates={k} entities")
        return ids, ids.index(gold) if gold in ids else -100

    def _encode_entities(self, ids: Sequence[str]):
        ents = [self._entity(e) for e in ids]
        feats = None
        if self.entity_image_features is not None:
            feats = [self.entity_image_features(e) for e in ids]
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
        flat = self._encode_entities([e for ids in lists for e in ids])
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


__all__ = ["ZemelCollator", "rank_candidates"]
