"""Offline linking metric modules on hand-computed cases."""

from __future__ import annotations

import pytest

from modeling_mel.metrics import LinkingAccuracy, LinkingMRR, load_metric

CASES = [
    # predictions (ranked candidates), references, accuracy, candidate_recall, mrr
    ([["a", "b"], ["c", "x"], []], ["a", "x", "y"], 1 / 3, 2 / 3, (1 + 1 / 2 + 0) / 3),
    ([["a"], ["b"]], ["a", "b"], 1.0, 1.0, 1.0),
    ([["b", "c", "a"], ["q"]], ["a", "z"], 0.0, 0.5, (1 / 3) / 2),
    ([[], []], ["a", "b"], 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("predictions, references, accuracy, recall, mrr", CASES)
def test_linking_accuracy_and_mrr(predictions, references, accuracy, recall, mrr):
    out = LinkingAccuracy().compute(predictions=predictions, references=references)
    assert out["accuracy"] == pytest.approx(accuracy)
    assert out["candidate_recall"] == pytest.approx(recall)
    assert out["n"] == len(references)
    assert LinkingMRR().compute(predictions=predictions, references=references)["mrr"] == pytest.approx(mrr)


def test_combined_and_batches():
    metric = load_metric("linking")
    out = metric.compute(predictions=CASES[0][0], references=CASES[0][1])
    assert set(out) == {"accuracy", "candidate_recall", "n", "mrr"}
    acc = load_metric("accuracy")
    acc.add_batch(predictions=[["a"]], references=["a"])
    acc.add_batch(predictions=[["b", "a"]], references=["a"])
    assert acc.compute() == {"accuracy": 0.5, "candidate_recall": 1.0, "n": 2}


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        load_metric("f1")
