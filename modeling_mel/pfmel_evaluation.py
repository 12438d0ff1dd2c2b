"""PFMEL evaluation: ranking each mention's candidates with the NSP cross-encoder, the linking metrics, the
name-length baseline and the evaluation of corpus splits (what ``mel evaluate``, fine-tuning's final evaluation and
the reranker's calibration run)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .linking_cross import CrossLinker
from .pfmel_data import LinkingData, PFMELCollator, PFMELCorpus

logger = logging.getLogger(__name__)


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
    def score_pairs(pairs: list[tuple[int, int]]) -> torch.Tensor:  # called once: every pair (no top_k)
        return linker.score_features([features[where[pair]] for pair in pairs], collate, progress=progress)

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


__all__ = ["LinkingPrediction", "predict_linking", "linking_metrics", "name_match_baseline", "evaluate_splits"]
