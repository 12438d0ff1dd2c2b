"""PFMEL's premise is BERT's pre-trained next-sentence-prediction head (issue 30 point 1): a backbone that has one
keeps it, one that has none is said to lack it (a warning at training and evaluation, ``nsp_head_pretrained`` in the
config, the model card, the demo's table)."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from modeling_mel.backbones import load_tokenizer
from modeling_mel.hub import render_model_card
from modeling_mel.pfmel_training import PFMELModelArguments, load_model_and_processor


def _tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=load_tokenizer("minilm").vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=37)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, str]:
    """Two tiny BERT checkpoints with the MiniLM tokenizer: with the pre-training heads (NSP included), without."""
    from transformers import BertForPreTraining, BertModel

    out = {}
    torch.manual_seed(0)
    for name, cls in (("with_head", BertForPreTraining), ("without_head", BertModel)):
        path = str(tmp_path_factory.mktemp(name))
        cls(_tiny_bert_config()).save_pretrained(path)
        load_tokenizer("minilm").save_pretrained(path)
        out[name] = path
    return out


def test_a_pretrained_nsp_head_is_kept_and_recorded(backbones, caplog):
    from safetensors.torch import load_file

    with caplog.at_level(logging.WARNING, logger="modeling_mel.pfmel_training"):
        model, _ = load_model_and_processor(PFMELModelArguments(backbone=backbones["with_head"], max_length=64), 16)
    assert model.config.nsp_head_pretrained is True
    saved = load_file(os.path.join(backbones["with_head"], "model.safetensors"))
    torch.testing.assert_close(model.cls.seq_relationship.weight, saved["cls.seq_relationship.weight"])
    assert "no pre-trained next-sentence-prediction head" not in caplog.text


def test_a_backbone_without_nsp_head_is_said_to_lack_it(backbones, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="modeling_mel.pfmel_training"):
        model, processor = load_model_and_processor(
            PFMELModelArguments(backbone=backbones["without_head"], max_length=64), 16)
    assert model.config.nsp_head_pretrained is False
    assert "no pre-trained next-sentence-prediction head" in caplog.text and backbones["without_head"] in caplog.text
    # saved and reloaded (fine-tuning / evaluation start from it): the fact travels, and is said again
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeling_mel.pfmel_training"):
        again, _ = load_model_and_processor(PFMELModelArguments(init_from=str(tmp_path / "m"), max_length=64), 16)
    assert again.config.nsp_head_pretrained is False
    assert "no pre-trained next-sentence-prediction head" in caplog.text
    card = open(render_model_card(tmp_path / "m"), encoding="utf-8").read()
    assert "had no pre-trained next-sentence-prediction head" in card


def test_the_card_of_a_model_with_the_pretrained_head_says_so(backbones, tmp_path):
    model, processor = load_model_and_processor(PFMELModelArguments(backbone=backbones["with_head"], max_length=64), 16)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    card = open(render_model_card(tmp_path / "m"), encoding="utf-8").read()
    assert "started from the backbone's pre-trained next-sentence-prediction head" in card
