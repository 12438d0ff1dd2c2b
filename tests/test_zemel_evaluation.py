"""ZEMEL evaluation (modeling_mel.zemel_evaluation) on hand-made cases: the best candidate among the first N with the
package's tie rule, V-T-KG pairing, the metric module, and the steps of evaluate_split (counts, metrics at each N).
The evaluation KB of each mode and the corpus arguments: tests/test_zemel_data.py. Evaluation of trained models:
tests/test_zemel_training.py, test_eval_equals_product.py."""

from __future__ import annotations

import pytest

from modeling_mel.zemel_evaluation import best_candidate


def test_best_candidate_among_the_first_n_with_the_tie_rule():
    assert best_candidate(["x", "y", "z"], [0.1, 0.9, 0.95], n=2) == ("y", 0.9)  # z is beyond the first 2
    assert best_candidate(["x", "y"], [0.5, 0.5], n=5) == ("x", 0.5)  # a tie without a KB order: the earlier one
    assert best_candidate(["x", "y"], [0.5, 0.5], n=5, order={"x": 7, "y": 3}) == ("y", 0.5)  # else the KB position
    assert best_candidate([], [], n=5) == (None, float("-inf"))


def test_v_t_kg_pairing_predictor():
    from modeling_mel.zemel_evaluation import predict_vt_triples
    from modeling_mel.zemel_metrics import gold_triples, v_t_kg_metrics

    boxes = [[0, 0, 10, 10], [20, 20, 30, 30]]
    rows = [
        {"image_id": "i", "image_boxes": boxes, "box": boxes[0], "mention_start": 0, "mention_end": 3, "entity_id": "A"},
        {"image_id": "i", "image_boxes": boxes, "box": boxes[1], "mention_start": 8, "mention_end": 11, "entity_id": "B"},
    ]
    lists = [["A", "X"], ["B", "A"]]
    # mention 0 prefers box 0 with entity A; mention 1 fits box 1 best (greedy on mention 1 alone would take box 0)
    scores = {(0, 0): [5.0, 1.0], (0, 1): [0.0, 1.0], (1, 0): [6.0, 0.0], (1, 1): [4.0, 0.0]}
    pred = predict_vt_triples(rows, lists, scores, n=5)
    assert sorted(pred, key=lambda t: t[2]) == [("i", boxes[0], (0, 3), "A"), ("i", boxes[1], (8, 11), "B")]
    assert v_t_kg_metrics(pred, gold_triples(rows))["v_t_kg_micro_f1"] == 1.0
    # at n=1 mention 1 keeps only B: same pairing
    assert len(predict_vt_triples(rows, lists, scores, n=1)) == 2
    # a mention without candidates gives no triple: recall drops, precision stays
    pred = predict_vt_triples(rows, [["A"], []], scores, n=5)
    m = v_t_kg_metrics(pred, gold_triples(rows))
    assert m["v_t_kg_precision"] == 1.0 and m["v_t_kg_recall"] == 0.5


def test_evaluate_metric_module_matches_functions():
    from modeling_mel.zemel_evaluation import ZemelLinkingMetric
    from modeling_mel.zemel_metrics import linking_metrics

    preds, gold = ["a", "", "c", "x"], ["a", "b", "c", "d"]
    got = ZemelLinkingMetric().compute(predictions=preds, references=gold, n=5)
    assert got == linking_metrics(["a", None, "c", "x"], gold, 5)
    assert got["precision/5"] == pytest.approx(2 / 3) and got["r@1/5"] == pytest.approx(0.5)


def test_evaluate_split_checks_its_arguments(caplog):
    from modeling_mel.zemel_evaluation import _checked_ns

    rows = [{"entity_id": "a"}, {"entity_id": "zz"}]
    with caplog.at_level("WARNING", logger="modeling_mel.zemel_evaluation"):
        assert _checked_ns(rows, {"a": {}}, (100, 5, 5)) == [5, 100]  # sorted, once each
    assert "1 gold entities are not in the evaluation KB (always missed): ['zz']" in caplog.text
    with pytest.raises(ValueError, match=r"ns must be positive candidate counts, got \[0, 5\]"):
        _checked_ns(rows, {"a": {}}, (5, 0))
    with pytest.raises(ValueError, match="the split has no mention rows to evaluate"):
        _checked_ns([], {"a": {}}, (5,))


def test_mention_counts_keep_every_gold_mention():
    from modeling_mel.zemel_evaluation import _mention_counts

    rows = [{"entity_id": "a", "mention_start": 0}, {"entity_id": "zz", "mention_start": None},
            {"entity_id": "NIL", "mention_start": 3}, {"entity_id": "b", "mention_start": 1}]
    lists = [["a"], ["a"], [], []]
    counts = _mention_counts(rows, {"a": {}, "b": {}, "c": {}}, lists, [r["entity_id"] for r in rows])
    # "zz" is outside the KB, "b" has no candidates, NIL both (counted once among the unusable)
    assert counts == {"n": 4, "kb_size": 3, "n_gold_not_in_kb": 2, "n_no_candidates": 2, "n_unusable": 3,
                      "n_unaligned": 1, "n_nil": 1}


def test_metrics_at_each_n_cut_the_candidate_lists():
    from modeling_mel.zemel_evaluation import _metrics_at_each_n

    lists = [["x", "a"], ["b", "y"], []]
    scores = [[0.9, 0.5], [0.1, 0.8], []]
    results, predicted = _metrics_at_each_n(lists, scores, ["a", "b", "c"], [1, 2], {"x": 0, "a": 1, "b": 2, "y": 3})
    assert predicted == {1: ["x", "b", None], 2: ["x", "y", None]}
    assert results["precision/1"] == pytest.approx(0.5) and results["r@1/1"] == pytest.approx(1 / 3)
    assert results["precision/2"] == 0.0 and results["vt_kg_precision/1"] == results["precision/1"]
    assert results["candidate_recall@1"] == pytest.approx(1 / 3) and results["candidate_recall@2"] == pytest.approx(2 / 3)
    assert results["random_r@1/1"] == pytest.approx(1 / 3) and results["random_r@1/2"] == pytest.approx(1 / 3)
