"""weight_checks: the checkpoint of a model folder must hold the weights of the class its config.json names (the
pipeline's ``allow_weight_mismatch`` check and the one error line of ``mel link`` / ``index`` / ``calibrate``)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

from modeling_mel import pipeline_entity_linking, weight_checks
from modeling_mel.weight_checks import _checkpoint_keys, check_model_weights, weight_mismatch_message


def tiny_bert() -> BertModel:
    config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12,
                        max_position_embeddings=16)
    return BertModel(config)


def test_the_pipeline_re_exports_the_checks():
    for name in ("check_model_weights", "weight_mismatch_message", "_checkpoint_keys"):
        assert getattr(pipeline_entity_linking, name) is getattr(weight_checks, name)


def test_message_is_none_for_a_clean_report():
    assert weight_mismatch_message("m", object(), [], [], []) is None


def test_message_counts_and_names_the_first_three_of_each_kind():
    missing = ["d.weight", "a.weight", "c.weight", "b.weight"]
    message = weight_mismatch_message("/models/x", tiny_bert(), missing, ["extra.bias"], [("w", (2,), (3,))],
                                      option="--allow_weight_mismatch")
    assert message == (
        "model '/models/x': its weights do not belong to its BertModel config: 4 weights of the model are missing "
        "from the checkpoint and would be random (a.weight, b.weight, c.weight, ...); 1 checkpoint weights are not "
        "the model's (extra.bias); 1 weights have another shape (w); config.json and the weights come from different "
        "models? Save the model again with save_pretrained, or pass --allow_weight_mismatch to load it anyway"
    )
    assert "\n" not in message


def test_checkpoint_keys_of_each_format(tmp_path):
    assert _checkpoint_keys(str(tmp_path)) is None  # no checkpoint
    single = tmp_path / "single"
    single.mkdir()
    save_file({"a.weight": torch.zeros(2), "b.bias": torch.ones(1)}, str(single / "model.safetensors"))
    assert _checkpoint_keys(str(single)) == {"a.weight", "b.bias"}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "model-00001.safetensors", "y": "model-00002.safetensors"}}))
    assert _checkpoint_keys(str(sharded)) == {"x", "y"}
    binary = tmp_path / "binary"
    binary.mkdir()
    torch.save({"p": torch.zeros(1), "q": torch.zeros(1)}, binary / "pytorch_model.bin")
    assert _checkpoint_keys(str(binary)) == {"p", "q"}


def test_a_saved_model_passes_and_foreign_weights_are_refused(tmp_path):
    from transformers import AutoModel

    tiny_bert().save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path)
    check_model_weights(model)  # its own weights: no error
    saved = _checkpoint_keys(str(tmp_path))
    own = set(model.state_dict())
    # the same config beside another model's weights: one of ours missing, one foreign weight
    kept = sorted(saved)[1:]
    tensors = {k: torch.zeros(1) for k in kept}
    tensors["classifier.weight"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as info:
        check_model_weights(model)
    dropped = sorted(saved)[0]
    assert dropped in own
    assert f"1 weights of the model are missing from the checkpoint and would be random ({dropped})" in str(info.value)
    assert "1 checkpoint weights are not the model's (classifier.weight)" in str(info.value)
    assert str(info.value).endswith("pass allow_weight_mismatch=True to load it anyway")


def test_models_not_from_a_folder_of_their_type_are_not_checked(tmp_path):
    model = tiny_bert()
    check_model_weights(model)  # no folder at all
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "zemel"}))
    save_file({"something.else": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    model.name_or_path = str(tmp_path)  # a folder of another model type (a backbone a model was built from)
    check_model_weights(model)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="checkpoint weights are not the model's"):
        check_model_weights(model)
