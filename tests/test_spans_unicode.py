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
