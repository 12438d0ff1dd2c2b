"""ZemelProcessor: templates, centred mention window, regions, save/load."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from modeling_mel.processing_zemel import ZemelProcessor
from modeling_mel.regions import make_regions


@pytest.fixture(scope="module")
def proc():
    from modeling_mel.backbones import load_tokenizer

    return ZemelProcessor(load_tokenizer("minilm"), feature_dim=8, max_regions=4)


def tokens(proc, ids):
    return proc.tokenizer.convert_ids_to_tokens([i for i in ids.tolist() if i != proc.tokenizer.pad_token_id])


def test_special_tokens_registered(proc):
    assert len({proc.mention_start_id, proc.mention_end_id, proc.entity_id}) == 3
    assert proc.tokenizer.convert_ids_to_tokens(proc.entity_id) == "[ENT]"
    # special tokens are not split, and typed text never produces them by accident
    assert proc.tokenizer.tokenize("a [M] b") == ["a", "[M]", "b"]


def test_context_template_and_centred_window(proc):
    text = "one two three four five six seven eight paris nine ten eleven twelve thirteen"
    enc = proc.encode_contexts([text], ["paris"], max_length=11)
    # 11 = [CLS] [M] paris [/M] [SEP] + 6 context tokens split evenly: 3 left, 3 right
    assert tokens(proc, enc["input_ids"][0]) == [
        "[CLS]", "six", "seven", "eight", "[M]", "paris", "[/M]", "nine", "ten", "eleven", "[SEP]"
    ]
    odd = proc.encode_contexts([text], ["paris"], max_length=10)  # 5 context tokens: 2 left, 3 right
    assert tokens(proc, odd["input_ids"][0]) == ["[CLS]", "seven", "eight", "[M]", "paris", "[/M]", "nine", "ten", "eleven", "[SEP]"]


def test_window_gives_unused_room_to_the_other_side(proc):
    enc = proc.encode_contexts(["a b c d e f g h paris"], ["paris"], max_length=10)
    assert tokens(proc, enc["input_ids"][0]) == ["[CLS]", "d", "e", "f", "g", "h", "[M]", "paris", "[/M]", "[SEP]"]


def test_mention_spans_and_errors(proc):
    text = "the city of paris and paris hilton"
    by_span = proc.encode_contexts([text], [(22, 27)])
    toks = tokens(proc, by_span["input_ids"][0])
    assert toks[toks.index("[M]") - 1] == "and"
    by_dict = proc.encode_contexts([text], [{"mention": "paris", "mention_start": 22}])
    assert torch.equal(by_dict["input_ids"], by_span["input_ids"])
    unaligned = proc.encode_contexts([text], ["london"])  # aligns nowhere: marked first, before the whole text
    assert tokens(proc, unaligned["input_ids"][0])[:4] == ["[CLS]", "[M]", "london", "[/M]"]
    with pytest.raises(ValueError, match="'hilton'"):
        proc.encode_contexts([text], [{"mention": "hilton", "mention_start": 0}])


def test_candidate_template(proc):
    enc = proc.encode_candidates(["New York City"], ["the largest city in the united states"], max_length=9)
    toks = tokens(proc, enc["input_ids"][0])
    assert toks == ["[CLS]", "new", "york", "city", "[ENT]", "the", "largest", "city", "[SEP]"]
    assert enc["attention_mask"].shape == enc["token_type_ids"].shape == (1, 9)


def test_candidate_images_are_whole_image_regions(proc):
    feats = [np.ones((2, 8)), None, np.ones((6, 8))]
    enc = proc.encode_candidates(["a", "b", "c"], None, feats, prefix="candidate_")
    assert enc["candidate_visual_features"].shape == (3, 4, 8)
    assert enc["candidate_visual_attention_mask"].tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    assert enc["candidate_visual_spatial"][0, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_context_regions_whole_image_first(proc):
    regions = make_regions(np.full(8, 2.0), np.ones((2, 8)), [[0, 0, 10, 20], [10, 10, 40, 20]], (40, 20))
    assert regions["features"][0, 0] == 2.0
    torch.testing.assert_close(
        regions["spatial"],
        torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0.25, 1, 0.25], [0.25, 0.5, 1, 1, 0.375]], dtype=torch.float32),
    )
    enc = proc.encode_contexts(["x paris"], ["paris"], [regions])
    assert enc["visual_attention_mask"].tolist() == [[1, 1, 1, 0]]
    assert enc["visual_spatial"].shape == (1, 4, 5)


def test_save_and_auto_processor(tmp_path, proc):
    from transformers import AutoProcessor

    proc.save_pretrained(tmp_path)
    # the processor's code ships with the files it imports (alignment and regions)
    assert {"processing_zemel.py", "mention_spans.py", "regions.py", "configuration_zemel.py"} <= set(os.listdir(tmp_path))
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "ZemelProcessor"
    assert (loaded.max_regions, loaded.feature_dim, loaded.entity_id) == (4, 8, proc.entity_id)
    a = proc.encode_contexts(["a paris b"], ["paris"])
    b = loaded.encode_contexts(["a paris b"], ["paris"])
    assert torch.equal(a["input_ids"], b["input_ids"])
