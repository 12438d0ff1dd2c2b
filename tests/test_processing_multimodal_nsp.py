"""The PFMEL processor (modeling_mel.processing_multimodal_nsp): the paper's templates (entity context, mention and
entity prompts), the input layout with image tokens, truncation, padding, save / load, and the model it configures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_mel import (
    BertForMultimodalNSP,
    MultimodalNSPConfig,
    MultimodalNSPProcessor,
    entity_context,
    entity_prompt,
    mention_prompt,
)


# -- templates -----------------------------------------------------------------------------------


def test_entity_context_full():
    profile = {"screen_name": "AndrewYNg", "location": "Palo Alto, CA, USA", "name": "Andrew Ng", "description": "Co-Founder of Coursera"}
    timeline = [{"tweet_id": "10", "text": "old"}, {"tweet_id": "30", "text": "newest"}, {"tweet_id": "20", "text": "middle"}, {"tweet_id": "5", "text": "oldest"}]
    assert entity_context(profile, timeline) == (
        "the username of @AndrewYNg who lives in Palo Alto, CA, USA is Andrew Ng and the description is "
        "Co-Founder of Coursera. some recent tweets of the user include: newest, middle and old."
    )


def test_entity_context_na_and_cuts():
    words = [f"w{i}" for i in range(50)]
    profile = {"userScreenName": "@jdoe", "userName": "", "userDescription": " ".join(words)}
    timeline = ["first " + " ".join(words), "second"]
    expected_desc = " ".join(words[:30])
    expected_t1 = " ".join((["first"] + words)[:35])
    assert entity_context(profile, timeline) == (
        f"the username of @jdoe who lives in NA is NA and the description is {expected_desc}. "
        f"some recent tweets of the user include: {expected_t1} and second."
    )
    assert entity_context({}, []) == (
        "the username of @NA who lives in NA is NA and the description is NA. "
        "some recent tweets of the user include: NA."
    )
    assert entity_context({"screen_name": "a"}, ["only"]).endswith("include: only.")


def test_prompts():
    assert mention_prompt("hand hearts taylor's version", "taylor") == "hand hearts taylor's version. taylor is"
    assert mention_prompt("hello world", "taylor") == "hello world. taylor is"  # the prompt needs no span
    assert entity_prompt("taylorswift13", "the username of ...") == "@taylorswift13. the username of ..."
    assert entity_prompt("@taylorswift13", "ctx") == "@taylorswift13. ctx"


@pytest.mark.parametrize(
    "text, mention, message",
    [("", "taylor", "tweet text is empty"), ("hello", " ", "mention is empty")],
)
def test_prompt_bad_input(text, mention, message):
    with pytest.raises(ValueError, match=message):
        mention_prompt(text, mention)


# -- processor -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    from modeling_mel.backbones import load_tokenizer

    return MultimodalNSPProcessor(load_tokenizer("minilm"), max_length=24, image_feature_dim=8)


def test_processor_layout(processor):
    tok = processor.tokenizer
    batch = processor(["a tweet about taylor"], ["@taylor. the singer"], images=[np.ones(8)], images_pair=[np.ones((2, 8))])
    ids = batch["input_ids"][0].tolist()
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]"
    assert tokens.count("[SEP]") == 2 and tokens.count("[IMG]") == 3
    first_sep = tokens.index("[SEP]")
    assert tokens[first_sep - 1] == "[IMG]" and tokens[-2] == "[IMG]"
    types = batch["token_type_ids"][0].tolist()
    assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1 :]) == {1}
    assert batch["image_features"].shape == (1, 3, 8)
    assert processor.image_placeholder_id == tok.convert_tokens_to_ids("[IMG]")


def test_truncation_keeps_image_tokens_and_seps(processor):
    long_a = " ".join(["alpha"] * 100)
    long_b = " ".join(["beta"] * 100)
    batch = processor([long_a, "short"], [long_b, long_b], images=[np.ones((2, 8)), None], images_pair=[np.ones(8), np.ones(8)])
    tok = processor.tokenizer
    for row, n_img in ((0, 3), (1, 1)):
        ids = [i for i in batch["input_ids"][row].tolist() if i != tok.pad_token_id]
        tokens = tok.convert_ids_to_tokens(ids)
        assert len(ids) == 24
        assert tokens.count("[IMG]") == n_img and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    row1 = tok.convert_ids_to_tokens(batch["input_ids"][1].tolist())
    assert row1[1] == "short"  # the longer side is cut first


def test_processor_dynamic_padding_and_collation(processor):
    feats = processor(["a", "a b c d e f"], ["x", "y"], padding=False, return_tensors=None)
    assert len(feats[0]["input_ids"]) < len(feats[1]["input_ids"])
    for f, label in zip(feats, (0, 1)):
        f["labels"] = label
    batch = processor.pad(feats)
    assert batch["input_ids"].shape[1] == len(feats[1]["input_ids"])
    assert batch["labels"].tolist() == [0, 1]
    assert batch["attention_mask"][0].sum() == len(feats[0]["input_ids"])


def test_processor_bad_input(processor):
    with pytest.raises(ValueError, match=r"image feature of shape \(1, 9\); expected \(8,\)"):
        processor(["a"], ["b"], images=[np.ones(9)])
    with pytest.raises(ValueError, match="neither text nor image"):
        processor([""], ["b"])


def test_processor_save_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = MultimodalNSPProcessor.from_pretrained(tmp_path)
    assert loaded.max_length == 24 and loaded.image_feature_dim == 8
    a = processor(["hello there"], ["@x. y"], images=[np.ones(8)])
    b = loaded(["hello there"], ["@x. y"], images=[np.ones(8)])
    assert torch.equal(a["input_ids"], b["input_ids"])


def test_processor_configures_model(processor):
    config = MultimodalNSPConfig(vocab_size=processor.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=37, max_position_embeddings=64,
                                 image_feature_dim=8)
    model = BertForMultimodalNSP(config).eval()
    processor.configure_model(model)
    batch = processor(["a tweet"], ["@x. ctx"], images=[np.ones(8)])
    assert model(**batch).logits.shape == (1, 2)


def test_pfmel_long_text_keeps_the_mention_in_view():
    """PFMEL's mention side "<text>. <mention> is" in a very long text: the cut keeps the prompt's tail, so two
    mentions of the same text give different inputs (cut from the right, both were the text's head only)."""
    from modeling_mel.backbones import load_tokenizer
    from modeling_mel.processing_multimodal_nsp import MultimodalNSPProcessor, mention_prompt

    processor = MultimodalNSPProcessor(load_tokenizer("minilm"), max_length=64)
    text = "the match went on for hours " * 4000 + "and Wiggins scored while Taylor sang"
    ids = {}
    for mention in ("Wiggins", "Taylor"):
        enc = processor([mention_prompt(text, mention)], ["an entity description"], max_length=64)
        ids[mention] = enc["input_ids"][0].tolist()
        first = processor.tokenizer.decode(ids[mention][: ids[mention].index(processor.tokenizer.sep_token_id)])
        assert len(ids[mention]) <= 64 and first.endswith(f". {mention.lower()} is"), first
    assert ids["Wiggins"] != ids["Taylor"]
