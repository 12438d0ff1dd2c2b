"""mention_spans: locating a mention in its text (case, diacritics, particles, Unicode normal forms), with offsets into
the user's original string, also when case folding changes the string's length; the pipeline's checks of given spans."""

import pytest

from modeling_mel.mention_spans import align_mention, normalize_token, word_tokens
from modeling_mel.pipeline_entity_linking import MultimodalEntityLinkingPipeline


def test_tokens_are_compared_without_case_or_diacritics():
    assert normalize_token("Kératry") == "keratry" and normalize_token("Heß") == "hess"
    assert normalize_token("Łódź") == "lodz" and normalize_token("Æsir") == "aesir"
    assert word_tokens("Émile de-Kératry, 1870") == [("emile", 0, 5), ("de", 6, 8), ("keratry", 9, 16), ("1870", 18, 22)]


def test_align_mention_rules():
    assert align_mention("Alice and Ali", "ali") == (10, 13, "located")  # whole words preferred
    assert align_mention("so proud of WIGGINS", "wiggins", 0, 7) == (12, 19, "repaired")
    assert align_mention("Anno von Sangerhausen served", "Sangershausen")[:2] == (9, 21)  # one-letter slip
    assert align_mention("John Doe and Jane Smith", "Jane Doe") == (13, 17, "aligned")  # in order: half the letters
    assert align_mention("John Doe at home", "Xavier Doe") is None  # "doe" holds less than half of the letters
    assert align_mention("", "x") is None and align_mention("text", " ") is None


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


# ----------------------------------------------------------------------------------------------------------------------
# Mention alignment across Unicode normal forms
# ----------------------------------------------------------------------------------------------------------------------

PRECOMPOSED = "Visit \u00c9cole normale"  # É is one code point: "École" is text[6:11]
DECOMPOSED = "Visit E\u0301cole normale"  # É is E + U+0301: "École" is text[6:12]


@pytest.mark.parametrize("text, mention, expected", [
    (PRECOMPOSED, "E\u0301cole", (6, 11)),  # decomposed mention, precomposed text
    (DECOMPOSED, "\u00c9cole", (6, 12)),  # precomposed mention, decomposed text
    (PRECOMPOSED, "E\u0301cole normale", (6, 19)),
    (DECOMPOSED, "\u00c9COLE NORMALE", (6, 20)),
    (PRECOMPOSED, "ecole", (6, 11)),  # unaccented: aligned by tokens, as before
    (DECOMPOSED, "ecole", (6, 12)),
])
def test_mixed_normal_forms_align_with_offsets_into_the_original_text(text, mention, expected):
    from modeling_mel.corpus import resolve_offsets

    found = align_mention(text, mention)
    assert found is not None and found[:2] == expected
    assert resolve_offsets(text, mention, None, None)[:2] == expected
    # the pipeline links it with its span (not "without a span")
    checked = MultimodalEntityLinkingPipeline._check_input({"text": text, "mention": mention})
    assert (checked["mention_start"], checked["mention_end"]) == expected
    # the offsets, given, are accepted as the mention's ("ok")
    assert align_mention(text, mention, *expected) == (*expected, "ok")
    checked = MultimodalEntityLinkingPipeline._check_input(
        {"text": text, "mention": mention, "mention_start": expected[0], "mention_end": expected[1]})
    assert (checked["mention_start"], checked["mention_end"]) == expected


def test_offsets_cutting_a_decomposed_letter_are_repaired():
    # (6, 11) of the decomposed text is "E\u0301col": the mention is the whole cluster span
    assert align_mention(DECOMPOSED, "\u00c9cole", 6, 11) == (6, 12, "repaired")
    assert align_mention("I love \uff2e\uff21\uff33\uff21!", "NASA") == (7, 11, "located")  # full-width letters (NFKC)


# ----------------------------------------------------------------------------------------------------------------------
# Spans given to the pipeline
# ----------------------------------------------------------------------------------------------------------------------


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
