"""The one tie rule of every linker (modeling_mel.ranking): candidates by score, descending, equal scores by KB
position, ascending -- whatever order the candidates come in, for lists, tensors and arrays, by position or by key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_mel.ranking import rank_by_score, rank_keys


def test_score_first_then_kb_position():
    ranked = rank_by_score([7, 2, 5, 0], [0.5, 0.9, 0.5, 0.1])
    assert ranked == [(2, 0.9), (5, 0.5), (7, 0.5), (0, 0.1)]  # the tie 7 / 5 goes to the earlier KB position
    assert rank_by_score([5, 7, 2, 0], [0.5, 0.5, 0.9, 0.1]) == ranked  # the input order does not matter


def test_tensors_and_arrays_rank_as_lists():
    positions, scores = [3, 1, 2], [1.0, 2.0, 1.0]
    expected = [(1, 2.0), (2, 1.0), (3, 1.0)]
    assert rank_by_score(positions, torch.tensor(scores)) == expected
    assert rank_by_score(np.array(positions), np.array(scores, dtype=np.float32)) == expected
    ranked = rank_by_score(torch.tensor(positions), torch.tensor(scores))
    assert all(type(p) is int and type(s) is float for p, s in ranked)  # plain Python values (JSON-ready)
    assert rank_by_score([], []) == []


def test_rank_keys_uses_the_kb_order_of_the_keys():
    order = {"Q1": 0, "Q2": 1, "Q3": 2}
    assert rank_keys(["Q3", "Q1", "Q2"], [1.0, 1.0, 3.0], order) == [("Q2", 3.0), ("Q1", 1.0), ("Q3", 1.0)]
    with pytest.raises(KeyError):
        rank_keys(["Q9"], [1.0], order)  # a key outside the KB has no position


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 candidates but 2 scores"):
        rank_by_score([0, 1, 2], [0.1, 0.2])
