"""pipeline_inputs: the checks of what a caller gives the linking pipeline (input dicts, call parameters), before any
model work; the pipeline, ``mel link``, ``mel calibrate`` and the HTTP service run the same code."""

from __future__ import annotations

import math

import pytest

from modeling_mel.pipeline_entity_linking import MultimodalEntityLinkingPipeline
from modeling_mel.pipeline_inputs import CANDIDATE_MODES, call_parameters, check_linking_input


def test_the_pipeline_checks_with_these_functions():
    assert MultimodalEntityLinkingPipeline._check_input is check_linking_input
    pipe = object.__new__(MultimodalEntityLinkingPipeline)  # no model needed: the checks are stateless
    assert pipe._check_input({"text": "NASA", "mention": "NASA"}) == check_linking_input({"text": "NASA", "mention": "NASA"})
    assert pipe._sanitize_parameters(top_k=2, candidates="rule") == call_parameters(top_k=2, candidates="rule")


def test_a_mention_is_located_in_the_text():
    out = check_linking_input({"text": "launch day at nasa", "mention": "NASA", "image": "a.png"})
    # located case-insensitively: the mention becomes the text's spelling
    assert out == {"text": "launch day at nasa", "mention": "nasa", "mention_start": 14, "mention_end": 18,
                   "image": "a.png"}
    aligned = check_linking_input({"text": "Hermann von Beckerath.", "mention": "Hermann Beckerath"})
    assert (aligned["mention"], aligned["mention_start"], aligned["mention_end"]) == ("Hermann Beckerath", 0, 21)
    nowhere = check_linking_input({"text": "hello world", "mention": "obama"})
    assert (nowhere["mention"], nowhere["mention_start"], nowhere["mention_end"]) == ("obama", None, None)


def test_offsets_give_the_mention_and_boxes_become_floats():
    out = check_linking_input({"text": "launch day at NASA", "mention_start": 14.0, "mention_end": 18,
                               "boxes": [[0, 1, 2, 3]]})
    assert (out["mention"], out["mention_start"], out["mention_end"]) == ("NASA", 14, 18)
    assert out["boxes"] == [[0.0, 1.0, 2.0, 3.0]] and out["image"] is None
    # a start with a mention: the end follows from the mention's length
    assert check_linking_input({"text": "at NASA", "mention": "NASA", "mention_start": 3})["mention_end"] == 7


@pytest.mark.parametrize("item, position, message", [
    ("just text", None, r"input is a string \('just text'\); every input must be a dict"),
    (["text", "NASA"], 2, "input 2 is a list; expected a dict with 'text' and 'mention'"),
    ({"text": "  ", "mention": "x"}, None, "input: 'text' must be a non-empty string, got '  '"),
    ({"text": "NASA"}, 0, "input 0: give 'mention' \\(a string\\) or 'mention_start'/'mention_end', got None"),
    ({"text": "NASA", "mention_start": 2, "mention_end": 9}, None, r"mention span \(2, 9\) is not inside the text"),
    ({"text": "NASA", "mention_start": "x"}, None, "mention_start/mention_end must be integers, got 'x'/None"),
    ({"text": "at NASA today", "mention": "NASA", "mention_start": 0, "mention_end": 2}, None,
     r"mention 'NASA' is not at \(0, 2\) of the text 'at NASA today' \(found 'at'\)"),
])
def test_bad_inputs_are_named(item, position, message):
    with pytest.raises(ValueError, match=message):
        check_linking_input(item, position)


def test_call_parameters_are_split_by_step():
    assert call_parameters() == ({}, {}, {})
    pre, fwd, post = call_parameters(top_k=3, candidates="dense", num_candidates=7, pair_batch_size=2, max_length=32,
                                     retriever_k=4, nil_threshold=1)
    assert pre == {}
    assert fwd == {"top_k": 3, "candidates": "dense", "num_candidates": 7, "pair_batch_size": 2, "max_length": 32,
                   "retriever_k": 4}
    assert post == {"top_k": 3, "nil_threshold": 1.0} and isinstance(post["nil_threshold"], float)
    assert call_parameters(nil_threshold=None) == ({}, {}, {"nil_threshold": None})  # None: NIL off
    assert set(CANDIDATE_MODES) == {"auto", "rule", "bm25", "dense", "all"}


@pytest.mark.parametrize("params, message", [
    ({"top_k": 0}, "top_k must be >= 1, got 0"),
    ({"top_k": True}, "top_k must be an integer >= 1, got True"),
    ({"candidates": "faiss"}, "unknown candidates 'faiss'; expected one of"),
    ({"num_candidates": 2.5}, "num_candidates must be an integer >= 1, got 2.5"),
    ({"pair_batch_size": 0}, "pair_batch_size must be >= 1, got 0"),
    ({"retriever_k": 0}, "retriever_k must be an integer >= 1, got 0"),
    ({"nil_threshold": "high"}, "nil_threshold must be a number or None"),
    ({"nil_threshold": math.nan}, "nil_threshold is NaN"),
    ({"kb": "kb.jsonl"}, r"\['kb'\] can only be set when the pipeline is built, not per call"),
    ({"topk": 3}, r"unknown pipeline parameter\(s\) \['topk'\]; known: top_k"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        call_parameters(**params)
