"""Text backbone names (modeling_mel.backbones): the embedded MiniLM, aliases, local folders and hub ids resolve;
anything else is refused with a ValueError naming the value and the accepted forms."""

from __future__ import annotations

import os

import pytest

from modeling_mel.backbones import BACKBONE_ALIASES, load_backbone_config, load_tokenizer, resolve_backbone


def test_default_and_minilm_are_the_embedded_checkpoint():
    path = resolve_backbone("minilm")
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert resolve_backbone(None) == resolve_backbone("") == resolve_backbone("All-MiniLM-L6-v2") == path
    config = load_backbone_config()
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("bert", 384, 6)
    assert load_tokenizer().tokenize("Noel Harrison") == ["noel", "harrison"]


def test_aliases_hub_ids_and_local_folders(tmp_path):
    assert resolve_backbone("BERT-base") == "google-bert/bert-base-uncased"
    assert resolve_backbone("bert-large-uncased") == BACKBONE_ALIASES["bert-large-uncased"]
    assert resolve_backbone("someorg/some-bert") == "someorg/some-bert"  # a hub id is passed on as is
    (tmp_path / "config.json").write_text("{}")
    assert resolve_backbone(str(tmp_path)) == str(tmp_path)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'bertt'"):
        resolve_backbone("bertt")
    with pytest.raises(ValueError, match="not an existing directory"):
        resolve_backbone("./no/such/dir")
    assert resolve_backbone("bert-base-uncased") == "google-bert/bert-base-uncased"


def test_folder_without_config_and_unloadable_hub_id(tmp_path):
    with pytest.raises(ValueError, match=r"has no config\.json; expected a saved BERT checkpoint"):
        resolve_backbone(str(tmp_path))
    # offline (tests run with HF_HUB_OFFLINE=1): the loader's OSError becomes one ValueError naming the fix
    with pytest.raises(ValueError, match=r"(?s)could not load backbone 'nobody/no-such-bert'.*Offline, use 'minilm'"):
        load_backbone_config("nobody/no-such-bert")
