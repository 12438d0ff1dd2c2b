"""ZEMEL evaluation (modeling_mel.zemel_evaluation) on hand-made cases: the evaluation KB of each mode, the best
candidate among the first N with the package's tie rule, V-T-KG pairing, the metric module, and the errors of bad
corpus arguments. Evaluation of trained models: tests/test_zemel_training.py, test_eval_equals_product.py."""

from __future__ import annotations

import pytest

from modeling_mel.zemel_evaluation import (
    ZemelData,
    best_candidate,
    canonical_eval_kb,
    canonical_split,
    check_zero_shot,
    load_zemel_data,
)

KB = {e: {"entity_id": e, "name": e} for e in ("a", "b", "c", "d", "unused")}


def _data(zero_shot: bool) -> ZemelData:
    mentions = {"train": [{"entity_id": "a"}, {"entity_id": "b"}], "dev": [{"entity_id": "c"}],
                "test": [{"entity_id": "d"}, {"entity_id": "d"}]}
    return ZemelData("toy", mentions, kbs={}, full_kb=KB, zero_shot=zero_shot)


def test_evaluation_kb_of_each_mode():
    zs = _data(zero_shot=True)
    assert list(zs.kb_for("test")) == ["c", "d", "unused"]  # unseen: every entity not seen in training, unused too
    assert list(zs.kb_for("validation", "split")) == ["c", "d", "unused"]  # the old name, and dev's other name
    assert list(zs.kb_for("train")) == ["a", "b"]  # training is linked against its own gold entities
    assert list(zs.kb_for("test", "gold_only")) == ["d"] and list(zs.kb_for("test", "full")) == list(KB)
    assert list(_data(zero_shot=False).kb_for("test")) == list(KB)  # no zero-shot split: the whole KB
    assert canonical_split("valid") == "dev" and canonical_eval_kb("split") == "unseen"
    with pytest.raises(ValueError, match=r"unknown eval_kb 'seen'; choose one of \['unseen', 'full', 'gold_only'"):
        zs.kb_for("test", "seen")
    with pytest.raises(ValueError, match=r"split 'holdout' is not in the toy corpus; available splits: \['dev', "):
        zs.split("holdout")


def test_best_candidate_among_the_first_n_with_the_tie_rule():
    assert best_candidate(["x", "y", "z"], [0.1, 0.9, 0.95], n=2) == ("y", 0.9)  # z is beyond the first 2
    assert best_candidate(["x", "y"], [0.5, 0.5], n=5) == ("x", 0.5)  # a tie without a KB order: the earlier one
    assert best_candidate(["x", "y"], [0.5, 0.5], n=5, order={"x": 7, "y": 3}) == ("y", 0.5)  # else the KB position
    assert best_candidate([], [], n=5) == (None, float("-inf"))


def test_zero_shot_check_and_corpus_arguments(tmp_path):
    assert check_zero_shot([{"entity_id": "a"}, {"entity_id": "b"}], [{"entity_id": "b"}, {"entity_id": "c"}],
                           "dev") == ["b"]
    with pytest.raises(ValueError, match=r"unknown dataset 'twitter_mel'; choose one of \['zemeld', 'mel_jsonl'"):
        load_zemel_data("twitter_mel", str(tmp_path))
    with pytest.raises(ValueError, match="data_dir .* is not a directory"):
        load_zemel_data("zemeld", str(tmp_path / "missing"))


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
