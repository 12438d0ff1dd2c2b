"""PFMEL evaluation: ranking each mention's candidates (equal to scoring each pair alone), the linking metrics and
the name-length baseline. Splits evaluated end to end: tests/test_pfmel_training.py, tests/test_eval_equals_product.py."""

from __future__ import annotations

import pytest
import torch

from modeling_mel.pfmel_data import PFMELCollator, encode_pairs
from modeling_mel.pfmel_evaluation import LinkingPrediction, linking_metrics, name_match_baseline, predict_linking
from modeling_mel.pfmel_training import PFMELModelArguments, load_model_and_processor

from pfmel_fixtures import pfmel_corpus, tiny_backbone, toy_corpus  # noqa: F401 - fixtures


def test_predict_linking_matches_direct_scoring(pfmel_corpus, tiny_backbone):
    model, processor = load_model_and_processor(PFMELModelArguments(backbone=tiny_backbone, max_length=64), seed=1)
    model.eval()
    data = pfmel_corpus.linking_data("dev")
    preds = predict_linking(model, processor, data, batch_size=5)
    assert [p.mention_id for p in preds] == [m.mention_id for m in data.mentions]
    m, p = data.mentions[0], preds[0]
    assert sorted(e for e, _ in p.ranked) == sorted(m.candidates)
    assert [s for _, s in p.ranked] == sorted((s for _, s in p.ranked), reverse=True)
    for eid, score in p.ranked:
        feats = encode_pairs(processor, [data.pair(m, eid, 0)])
        batch = PFMELCollator(processor, data.table)(feats)
        batch = {k: v for k, v in batch.items() if k not in ("labels", "task_ids")}
        with torch.no_grad():
            direct = float(model.link_scores(model(**batch).logits)[0])
        assert score == pytest.approx(direct, abs=1e-4)
    bf16 = predict_linking(model, processor, data, batch_size=5, bf16=True)
    # untrained tiny model: candidates are near ties, so compare scores, not ranks
    fp32 = {(a.mention_id, e): s for a in preds for e, s in a.ranked}
    assert max(abs(fp32[(b.mention_id, e)] - s) for b in bf16 for e, s in b.ranked) < 0.05
    metrics = linking_metrics(preds)
    assert set(metrics) >= {"accuracy", "candidate_recall", "mrr", "n"} and metrics["n"] == len(data.mentions)


def test_name_match_baseline(pfmel_corpus, toy_corpus):
    _, kb = toy_corpus
    names = {r["entity_id"]: r["name"] for r in kb}
    data = pfmel_corpus.linking_data("test")
    for p, m in zip(name_match_baseline(data, names), data.mentions):
        assert p.predicted == min(m.candidates, key=lambda e: len(names[e]))


def test_linking_metrics_values():
    preds = [
        LinkingPrediction("m1", "a", "a", [("a", -0.1), ("b", -2.0)]),  # gold first
        LinkingPrediction("m2", "x", "x", [("c", -0.5), ("x", -0.7)]),  # gold second
        LinkingPrediction("m3", "y", "y", []),  # no candidate: wrong, in the denominator
    ]
    assert [p.predicted for p in preds] == ["a", "c", None]
    out = linking_metrics(preds)
    assert out == pytest.approx({"accuracy": 1 / 3, "candidate_recall": 2 / 3, "mrr": 0.5, "n": 3})
    ranked = linking_metrics(preds, kb_size=10)
    assert ranked["H@1"] == pytest.approx(1 / 3) and ranked["H@3"] == pytest.approx(2 / 3)
    assert ranked["MR"] == pytest.approx((1 + 2 + 11) / 3)  # an unranked gold counts as kb_size + 1
    assert ranked["MRR"] == pytest.approx(0.5) and ranked["n_unranked"] == 1 and ranked["n"] == 3
