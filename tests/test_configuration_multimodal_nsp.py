"""MultimodalNSPConfig (modeling_mel.configuration_multimodal_nsp): a BertConfig plus the image slot and what training
records (retriever fusion, candidate cap, NSP head origin); round trip through save_pretrained / from_pretrained and
AutoConfig; the error of a bad image size."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, BertConfig

from modeling_mel.configuration_multimodal_nsp import DEFAULT_IMAGE_TOKEN, MultimodalNSPConfig
from modeling_mel.registry import register_all

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def test_defaults_are_the_papers_and_bert_arguments_apply():
    config = MultimodalNSPConfig(**TINY)
    assert isinstance(config, BertConfig) and config.model_type == "multimodal_nsp_bert"
    assert config.image_feature_dim == 2048 and config.image_token == DEFAULT_IMAGE_TOKEN == "[IMG]"
    assert config.image_placeholder_id is None  # text-only until a processor registers the image token
    assert config.retriever_score_weight == 0.0  # rank by the NSP model alone, as the paper
    assert (config.retriever_k, config.max_candidates, config.nsp_head_pretrained) == (None, None, None)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (32, 2, 99)


def test_round_trip_keeps_what_training_recorded(tmp_path):
    config = MultimodalNSPConfig(**TINY, image_feature_dim="16", image_placeholder_id=98, retriever_score_weight="0.5",
                                 retriever_k=20.0, nsp_head_pretrained=0, max_candidates="32")
    # values are normalised to their types (argparse and JSON give strings and floats)
    assert (config.image_feature_dim, config.retriever_score_weight, config.retriever_k) == (16, 0.5, 20)
    assert config.nsp_head_pretrained is False and config.max_candidates == 32
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "multimodal_nsp_bert" and saved["image_placeholder_id"] == 98
    loaded = MultimodalNSPConfig.from_pretrained(tmp_path)
    for key in ("image_feature_dim", "image_token", "image_placeholder_id", "retriever_score_weight", "retriever_k",
                "nsp_head_pretrained", "max_candidates", "hidden_size"):
        assert getattr(loaded, key) == getattr(config, key), key
    register_all()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MultimodalNSPConfig)


def test_model_card_facts_name_the_family():
    facts = MultimodalNSPConfig.model_card_facts
    assert facts["architecture"] == "BertForMultimodalNSP" and facts["dataset_id"] == "twitter_mel"


@pytest.mark.parametrize("dim", [0, -3])
def test_bad_image_feature_dim(dim):
    with pytest.raises(ValueError, match=f"image_feature_dim must be >= 1, got {dim}"):
        MultimodalNSPConfig(**TINY, image_feature_dim=dim)
