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
