"""Loading a saved model folder (modeling_mel.model_files.load_pretrained): a sound folder loads as from_pretrained
does; a damaged one (no or truncated config.json, no, truncated or shard-missing weights, a config edited after saving)
is one ValueError naming the file and the fix instead of the loader's exception."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

from modeling_mel.model_files import describe_load_error, load_pretrained


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("bert") / "model"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20, max_position_embeddings=16)).save_pretrained(folder)
    return str(folder)


def _copy(saved: str, dest) -> str:
    import shutil

    return shutil.copytree(saved, dest)


def test_a_sound_folder_loads_like_from_pretrained(saved):
    model, info = load_pretrained(AutoModel, saved, output_loading_info=True)
    reference = AutoModel.from_pretrained(saved)
    assert isinstance(model, BertModel) and not info["missing_keys"]
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_config_problems(saved, tmp_path):
    folder = _copy(saved, tmp_path / "m")
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(ValueError, match=r"model folder .* has no config\.json; pass a folder written by "
                                         r"save_pretrained"):
        load_pretrained(AutoModel, folder)
    with open(os.path.join(saved, "config.json"), encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"config\.json in .* is not valid JSON \(\d+ bytes, truncated or corrupt"):
        load_pretrained(AutoModel, folder)


def test_weight_problems(saved, tmp_path):
    folder = _copy(saved, tmp_path / "m")
    weights = os.path.join(folder, "model.safetensors")
    with open(weights, "rb") as f:
        data = f.read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors in .* is truncated or corrupt \(\d+ bytes.*save the "
                                         r"model again with save_pretrained"):
        load_pretrained(AutoModel, folder)
    os.remove(weights)
    with pytest.raises(ValueError, match=r"has no weights \(model\.safetensors or pytorch_model\.bin\)"):
        load_pretrained(AutoModel, folder)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"weight_map": {"embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors"}}, f)
    with pytest.raises(ValueError, match=r"model-00001-of-00002\.safetensors is missing from the model folder"):
        load_pretrained(AutoModel, folder)


def test_a_config_edited_after_saving_names_the_weights_that_no_longer_fit(saved, tmp_path):
    folder = _copy(saved, tmp_path / "m")
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["intermediate_size"] = 24
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"config\.json in .* does not fit the saved weights \(.*intermediate\.dense\."
                                         r"weight: \[20, 16\] saved, \[24, 16\] by config\.json"):
        load_pretrained(AutoModel, folder)


def test_a_missing_folder_is_named():
    message = describe_load_error("/no/such/model", OSError("not found"))
    assert message == "model '/no/such/model' could not be loaded (OSError: not found)"
