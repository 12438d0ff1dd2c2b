"""ZEMEL metrics on hand-computed cases."""

from __future__ import annotations

import pytest

from modeling_mel.zemel_metrics import (
    gold_triples,
    linking_metrics,
    metrics_at_n,
    rank_by_scores,
    v_t_kg_metrics,
    vt_kg_precision,
)


def test_linking_metrics_with_abstentions():
    # 5 gold mentions, 4 answered, 3 correct: P = 3/4, R@1 = 3/5, F1 = 2*.75*.6/1.35 = 2/3
    m = linking_metrics(["a", "b", None, "x", "e"], ["a", "b", "c", "d", "e"], n=5)
    assert m["precision/5"] == pytest.approx(0.75)
    assert m["r@1/5"] == pytest.approx(0.6)
    assert m["micro_f1/5"] == pytest.approx(2 / 3)


def test_metrics_at_n_uses_top_of_first_n():
    ranked = [["a", "x"], ["y", "b"], [], ["d"]]
    gold = ["a", "b", "c", "d"]
    # top-1 predictions: a, y, none, d -> 2 correct of 3 answered, 4 gold
    m = metrics_at_n(ranked, gold, 5)
    assert (m["precision/5"], m["r@1/5"]) == pytest.approx((2 / 3, 0.5))
    assert m["micro_f1/5"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    with pytest.raises(ValueError, match="0"):
        metrics_at_n(ranked, gold, 0)


def test_rank_by_scores_stable():
    assert rank_by_scores([["a", "b", "c"]], [[0.1, 0.9, 0.1]]) == [["b", "a", "c"]]


def test_vt_kg_precision():
    assert vt_kg_precision(["a", "b", "c", "z"], ["a", "b", "c", "d"], n=100) == {"vt_kg_precision/100": 0.75}


def test_v_t_kg_triples():
    box1, box2, box3 = [0, 0, 10, 10], [10, 10, 20, 20], [0, 10, 5, 20]
    gold = [
        ("img1", box1, (0, 5), "E1"),
        ("img1", box2, (10, 15), "E2"),
        ("img2", box3, (0, 4), "E3"),
    ]
    predicted = [
        ("img1", box1, (0, 5), "E1"),  # correct
        ("img1", box2, (0, 5), "E2"),  # wrong pairing: box2 with mention (0, 5)
        ("img1", box1, (10, 15), "E1"),  # wrong pairing
        ("img2", [0.04, 10, 5, 20], (0, 4), "E3"),  # correct (box equal after rounding to 0.1)
        ("img2", box3, (0, 4), "E9"),  # wrong entity
    ]
    m = v_t_kg_metrics(predicted, gold, n=5)
    # 2 correct of 5 predicted, of 3 gold: P = .4, R = 2/3, F1 = 2*.4*(2/3)/(.4+2/3) = .5
    assert m["v_t_kg_precision/5"] == pytest.approx(0.4)
    assert m["v_t_kg_recall/5"] == pytest.approx(2 / 3)
    assert m["v_t_kg_micro_f1/5"] == pytest.approx(0.5)
    assert v_t_kg_metrics([], gold)["v_t_kg_micro_f1"] == 0.0
    with pytest.raises(ValueError, match="triple"):
        v_t_kg_metrics([("img1", box1, "E1")], gold)


def test_gold_triples_from_rows():
    rows = [{"image_id": "i", "box": [0, 0, 1, 1], "mention_start": 3, "mention_end": 8, "entity_id": "E"}]
    assert gold_triples(rows) == [("i", [0, 0, 1, 1], (3, 8), "E")]
    assert v_t_kg_metrics(gold_triples(rows), gold_triples(rows))["v_t_kg_precision"] == 1.0
