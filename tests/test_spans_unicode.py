"""Spans are computed on the user's original string, also when case folding changes the string's length."""

import pytest

from modeling_mel.pipeline_entity_linking import MultimodalEntityLinkingPipeline
from modeling_mel.processing_zemel import align_mention


@pytest.mark.parametrize(
    "text, mention, expected",
    [
        ("İİİİ Taylor sings", "taylor", "Taylor"),  # "İ".lower() is two characters: a lower-cased copy shifts offsets
        ("ẞtraße Straße und Taylor", "TAYLOR", "Taylor"),
        ("Ǆemal Bijedić spoke", "bijedic", "Bijedić"),  # diacritics: word alignment on the original
    ],
)
def test_span_indexes_the_original_text(text, mention, expected):
    start, end, _ = align_mention(text, mention)
    assert text[start:end] == expected
    example = MultimodalEntityLinkingPipeline._check_input({"text": text, "mention": mention})
    assert text[example["mention_start"] : example["mention_end"]] == expected


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


def _pipe():
    from transformers import pipeline

    from inference_fixtures import register_all, tiny_nsp

    register_all()
    model, processor = tiny_nsp()
    kb = [{"entity_id": "nasa", "name": "NASA"}, {"entity_id": "esa", "name": "European Space Agency"}]
    return pipeline("multimodal-entity-linking", model=model, processor=processor, kb=kb, use_images=False)


@pytest.mark.parametrize(
    "item, call, message",
    [
        ({"text": "launch at NASA", "mention_start": 0.9, "mention_end": 6}, {}, "must be integers"),
        ({"text": "launch at NASA", "mention_start": True, "mention_end": 6}, {}, "must be integers"),
        ({"text": "launch at NASA", "mention": "NASA"}, {"top_k": 2.5}, "top_k must be an integer"),
        ({"text": "launch at NASA", "mention": "NASA"}, {"num_candidates": True}, "num_candidates must be an integer"),
    ],
)
def test_pipeline_refuses_non_integer_spans_and_counts(item, call, message):
    with pytest.raises(ValueError, match=message):
        _pipe()(item, **call)


def test_pipeline_accepts_whole_float_spans_and_refuses_a_nameless_entity():
    out = _pipe()({"text": "launch at NASA", "mention_start": 10.0, "mention_end": 14.0}, top_k=1)
    assert out[0]["entity_id"] == "nasa"
    from modeling_mel.pipeline_entity_linking import normalize_entity

    assert normalize_entity({"entity_id": "u1", "name": "", "screen_name": "nasa"}, 0)["name"] == "nasa"
    with pytest.raises(ValueError, match="KB row 3 .*'q7'.* has no name"):
        normalize_entity({"entity_id": "q7", "name": " "}, 3)
