"""ZEMEL evaluation metrics (paper, section 5.1): precision, R@1 and micro-F1 at N candidates; V&T-KG; V-T-KG.

Definitions used here (the paper names them without formulas):

* **Linking at N candidates** (`linking_metrics`, `metrics_at_n`): each gold mention gets a ranked candidate list cut
  to its first N; the prediction is the top candidate, or none when the list is empty (or the model abstains:
  `None`). ``precision = correct / predicted``, ``R@1 = correct / gold mentions`` (the gold entity is ranked first),
  ``micro-F1 = 2PR / (P + R)``, all micro-averaged over mentions. Keys carry the suffix ``/N``.
* **V&T-KG** (pairing of boxes and text mentions given): `vt_kg_precision` = precision of the entity predicted for
  each given (box, mention) pair, as above.
* **V-T-KG** (pairing predicted): `v_t_kg_metrics` compares sets of triples ``(image_id, box, mention, entity)``. A
  predicted triple is correct only when the SAME box, the SAME mention span and the SAME entity form a gold triple.
  ``precision = |pred ∩ gold| / |pred|``, ``recall = |pred ∩ gold| / |gold|``, ``micro-F1 = 2PR / (P + R)`` over all
  images (duplicates counted once). Boxes are compared by their coordinates rounded to ``box_decimals`` (default
  1), mentions by ``(start, end)`` span when given as ints, else by their text.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Sequence


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def linking_metrics(predictions: Sequence[Any | None], gold: Sequence[Any], n: int | None = None) -> dict[str, float]:
    """Precision, R@1 and micro-F1 of top-1 predictions (`None` = no prediction) against gold entity ids."""
    if len(predictions) != len(gold):
        raise ValueError(f"{len(predictions)} predictions but {len(gold)} gold labels")
    answered = sum(p is not None for p in predictions)
    correct = sum(p is not None and p == g for p, g in zip(predictions, gold))
    precision = correct / answered if answered else 0.0
    recall = correct / len(gold) if gold else 0.0
    suffix = f"/{n}" if n is not None else ""
    return {f"precision{suffix}": precision, f"r@1{suffix}": recall, f"micro_f1{suffix}": _f1(precision, recall)}


def metrics_at_n(ranked_candidates: Sequence[Sequence[Any]], gold: Sequence[Any], n: int) -> dict[str, float]:
    """`linking_metrics` where each prediction is the first of the top-`n` ranked candidates (none if empty)."""
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    preds = [list(c)[:n][0] if len(c) else None for c in ranked_candidates]
    return linking_metrics(preds, gold, n)


def rank_by_scores(candidate_ids: Sequence[Sequence[Any]], scores: Sequence[Sequence[float]]) -> list[list[Any]]:
    """Sort each example's candidate ids by descending score (stable: ties keep the input order)."""
    out = []
    for ids, sc in zip(candidate_ids, scores):
        sc = [float(s) for s in list(sc)[: len(ids)]]
        out.append([ids[i] for i in sorted(range(len(ids)), key=lambda i: -sc[i])])
    return out


def vt_kg_precision(predictions: Sequence[Any | None], gold: Sequence[Any], n: int | None = None) -> dict[str, float]:
    """V&T-KG: precision of the entities predicted for given (box, mention) pairs."""
    m = linking_metrics(predictions, gold, n)
    suffix = f"/{n}" if n is not None else ""
    return {f"vt_kg_precision{suffix}": m[f"precision{suffix}"]}


def _triple_key(triple: Sequence[Any], box_decimals: int) -> tuple[Hashable, ...]:
    if len(triple) != 4:
        raise ValueError(f"a V-T-KG triple is (image_id, box, mention, entity_id); got {triple!r}")
    image_id, box, mention, entity = triple
    box_key = tuple(round(float(v), box_decimals) for v in box)
    if isinstance(mention, (list, tuple)):
        mention_key: Hashable = tuple(int(v) for v in mention)
    else:
        mention_key = str(mention)
    return (str(image_id), box_key, mention_key, str(entity))


def v_t_kg_metrics(
    predicted: Iterable[Sequence[Any]],
    gold: Iterable[Sequence[Any]],
    n: int | None = None,
    box_decimals: int = 1,
) -> dict[str, float]:
    """V-T-KG: precision / recall / micro-F1 of predicted (image_id, box, mention, entity) triples vs gold ones."""
    pred_set = {_triple_key(t, box_decimals) for t in predicted}
    gold_set = {_triple_key(t, box_decimals) for t in gold}
    correct = len(pred_set & gold_set)
    precision = correct / len(pred_set) if pred_set else 0.0
    recall = correct / len(gold_set) if gold_set else 0.0
    suffix = f"/{n}" if n is not None else ""
    return {
        f"v_t_kg_precision{suffix}": precision,
        f"v_t_kg_recall{suffix}": recall,
        f"v_t_kg_micro_f1{suffix}": _f1(precision, recall),
    }


def mention_key(row: dict) -> Any:
    """How a V-T-KG triple names a mention row: its ``(start, end)`` span, or its text when kept without a span."""
    if row.get("mention_start") is None or row.get("mention_end") is None:
        return str(row["mention"])
    return (int(row["mention_start"]), int(row["mention_end"]))


def gold_triples(rows: Iterable[dict]) -> list[tuple]:
    """Gold V-T-KG triples from ZEMELD ``mentions`` rows (image_id, box, (start, end) or mention text, entity_id)."""
    return [(r["image_id"], r["box"], mention_key(r), r["entity_id"]) for r in rows]


__all__ = [
    "linking_metrics",
    "metrics_at_n",
    "rank_by_scores",
    "vt_kg_precision",
    "v_t_kg_metrics",
    "gold_triples",
    "mention_key",
]
