"""Offline ``evaluate`` metric modules for entity linking over candidate sets.

``evaluate.load("accuracy")`` needs the hub; these are local ``evaluate.Metric`` subclasses and work offline.
Inputs, for both metrics: ``predictions`` = the ranked candidate entity ids of each mention (best first; an
empty list when the mention has no candidates), ``references`` = the gold entity id.

* :class:`LinkingAccuracy`: ``accuracy`` (top-ranked candidate is the gold entity; a mention whose gold is not
  among its candidates, or that has none, is wrong), ``candidate_recall`` (gold among the candidates) and ``n``.
* :class:`LinkingMRR`: ``mrr``, the mean reciprocal rank of the gold entity (0 when it is not a candidate).

``load_metric("linking")`` combines both with ``evaluate.combine``.
"""

from __future__ import annotations

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


METRICS = {"linking_accuracy": LinkingAccuracy, "accuracy": LinkingAccuracy, "mrr": LinkingMRR, "linking_mrr": LinkingMRR}


def load_metric(name: str = "linking", **kwargs):
    """An offline metric by name: ``linking_accuracy`` (alias ``accuracy``), ``mrr``, or ``linking`` (both, via
    ``evaluate.combine``). ``kwargs`` go to the metric constructor (e.g. ``experiment_id``)."""
    key = str(name).lower()
    if key == "linking":
        return evaluate.combine([LinkingAccuracy(**kwargs), LinkingMRR(**kwargs)])
    if key not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {['linking'] + sorted(METRICS)}")
    return METRICS[key](**kwargs)


__all__ = ["LinkingAccuracy", "LinkingMRR", "load_metric", "METRICS"]
