"""ZEMEL evaluation (paper, section 5.1) with a candidate cache, plus the image-feature plumbing that the
:mod:`modeling_mel.scripts.train_zemel` and :mod:`modeling_mel.scripts.evaluate_zemel` scripts share. The corpora
(:class:`ZemelData`, :func:`load_zemel_data`, :func:`check_zero_shot`, the split and ``eval_kb`` names) live in
:mod:`modeling_mel.zemel_data`; this module re-exports them.

Pipeline of :func:`evaluate_split` for one split:

1. **Candidates**: :class:`~modeling_mel.candidates.Bm25RuleCandidates` over the split's evaluation KB (see
   :meth:`ZemelData.kb_for`; ZEMELD default ``eval_kb="unseen"``: every KB entity not seen in training, entities that
   no mention uses included, the zero-shot setting; ``"full"``: every KB entity; ``"gold_only"``: only the gold
   entities of the split's mentions, an optimistic closed pool) gives each mention its top-``N`` candidates. The
   gold entity is NOT inserted: a gold outside the list is a miss. Lists can be shorter than ``N`` (fewer entities
   match the mention at all) or empty.
2. **Candidate cache**: every entity of the split's KB is encoded ONCE with ``model.encode_candidates`` (length-sorted
   batches, ``torch.inference_mode``, optional bf16 autocast) into a ``(C, H)`` matrix (:func:`encode_kb`).
3. **Contexts**: contexts are encoded once (length-sorted batches) and scored against the cached vectors of their own
   candidates with ``model.score`` (:func:`score_contexts`). Scores equal those of ``model(**collator(rows))``.
4. **Metrics** at each ``N`` in ``(5, 100)``; the prediction of a mention is its best-scored candidate among the first
   ``N`` BM25+rules candidates (poly scores of a candidate do not depend on the other candidates, so one pass over
   the top-100 serves both cuts).

Metric definitions (keys carry ``/N``):

* ``precision/N`` = correct / mentions with a prediction (a non-empty candidate list);
  ``r@1/N`` = correct / all gold mentions (the gold entity is ranked first); ``micro_f1/N`` = 2PR / (P + R); all
  micro-averaged over mentions. These are computed with the box-mention pairing GIVEN (the context's visual input is
  the whole image and the mention's own box), so ``vt_kg_precision/N`` (V&T-KG) equals ``precision/N``.
* ``v_t_kg_precision/N``, ``v_t_kg_recall/N``, ``v_t_kg_micro_f1/N`` (V-T-KG, pairing predicted; only for corpora
  with boxes): see :func:`predict_vt_triples`. A predicted triple ``(image, box, mention span, entity)`` is correct
  only when box, mention and entity are all right; precision over predicted triples, recall over gold triples.
* ``candidate_recall@5``, ``candidate_recall@100``: share of mentions whose gold is among the top-N candidates (the
  ceiling of ``r@1/N``); ``random_r@1/N``: expected R@1 of picking a candidate uniformly at random; ``n``: every gold
  mention of the split (the denominator of R@1 and candidate recall); ``n_unusable``: mentions that can only be wrong
  (``n_no_candidates``: empty candidate list; ``n_gold_not_in_kb``: gold outside the evaluation KB), counted as
  wrong, never dropped; ``n_unaligned``: mentions kept without a span (ZEMEL marks them at the start of the context).

The field's protocol (MIMIC, M3EL, MMoE, KGMEL), beside them: every mention's context is scored against EVERY entity
of the evaluation KB (:func:`kb_gold_ranks`, no candidate generator) and ``H@1``, ``H@3``, ``H@5``, ``H@10``, ``H@20``,
``MR`` and ``MRR`` come from the gold's rank (:func:`modeling_mel.metrics.ranking_metrics`, every gold mention counted;
a NIL mention or a gold outside the KB has no rank: ``n_unranked``; ``n_nil`` counts the mentions the corpus labels NIL).
``kb_ranking=False`` skips it (it scores each context against the whole KB; the contexts are encoded once for both).

The offline ``evaluate`` module :class:`ZemelLinkingMetric` computes the linking metrics from predictions.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import datasets
import evaluate
import numpy as np
import torch

from .candidates import Bm25RuleCandidates
from .knowledge_base import encode_entities
from .linking_dense import DenseLinker, row_span, row_text
from .metrics import ranking_metrics
from .ranking import rank_keys
from .nil import is_nil_gold, nil_evaluation
from .zemel_data import (  # re-exported: the runs, scripts and tests import them from here
    DEFAULT_EVAL_KB,
    EVAL_KB_HELP,
    EVAL_KB_MODES,
    ZEMEL_DATASETS,
    ZemelData,
    canonical_eval_kb,
    canonical_split,
    check_zero_shot,
    load_zemel_data,
)
from .zemel_metrics import gold_triples, linking_metrics, mention_key, v_t_kg_metrics

logger = logging.getLogger(__name__)

IMAGE_FEATURE_MODES = ("resnet50", "none")
DEFAULT_NS = (5, 100)
TINY_IMAGE_MODEL = "tiny"  # --image_model tiny: a small random-init ResNet with 64-d output (tests, quick runs)
TINY_IMAGE_FEATURE_DIM = 64


# ======================================================================================================================
# Image features
# ======================================================================================================================


def build_image_extractor(
    image_model: str = "microsoft/resnet-50",
    image_size: int | None = None,
    cache_dir: str | None = None,
    batch_size: int = 32,
    feature: str | None = None,
):
    """An :class:`~modeling_mel.image_features.ImageFeatureExtractor` of any transformers vision checkpoint or
    ``random:<arch>``; ``image_model="tiny"`` is ``random:tiny-resnet``, a small random-init ResNet with a 64-d output
    (fast; tests and demos; the model's ``v_feature_dim`` follows it). ``image_size=None``: the encoder's own."""
    from .image_features import ImageFeatureExtractor

    return ImageFeatureExtractor(image_model, cache_dir=cache_dir, image_size=image_size, batch_size=batch_size,
                                 feature=feature)


class RegionFeatures:
    """Visual inputs of ZEMEL computed once: per image the whole-image feature and one crop feature per box; per
    entity the features of its KB images.

    ``context(row)`` gives the whole image and the row's own box (pairing given); ``context(row, box_index=j)`` the
    whole image and box ``j`` of the row's image (V-T-KG). Rows without image give None (text only). With
    ``regions="patches"`` a context is the whole image and the encoder's patch tokens
    (:func:`~modeling_mel.processing_zemel.patch_regions`), whatever its boxes.
    """

    def __init__(self, extractor, max_entity_images: int = 9, chunk: int = 256, regions: str = "boxes"):
        from .processing_zemel import IMAGE_REGION_SOURCES

        if regions not in IMAGE_REGION_SOURCES:
            raise ValueError(f"unknown image regions {regions!r}; choose one of {list(IMAGE_REGION_SOURCES)}")
        self.regions = regions
        self.extractor = extractor
        self.max_entity_images = int(max_entity_images)
        self.chunk = int(chunk)
        self._images: dict[str, dict[str, torch.Tensor]] = {}
        self._entities: dict[str, np.ndarray | None] = {}

    @property
    def feature_dim(self) -> int:
        return int(self.extractor.feature_dim)

    def add_rows(self, rows: Sequence[Mapping[str, Any]], progress: bool = False) -> None:
        """Encode the images (and box crops) of `rows` not seen yet, in batches."""
        from .image_features import ImageReadError, open_image
        from .regions import make_regions, patch_regions

        todo: dict[str, Mapping] = {}
        for r in rows:
            key = r.get("image_key", r["id"])
            if r.get("image") is not None and key not in self._images and key not in todo:
                todo[key] = r
        items = list(todo.items())
        starts = range(0, len(items), self.chunk)
        if progress and len(items) > self.chunk:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="region features", unit="chunk")
        for start in starts:
            part = items[start : start + self.chunk]
            wholes, crops, owners = [], [], []  # owners: (key, image size, boxes, index of the first crop)
            for key, r in part:
                try:
                    pil = open_image(r["image"])
                except ImageReadError as err:
                    logger.warning("image of %s unreadable (%s): text only", key, err)
                    self._images[key] = None
                    continue
                boxes = [list(b) for b in (r.get("image_boxes") or [])]
                owners.append((key, pil.size, boxes, len(crops)))
                wholes.append(pil)
                crops += [pil.crop(tuple(int(round(v)) for v in b)) for b in boxes]
            if not wholes:
                continue
            if self.regions == "patches":  # the whole image, then the encoder's patch tokens
                whole_feats, patch_feats = self.extractor.encode_patches(wholes)
                for (key, _, _, _), whole, patches in zip(owners, whole_feats, patch_feats):
                    self._images[key] = patch_regions(whole, patches)
                continue
            whole_feats = self.extractor.encode(wholes)  # (n_images, D)
            crop_feats = self.extractor.encode(crops) if crops else np.zeros((0, self.feature_dim), np.float32)
            for (key, size, boxes, first), whole in zip(owners, whole_feats):
                box_feats = crop_feats[first : first + len(boxes)] if boxes else None
                self._images[key] = make_regions(whole, box_feats, boxes, size)  # the processor's region builder

    def add_entities(self, kb: Mapping[str, Mapping[str, Any]], progress: bool = False) -> None:
        """Encode the KB images (at most ``max_entity_images`` each) of entities not seen yet."""
        refs, owners = [], []
        for eid, entity in kb.items():
            if eid in self._entities:
                continue
            images = list(entity.get("images") or [])[: self.max_entity_images]
            owners.append((eid, len(refs), len(images)))
            refs += images
        feats = self.extractor.encode(refs, progress=progress) if refs else np.zeros((0, self.feature_dim), np.float32)
        for eid, first, n in owners:
            self._entities[eid] = feats[first : first + n] if n else None

    def context(self, row: Mapping[str, Any], box_index: int | None = None) -> dict[str, torch.Tensor] | None:
        """Regions of a mention context: the whole image, then box ``box_index`` (default: the row's own box)."""
        regions = self._images.get(row.get("image_key", row["id"]))
        if regions is None:
            return None
        if self.regions == "patches":
            return regions
        j = row.get("box_index") if box_index is None else box_index
        if j is None or regions["features"].shape[0] == 1:
            return {"features": regions["features"][:1], "spatial": regions["spatial"][:1]}
        keep = [0, 1 + int(j)]
        return {"features": regions["features"][keep], "spatial": regions["spatial"][keep]}

    def entity(self, entity_id: str) -> np.ndarray | None:
        """Features ``(N, D)`` of an entity's KB images, or None."""
        return self._entities.get(entity_id)


# ======================================================================================================================
# Candidate cache and scoring
# ======================================================================================================================


@dataclass
class CandidateCache:
    """Cached candidate vectors of a KB: ``vectors[i]`` (``(C, H)``, float32, CPU) belongs to ``entity_ids[i]``."""

    entity_ids: list[str]
    vectors: torch.Tensor
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {e: i for i, e in enumerate(self.entity_ids)}


def encode_kb(
    model,
    processor,
    kb: Mapping[str, Mapping[str, Any]],
    entity_features: Callable[[str], Any] | None = None,
    batch_size: int = 64,
    max_length: int = 64,
    bf16: bool = False,
    progress: bool = False,
) -> CandidateCache:
    """Encode every KB entity once (``[CLS] name [ENT] description [SEP]`` + its images) into a cache, with the one KB
    encoder of the package (:func:`~modeling_mel.knowledge_base.encode_entities`, what ``mel index`` and the
    pipeline run): length-sorted batches under ``torch.inference_mode`` (and bf16 autocast with ``bf16=True``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    ids = list(kb)
    if not ids:
        raise ValueError("the KB is empty: nothing to encode")
    rows = [{"entity_id": e, "name": str(kb[e].get("name") or ""), "description": kb[e].get("description")} for e in ids]
    features = (lambda i: entity_features(ids[i])) if entity_features is not None else None
    vectors = encode_entities(model, processor, rows, batch_size=batch_size, max_length=max_length,
                              progress=progress, bf16=bf16, entity_features=features)
    return CandidateCache(ids, vectors)


def _linker(model, cache: CandidateCache, processor, bf16: bool, max_length: int) -> DenseLinker:
    """The dense linker of the evaluation over a candidate cache (exhaustive: no index)."""
    return DenseLinker(model, processor, cache.vectors, device=next(model.parameters()).device, bf16=bf16,
                       max_length=max_length)


def link_rows(
    model,
    processor,
    rows: Sequence[Mapping[str, Any]],
    cache: CandidateCache,
    candidate_lists: Sequence[Sequence[str]] | None = None,
    kb_ranking: bool = False,
    top: int = 0,
    regions: Callable[[Mapping[str, Any]], Any] | None = None,
    batch_size: int = 64,
    max_length: int = 64,
    bf16: bool = False,
    progress: bool = False,
) -> dict[str, list]:
    """One pass of the dense linker (:class:`~modeling_mel.linking_dense.DenseLinker`) over the mention rows: each
    context encoded once (length-sorted batches, the model's fast path) and, as asked,

    * ``"scores"``: its scores against its own ``candidate_lists[i]`` (same order; ``[]`` for an empty list);
    * ``"ranks"`` (``kb_ranking``): the rank of its gold among EVERY entity of ``cache`` (the field's protocol): ``1 +``
      the entities scored strictly higher (ties go to the gold); ``None`` when the gold is not in the cache;
    * ``"ranked"`` (``top > 0``): its top ``top`` entities of the whole cache as ``[(entity_id, score), ...]``, the
      ranking ``pipeline()`` and ``mel link --candidates dense`` give (exhaustive top-k, float32 rescoring, ties by KB
      order).
    """
    if candidate_lists is not None:
        if len(rows) != len(candidate_lists):
            raise ValueError(f"{len(rows)} rows but {len(candidate_lists)} candidate lists")
        missing = {e for c in candidate_lists for e in c if e not in cache.index}
        if missing:
            raise ValueError(f"candidates not in the cache (encode their KB first): {sorted(missing)[:10]}")
    gold = [cache.index.get(str(r["entity_id"])) if r.get("entity_id") is not None else None for r in rows]
    out: dict[str, list] = {}
    if candidate_lists is not None:
        out["scores"] = [[] for _ in rows]
    if kb_ranking:
        out["ranks"] = [None] * len(rows)
    if top:
        out["ranked"] = [[] for _ in rows]

    def needed(i: int) -> bool:
        return bool(top) or (candidate_lists is not None and bool(candidate_lists[i])) or (kb_ranking and gold[i] is not None)

    linker = _linker(model, cache, processor, bf16, max_length)
    texts, spans = [row_text(r) for r in rows], [row_span(r) for r in rows]
    region_of = (lambda i: regions(rows[i])) if regions is not None else None
    for idx, ctx in linker.encode_batches(texts, spans, region_of, batch_size, keep=needed, progress=progress,
                                          desc="linking contexts"):
        if candidate_lists is not None:
            lists = [[cache.index[e] for e in candidate_lists[i]] for i in idx]
            for i, scores in zip(idx, linker.rescore(ctx, lists)):
                out["scores"][i] = scores
        kb_scores = linker.whole_kb_scores(ctx) if (kb_ranking or top) else None
        if kb_ranking:
            for b, i in enumerate(idx):
                if gold[i] is not None:
                    out["ranks"][i] = int((kb_scores[b] > kb_scores[b, gold[i]]).sum()) + 1
        if top:
            for i, ranked in zip(idx, linker.link_context(ctx, top, kb_scores=kb_scores)):
                out["ranked"][i] = [(cache.entity_ids[p], s) for p, s in ranked]
    return out


def score_contexts(
    model,
    processor,
    rows: Sequence[Mapping[str, Any]],
    candidate_lists: Sequence[Sequence[str]],
    cache: CandidateCache,
    regions: Callable[[Mapping[str, Any]], Any] | None = None,
    batch_size: int = 64,
    max_length: int = 64,
    bf16: bool = False,
    progress: bool = False,
) -> list[list[float]]:
    """Scores of each row's context against the cached vectors of its own candidates (one list per row, same order
    as ``candidate_lists[i]``): :func:`link_rows`' ``"scores"``."""
    return link_rows(model, processor, rows, cache, candidate_lists, regions=regions, batch_size=batch_size,
                     max_length=max_length, bf16=bf16, progress=progress)["scores"]


def kb_gold_ranks(
    model,
    processor,
    rows: Sequence[Mapping[str, Any]],
    cache: CandidateCache,
    regions: Callable[[Mapping[str, Any]], Any] | None = None,
    batch_size: int = 64,
    max_length: int = 64,
    bf16: bool = False,
    progress: bool = False,
) -> list[int | None]:
    """The rank of each row's gold among every entity of ``cache`` (the field's protocol): :func:`link_rows`'
    ``"ranks"``."""
    return link_rows(model, processor, rows, cache, kb_ranking=True, regions=regions, batch_size=batch_size,
                     max_length=max_length, bf16=bf16, progress=progress)["ranks"]


# ======================================================================================================================
# Predictions and metrics
# ======================================================================================================================


def best_candidate(
    candidates: Sequence[str], scores: Sequence[float], n: int, order: Mapping[str, int] | None = None
) -> tuple[str | None, float]:
    """The best-scored of the first ``n`` candidates and its score (the package's tie rule: ties by KB position
    ``order[entity_id]``; without ``order``, the earlier candidate); ``(None, -inf)`` if none."""
    cands = list(candidates)[:n]
    vals = list(scores)[: len(cands)]
    cands = cands[: len(vals)]
    if not cands:
        return None, float("-inf")
    ranked = rank_keys(cands, vals, order if order is not None else {e: i for i, e in reversed(list(enumerate(cands)))})
    return ranked[0][0], float(ranked[0][1])


def _assign(score: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one (mention, box) pairs maximising the summed score (exhaustive for small images, else greedy)."""
    n_m, n_b = score.shape
    if n_m == 0 or n_b == 0:
        return []
    if min(n_m, n_b) <= 6 and max(n_m, n_b) <= 8:
        best, best_pairs = float("-inf"), []
        if n_m <= n_b:
            for perm in itertools.permutations(range(n_b), n_m):
                total = float(sum(score[i, j] for i, j in enumerate(perm)))
                if total > best:
                    best, best_pairs = total, list(enumerate(perm))
        else:
            for perm in itertools.permutations(range(n_m), n_b):
                total = float(sum(score[i, j] for j, i in enumerate(perm)))
                if total > best:
                    best, best_pairs = total, [(i, j) for j, i in enumerate(perm)]
        return best_pairs
    pairs, used_m, used_b = [], set(), set()
    for flat in np.argsort(-score, axis=None, kind="stable"):
        i, j = divmod(int(flat), n_b)
        if i not in used_m and j not in used_b:
            pairs.append((i, j))
            used_m.add(i)
            used_b.add(j)
    return pairs


def predict_vt_triples(
    rows: Sequence[Mapping[str, Any]],
    candidate_lists: Sequence[Sequence[str]],
    box_scores: Mapping[tuple[int, int], Sequence[float]],
    n: int,
    order: Mapping[str, int] | None = None,
) -> list[tuple]:
    """V-T-KG predictions: pair the text mentions of each image with its boxes and link them (``order``: KB positions,
    for the tie rule of :func:`best_candidate`).

    For each text mention ``i`` and box ``j`` of an image, the context is encoded with box ``j`` as its region (the
    whole image and box ``j``, exactly the input seen in training with the gold box) and scored against the mention's
    first ``n`` candidates: ``s_ij = max_e score_ij(e)``, ``e_ij`` its argmax. The pairing is the one-to-one matching
    of mentions and boxes with the largest ``sum s_ij`` (exhaustive search for images of up to 6 mentions or boxes,
    greedy beyond); each matched ``(i, j)`` gives the triple ``(image_id, box_j, (start_i, end_i), e_ij)``. Mentions
    without candidates, or left over when an image has fewer boxes than mentions, give no triple.

    ``box_scores[(row_index, j)]`` are the scores of row ``row_index``'s candidates with box ``j``.
    """
    by_image: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_image.setdefault(r["image_id"], []).append(i)
    triples = []
    for image_id, members in by_image.items():
        members = [i for i in members if candidate_lists[i]]
        boxes = rows[by_image[image_id][0]].get("image_boxes") or []
        if not members or not boxes:
            continue
        score = np.full((len(members), len(boxes)), -np.inf)
        choice: dict[tuple[int, int], str] = {}
        for a, i in enumerate(members):
            for j in range(len(boxes)):
                e, s = best_candidate(candidate_lists[i], box_scores[(i, j)], n, order)
                score[a, j], choice[(a, j)] = s, e
        for a, j in _assign(score):
            i = members[a]
            triples.append((image_id, boxes[j], mention_key(rows[i]), choice[(a, j)]))
    return triples


def _checked_ns(rows: Sequence[Mapping[str, Any]], kb: Mapping[str, Any], ns: Sequence[int]) -> list[int]:
    """The candidate counts ``ns``, sorted and unique; ValueError for a count below 1 or a split without rows; a
    warning naming the gold entities outside the evaluation KB (always missed)."""
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ValueError(f"ns must be positive candidate counts, got {ns!r}")
    if not rows:
        raise ValueError("the split has no mention rows to evaluate")
    unknown = sorted({r["entity_id"] for r in rows} - set(kb))
    if unknown:
        logger.warning("%d gold entities are not in the evaluation KB (always missed): %s", len(unknown), unknown[:10])
    return ns


def _mention_counts(
    rows: Sequence[Mapping[str, Any]], kb: Mapping[str, Any], lists: Sequence[Sequence[str]], gold: Sequence[str]
) -> dict[str, int]:
    """``n``, ``kb_size`` and the counts of the mentions that can only be wrong (every gold mention stays in the
    denominators: those are counted, never dropped), of those without a span and of the NIL ones."""
    no_kb = [r["entity_id"] not in kb for r in rows]
    no_cands = [not c for c in lists]
    return {
        "n": len(rows),
        "kb_size": len(kb),
        "n_gold_not_in_kb": sum(no_kb),
        "n_no_candidates": sum(no_cands),
        "n_unusable": sum(a or b for a, b in zip(no_kb, no_cands)),
        "n_unaligned": sum(r.get("mention_start") is None for r in rows),
        "n_nil": sum(is_nil_gold(g) for g in gold),
    }


def _metrics_at_each_n(
    lists: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    gold: Sequence[str],
    ns: Sequence[int],
    order: Mapping[str, int],
) -> tuple[dict[str, float], dict[int, list[str | None]]]:
    """The linking metrics (pairing given), the candidate recall and the random baseline at each ``N`` of ``ns``, and
    the prediction of each mention at each ``N`` (:func:`best_candidate` with the KB positions ``order``)."""
    results: dict[str, float] = {}
    predictions = {}
    for n in ns:
        preds = [best_candidate(c, s, n, order)[0] for c, s in zip(lists, scores)]
        predictions[n] = preds
        m = linking_metrics(preds, gold, n)
        results.update(m)
        results[f"vt_kg_precision/{n}"] = m[f"precision/{n}"]
        results[f"candidate_recall@{n}"] = sum(g in c[:n] for c, g in zip(lists, gold)) / len(lists)
        results[f"random_r@1/{n}"] = sum((1.0 / len(c[:n])) if g in c[:n] else 0.0 for c, g in zip(lists, gold)) / len(lists)
    return results, predictions


def _v_t_kg_metrics(
    model,
    processor,
    rows: Sequence[Mapping[str, Any]],
    lists: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    cache: CandidateCache,
    regions: RegionFeatures | None,
    ns: Sequence[int],
    batch_size: int,
    max_length: int,
    bf16: bool,
    progress: bool,
) -> dict[str, float]:
    """The V-T-KG metrics (pairing predicted) at each ``N`` of ``ns``: each mention's context scored against its
    candidates once per box of its image (:func:`predict_vt_triples`); text only (``regions`` None), every box gets the
    text-only ``scores`` (the pairing is then arbitrary)."""
    keys = [(i, j) for i, r in enumerate(rows) for j in range(len(r.get("image_boxes") or []))]
    if regions is not None:
        # one context per (mention, box j): the whole image and box j as its regions
        wrapped = [dict(rows[i], _vt_box=j) for i, j in keys]

        def regions_fn(row: Mapping[str, Any]):
            return regions.context(row, box_index=row["_vt_box"])

        box_score_lists = score_contexts(model, processor, wrapped, [lists[i] for i, _ in keys], cache, regions_fn,
                                         batch_size, max_length, bf16, progress)
    else:
        box_score_lists = [scores[i] for i, _ in keys]
    box_scores = dict(zip(keys, box_score_lists))
    gold_t = gold_triples(rows)
    results: dict[str, float] = {}
    for n in ns:
        pred_t = predict_vt_triples(rows, lists, box_scores, n, cache.index)
        results.update(v_t_kg_metrics(pred_t, gold_t, n))
    return results


def evaluate_split(
    model,
    processor,
    rows: Sequence[Mapping[str, Any]],
    kb: Mapping[str, Mapping[str, Any]],
    regions: RegionFeatures | None = None,
    ns: Sequence[int] = DEFAULT_NS,
    batch_size: int = 64,
    context_max_length: int = 64,
    candidate_max_length: int = 64,
    bf16: bool = False,
    vt_kg: bool = True,
    progress: bool = False,
    return_predictions: bool = False,
    nil_threshold: float | None = None,
    nil_fraction: float = 0.2,
    nil_seed: int = 0,
    kb_ranking: bool = True,
    kb_top: int = 0,
) -> dict[str, Any]:
    """Metrics of one split at each ``N`` in ``ns`` (see the module docstring); V-T-KG when rows have boxes; the NIL
    metrics (``nil_*``, :func:`modeling_mel.nil.nil_evaluation`) over the top ``max(ns)`` candidates at
    ``nil_threshold`` (``None``: the uncalibrated linker); with ``kb_ranking`` the field's protocol against the whole
    evaluation KB (``H@1/3/5/10/20``, ``MR``, ``MRR``, ``n_unranked``; :func:`link_rows`). With
    ``return_predictions`` the result carries ``_predictions`` (candidate lists, their scores, the prediction at each
    ``N``) and, with ``kb_top``, each mention's top ``kb_top`` entities of the whole KB (``"kb_ranked"``:
    ``[(entity_id, score), ...]``, the ranking of ``pipeline(candidates="dense")`` and ``mel link``)."""
    ns = _checked_ns(rows, kb, ns)
    generator = Bm25RuleCandidates(list(kb), [str(kb[e].get("name") or "") for e in kb])
    top = max(ns)
    lists = [generator(r["mention"], top) for r in rows]
    gold = [r["entity_id"] for r in rows]

    cache = encode_kb(model, processor, kb, regions.entity if regions is not None else None, batch_size,
                      candidate_max_length, bf16, progress)
    linked = link_rows(model, processor, rows, cache, lists, kb_ranking=kb_ranking, top=int(kb_top),
                       regions=regions.context if regions is not None else None, batch_size=batch_size,
                       max_length=context_max_length, bf16=bf16, progress=progress)  # each context encoded once
    scores = linked["scores"]

    results: dict[str, Any] = _mention_counts(rows, kb, lists, gold)
    if kb_ranking:
        results.update(ranking_metrics(linked["ranks"], len(kb)))
    at_each_n, predictions = _metrics_at_each_n(lists, scores, gold, ns, cache.index)
    results.update(at_each_n)
    ranked = [rank_keys(c[:top], sc[:top], cache.index) for c, sc in zip(lists, scores)]
    results.update(nil_evaluation(ranked, gold, list(kb), nil_threshold, nil_fraction, nil_seed))
    if vt_kg and any(r.get("image_boxes") for r in rows):
        results.update(_v_t_kg_metrics(model, processor, rows, lists, scores, cache, regions, ns, batch_size,
                                       context_max_length, bf16, progress))
    if return_predictions:
        results["_predictions"] = {"candidates": lists, "scores": scores, "predicted": predictions,
                                   "kb_ranked": linked.get("ranked")}
    return results


def evaluate_splits(
    model,
    processor,
    data: ZemelData,
    splits: Sequence[str],
    regions: RegionFeatures | None = None,
    eval_kb: str = DEFAULT_EVAL_KB,
    max_samples: int | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_split` for each split name (``dev``/``validation``, ``test``...) against
    ``data.kb_for(split, eval_kb)``; keys are canonical names; each result records ``eval_kb`` (canonical name)."""
    mode = canonical_eval_kb(eval_kb)
    results = {}
    for split in splits:
        rows = data.split(split)
        if max_samples is not None:
            rows = rows[: int(max_samples)]
        kb = data.kb_for(split, eval_kb)
        if regions is not None:
            regions.add_rows(rows, progress=kwargs.get("progress", False))
            regions.add_entities(kb, progress=kwargs.get("progress", False))
        logger.info("evaluating %s: %d mentions against a KB of %d entities (eval_kb=%s)", split, len(rows), len(kb),
                    mode)
        metrics = evaluate_split(model, processor, rows, kb, regions, **kwargs)
        results[canonical_split(split)] = dict(metrics, eval_kb=mode)
        logger.info("%s: %s", split, json.dumps(results[canonical_split(split)], sort_keys=True))
    return results


# ======================================================================================================================
# Offline evaluate metric
# ======================================================================================================================

_CITATION = """\
@article{zheng2022zemel,
  title   = {Faster Zero-shot Multi-modal Entity Linking via Visual-Linguistic Representation},
  author  = {Zheng, Qiushuo and Wen, Hao and Wang, Meng and Qi, Guilin and Bai, Chaoyu},
  journal = {Data Intelligence}, volume = {4}, number = {3}, pages = {493--508}, year = {2022}
}
"""


class ZemelLinkingMetric(evaluate.Metric):
    """Offline ``evaluate`` metric: precision, R@1 and micro-F1 of ZEMEL linking at ``n`` candidates.

    ``predictions``: the predicted entity id of each mention (``""`` when its candidate list is empty: no
    prediction); ``references``: the gold ids; ``n`` (optional): the candidate count, used as key suffix.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="ZEMEL linking: precision = correct / mentions with a prediction; R@1 = correct / all gold "
            "mentions; micro-F1 = 2PR/(P+R). A gold entity outside the candidate list is a miss.",
            citation=_CITATION,
            inputs_description="predictions (list[str]): predicted entity id, '' for none; references (list[str]): "
            "gold entity ids; n (int, optional): number of candidates (key suffix '/n').",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, n: int | None = None) -> dict[str, float]:
        preds = [p if p else None for p in predictions]
        return linking_metrics(preds, list(references), n)


__all__ = [
    "ZEMEL_DATASETS",
    "IMAGE_FEATURE_MODES",
    "EVAL_KB_MODES",
    "DEFAULT_EVAL_KB",
    "EVAL_KB_HELP",
    "canonical_eval_kb",
    "ZemelData",
    "load_zemel_data",
    "check_zero_shot",
    "canonical_split",
    "build_image_extractor",
    "RegionFeatures",
    "CandidateCache",
    "encode_kb",
    "score_contexts",
    "kb_gold_ranks",
    "best_candidate",
    "predict_vt_triples",
    "evaluate_split",
    "evaluate_splits",
    "ZemelLinkingMetric",
]
