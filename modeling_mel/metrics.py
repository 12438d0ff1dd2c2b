"""Offline ``evaluate`` metric modules for entity linking over candidate sets.

``evaluate.load("accuracy")`` needs the hub; these are local ``evaluate.Metric`` subclasses and work offline.
Inputs, for both metrics: ``predictions`` = the ranked candidate entity ids of each mention (best first; an
empty list when the mention has no candidates), ``references`` = the gold entity id.

* :class:`LinkingAccuracy`: ``accuracy`` (top-ranked candidate is the gold entity; a mention whose gold is not
  among its candidates, or that has none, is wrong), ``candidate_recall`` (gold among the candidates) and ``n``.
* :class:`LinkingMRR`: ``mrr``, the mean reciprocal rank of the gold entity (0 when it is not a candidate).

``load_metric("linking")`` combines both with ``evaluate.combine``.

The field's protocol (MIMIC, M3EL, MMoE, KGMEL: every mention ranked against the whole KB) is computed in one place,
:func:`ranking_metrics` (``H@1``, ``H@3``, ``H@5``, ``H@10``, ``H@20``, ``MR``, ``MRR`` from the gold ranks, every gold
mention counted), used by the ZEMEL and PFMEL evaluations and ``benchmarks/quality.py``; :class:`LinkingRanks`
(``load_metric("ranking")``) is the same as an ``evaluate`` module.
"""

from __future__ import annotations

from typing import Any, Sequence

import datasets
import evaluate

_CITATION = """\
@article{li2022pfmel,
  title={Pre-Training and Fine-Tuning with Next Sentence Prediction for Multimodal Entity Linking},
  author={Li, Lu and Wang, Qipeng and Zhao, Baohua and Li, Xinwei and Zhou, Aihua and Wu, Hanqian},
  journal={Electronics}, volume={11}, number={14}, pages={2134}, year={2022}
}
"""

_FEATURES = datasets.Features(
    {
        "predictions": datasets.Sequence(datasets.Value("string")),
        "references": datasets.Value("string"),
    }
)

_KWARGS = """
Args:
    predictions (`list[list[str]]`): ranked candidate entity ids per mention, best first ([] = no candidate).
    references (`list[str]`): gold entity id per mention.
"""


class LinkingAccuracy(evaluate.Metric):
    """Linking accuracy over candidate sets, with candidate recall beside it."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Entity-linking accuracy: the top-ranked candidate equals the gold entity; mentions whose gold "
            "entity is not a candidate count as wrong. Also reports candidate_recall and n.",
            citation=_CITATION,
            inputs_description=_KWARGS
            + "Returns: accuracy (float), candidate_recall (float), n (int).\n"
            + "Example: predictions=[['a','b'],['c'],[]], references=['a','x','y'] -> accuracy 1/3, candidate_recall 1/3.",
            features=_FEATURES,
        )

    def _compute(self, predictions, references) -> dict:
        n = len(references)
        if n == 0:
            return {"accuracy": 0.0, "candidate_recall": 0.0, "n": 0}
        hits = sum(1 for p, g in zip(predictions, references) if len(p) and p[0] == g)
        found = sum(1 for p, g in zip(predictions, references) if g in p)
        return {"accuracy": hits / n, "candidate_recall": found / n, "n": n}


class LinkingMRR(evaluate.Metric):
    """Mean reciprocal rank of the gold entity in the ranked candidates (0 when it is not a candidate)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Mean reciprocal rank of the gold entity among the ranked candidates.",
            citation=_CITATION,
            inputs_description=_KWARGS + "Returns: mrr (float).",
            features=_FEATURES,
        )

    def _compute(self, predictions, references) -> dict:
        if not references:
            return {"mrr": 0.0}
        total = 0.0
        for p, g in zip(predictions, references):
            p = list(p)
            if g in p:
                total += 1.0 / (p.index(g) + 1)
        return {"mrr": total / len(references)}


#: The cut-offs of the field's protocol: H@1, H@3, H@5, H@10, H@20 (beside MR and MRR).
HIT_KS = (1, 3, 5, 10, 20)


def gold_rank(ranked: Sequence[Any], gold: Any) -> int | None:
    """1-based position of ``gold`` in ``ranked`` (entity ids, best first); ``None`` when it is not there."""
    for i, e in enumerate(ranked):
        if e == gold:
            return i + 1
    return None


def gold_ranks(ranked: Sequence[Sequence[Any]], golds: Sequence[Any]) -> list[int | None]:
    """:func:`gold_rank` of each mention."""
    if len(ranked) != len(golds):
        raise ValueError(f"{len(ranked)} rankings but {len(golds)} gold labels")
    return [gold_rank(r, g) for r, g in zip(ranked, golds)]


def ranking_metrics(ranks: Sequence[int | None], kb_size: int, ks: Sequence[int] = HIT_KS) -> dict[str, float]:
    """H@k (for each ``k`` of ``ks``), MR and MRR of the gold ranks, every gold mention counted.

    ``ranks[i]``: the rank (1 = best) of mention ``i``'s gold entity among the ``kb_size`` entities it was ranked
    against, or ``None`` when the gold has no rank: a NIL mention (:data:`modeling_mel.nil.NIL_ENTITY_ID`), a gold not
    in the KB, or a gold outside a ranking that was cut short (a candidate list, a top-k).

    * ``H@k``: share of the mentions whose gold is ranked ``k`` or better;
    * ``MRR``: mean of ``1 / rank`` (0 for a mention without rank);
    * ``MR``: mean rank, a mention without rank counting as ``kb_size + 1`` (ranked after every entity; for a gold
      outside a cut ranking its true rank is at most ``kb_size``, so MR is then an upper bound);
    * ``n``: every gold mention (the denominator); ``n_unranked``: the mentions without rank.

    With the whole KB ranked (the field's protocol) only NIL mentions and golds outside the KB are without rank.
    """
    kb_size = int(kb_size)
    if kb_size < 1:
        raise ValueError(f"kb_size must be >= 1, got {kb_size!r}")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"the H@k cut-offs must be >= 1, got {ks!r}")
    checked = []
    for r in ranks:
        if r is not None:
            if isinstance(r, bool) or int(r) != r or not 1 <= int(r) <= kb_size:
                raise ValueError(f"rank {r!r} is not in 1..{kb_size} (the KB size)")
            r = int(r)
        checked.append(r)
    n = len(checked)
    out: dict[str, float] = {}
    for k in ks:
        out[f"H@{k}"] = sum(r is not None and r <= k for r in checked) / n if n else 0.0
    out["MR"] = sum(r if r is not None else kb_size + 1 for r in checked) / n if n else 0.0
    out["MRR"] = sum(1.0 / r for r in checked if r is not None) / n if n else 0.0
    out["n"] = n
    out["n_unranked"] = sum(r is None for r in checked)
    return out


class LinkingRanks(evaluate.Metric):
    """The field's protocol as an ``evaluate`` module: :func:`ranking_metrics` of the gold's position in each
    ranking (``kb_size``, required: the size of the KB ranked against; ``ks``: the H@k cut-offs)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="H@1/3/5/10/20, MR and MRR of the gold entity's rank, every gold mention counted; a gold not in "
            "the ranking counts as ranked after every entity (kb_size + 1) in MR and 0 in H@k and MRR.",
            citation=_CITATION,
            inputs_description=_KWARGS + "kb_size (int): entities ranked against; ks (list[int], optional).\n"
            + "Returns: H@k per k, MR, MRR, n, n_unranked.",
            features=_FEATURES,
        )

    def _compute(self, predictions, references, kb_size: int | None = None, ks: Sequence[int] = HIT_KS) -> dict:
        if kb_size is None:
            raise ValueError("LinkingRanks needs kb_size= (the number of entities each mention was ranked against)")
        return ranking_metrics(gold_ranks([list(p) for p in predictions], list(references)), kb_size, ks)


METRICS = {"linking_accuracy": LinkingAccuracy, "accuracy": LinkingAccuracy, "mrr": LinkingMRR, "linking_mrr": LinkingMRR,
           "ranking": LinkingRanks}


def load_metric(name: str = "linking", **kwargs):
    """An offline metric by name: ``linking_accuracy`` (alias ``accuracy``), ``mrr``, ``ranking`` (:class:`LinkingRanks`),
    or ``linking`` (accuracy and MRR, via ``evaluate.combine``). ``kwargs`` go to the metric constructor (e.g. ``experiment_id``)."""
    key = str(name).lower()
    if key == "linking":
        return evaluate.combine([LinkingAccuracy(**kwargs), LinkingMRR(**kwargs)])
    if key not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {['linking'] + sorted(METRICS)}")
    return METRICS[key](**kwargs)


__all__ = ["LinkingAccuracy", "LinkingMRR", "LinkingRanks", "HIT_KS", "gold_rank", "gold_ranks", "ranking_metrics",
           "load_metric", "METRICS"]
