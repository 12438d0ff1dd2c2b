"""ZemelConfig (modeling_mel.configuration_zemel): defaults derived from the text stream, the architecture hash that
entity indexes and candidate caches are checked against, the round trip through save_pretrained / from_pretrained,
and the one-line errors of bad settings."""

from __future__ import annotations

import json

import pytest

from modeling_mel.configuration_zemel import DEFAULT_TEXT_CONFIG, ZemelConfig, config_hash
from test_modeling_zemel import TEXT, tiny_config  # the tiny sizes the model tests use


def test_defaults_follow_the_text_stream():
    default = ZemelConfig()
    assert default.hidden_size == DEFAULT_TEXT_CONFIG["hidden_size"] == 384  # the embedded MiniLM's size
    assert default.co_attention_layers == [4, 5] and default.v_co_attention_layers == [0, 1]  # the last two of each
    one_layer = tiny_config(text_config=dict(TEXT, num_hidden_layers=1), v_num_hidden_layers=0)
    assert one_layer.co_attention_layers == [0] and one_layer.v_co_attention_layers == [-1]
    assert tiny_config(text_config=dict(TEXT, layer_norm_eps=1e-6)).layer_norm_eps == 1e-6
    assert default.special_token_init == {"[M]": '"', "[/M]": '"', "[ENT]": "."}


def test_config_hash_and_roundtrip(tmp_path):
    c = tiny_config()
    assert config_hash(c) == c.config_hash() == tiny_config(v_hidden_dropout_prob=0.3).config_hash()
    assert c.config_hash() != tiny_config(poly_m=5).config_hash()
    c.save_pretrained(tmp_path)
    c2 = ZemelConfig.from_pretrained(tmp_path)
    assert c2.config_hash() == c.config_hash() and c2.text_config.hidden_size == 32
    assert c2.co_attention_layers == [0, 1] and c2.layer_norm_eps == c.text_config.layer_norm_eps


def test_hash_ignores_token_ids_and_dropout_but_not_the_architecture(tmp_path):
    base = tiny_config().config_hash()
    assert tiny_config(entity_token_id=7, logit_scale=20.0, modality_gate_init=1.0).config_hash() == base
    for changed in (dict(scoring="bi"), dict(pooling="mean"), dict(normalize_embeddings=True), dict(fusion="sum"),
                    dict(text_config=dict(TEXT, hidden_size=64))):
        assert tiny_config(**changed).config_hash() != base, changed
    # the saved file holds the text stream as a nested dict, and a hand edit of it changes the hash on reload
    tiny_config().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "zemel" and saved["text_config"]["hidden_size"] == 32
    saved["poly_m"] = 8
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert ZemelConfig.from_pretrained(tmp_path).config_hash() == tiny_config(poly_m=8).config_hash() != base


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(poly_m=0), "poly_m must be >= 1, got 0"),
        (dict(scoring="cross"), r"unknown scoring 'cross'; expected one of \('poly', 'bi'\)"),
        (dict(fusion="mean"), "unknown fusion 'mean'"),
        (dict(pooling="max"), "unknown pooling 'max'"),
        (dict(logit_scale=0), "logit_scale must be > 0"),
        (dict(v_hidden_size=30), r"v_hidden_size=30 is not a multiple of its number of attention heads \(4\)"),
        (dict(max_regions=0), "max_regions must be >= 1"),
        (dict(loss_type="triplet"), "unknown loss_type 'triplet'"),
        (dict(co_attention_layers=[1, 0]), "must be strictly increasing text-layer indices in"),
        (dict(co_attention_layers=[0, 1], v_co_attention_layers=[1]), "must have one entry per co-attention block"),
        (dict(text_config="bert"), "text_config must be a dict or a BertConfig, got str"),
        (dict(bi_num_attention_heads=0), r"bi_hidden_size=32 is not a multiple of its number of attention heads \(0\)"),
        (dict(v_feature_dim=0), "v_feature_dim must be >= 1, got 0"),
        (dict(v_spatial_dim=0), "v_spatial_dim must be >= 1, got 0"),
        (dict(v_num_hidden_layers=-1), "v_num_hidden_layers must be >= 0, got -1"),
        (dict(co_attention_layers=[0, 2]),
         r"co_attention_layers \[0, 2\] must be strictly increasing text-layer indices in \[0, 2\)"),
        (dict(v_co_attention_layers=[1, 0]), r"v_co_attention_layers \[1, 0\] must be increasing"),
        (dict(v_co_attention_layers=[0, 0]), r"v_co_attention_layers \[0, 0\] must be increasing"),
        (dict(v_co_attention_layers=[0, 2]), r"must be visual-layer indices in \[-1, 2\)"),
    ],
)
def test_bad_settings_name_the_setting(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_the_first_bad_setting_is_named_and_layer_schedules_are_normalised():
    # the checks run in the documented order: the plain settings, then the co-attention schedule, then the loss
    with pytest.raises(ValueError, match="poly_m must be >= 1"):
        tiny_config(poly_m=0, co_attention_layers=[5], loss_type="triplet")
    with pytest.raises(ValueError, match="co_attention_layers"):
        tiny_config(co_attention_layers=[5], loss_type="triplet")
    # indices given as strings or tuples are stored as lists of ints; -1 may repeat (blocks before any visual layer)
    c = tiny_config(co_attention_layers=("0", "1"), v_co_attention_layers=(-1, -1), poly_m="3")
    assert c.co_attention_layers == [0, 1] and c.v_co_attention_layers == [-1, -1] and c.poly_m == 3
    assert tiny_config(co_attention_layers=[]).v_co_attention_layers == []
    three = tiny_config(text_config=dict(TEXT, num_hidden_layers=3), co_attention_layers=[0, 1, 2])
    assert three.v_co_attention_layers == [-1, 0, 1]  # the last visual layers, padded with -1


def test_every_argument_is_documented_in_the_class_docstring():
    import inspect

    names = [n for n in inspect.signature(ZemelConfig.__init__).parameters if n not in ("self", "kwargs")]
    assert names[:3] == ["text_config", "v_feature_dim", "v_spatial_dim"] and len(names) == 32
    undocumented = [n for n in names if not n.endswith("_token_id") and f"{n} (`" not in ZemelConfig.__doc__]
    assert undocumented == []
