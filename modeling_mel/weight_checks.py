"""Weights that belong to another model: the checks that a model folder's checkpoint holds the weights of the model
class its ``config.json`` names (a ZEMEL ``config.json`` beside PFMEL weights would otherwise load with random layers).

:func:`check_model_weights` runs when the linking pipeline is built (unless ``allow_weight_mismatch=True``);
:func:`weight_mismatch_message` is the one error text, also used by ``mel link`` / ``index`` / ``calibrate`` on
transformers' load report (``cli_inference.load_model_and_processor``).

This file ships with saved models next to the pipeline (a relative import of ``pipeline_entity_linking.py``): it
imports only torch, safetensors (a transformers dependency) and the standard library.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable

import torch


def weight_mismatch_message(
    folder: str, model: Any, missing: Iterable[str], unexpected: Iterable[str], mismatched: Iterable[Any] = (),
    option: str = "allow_weight_mismatch=True",
) -> str | None:
    """The one-line error for a checkpoint whose weights do not fit its model class (missing weights would be left
    random, unexpected ones ignored), or ``None`` when the load report is clean."""
    missing, unexpected = sorted(map(str, missing)), sorted(map(str, unexpected))
    mismatched = [m[0] if isinstance(m, (tuple, list)) else str(m) for m in mismatched]
    if not (missing or unexpected or mismatched):
        return None

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} weights of the model are missing from the checkpoint and would be random "
                     f"({some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} checkpoint weights are not the model's ({some(unexpected)})")
    if mismatched:
        parts.append(f"{len(mismatched)} weights have another shape ({some(mismatched)})")
    return (
        f"model {folder!r}: its weights do not belong to its {type(model).__name__} config: {'; '.join(parts)}; "
        "config.json and the weights come from different models? Save the model again with save_pretrained, or "
        f"pass {option} to load it anyway"
    )


def _checkpoint_keys(folder: str) -> set[str] | None:
    """The weight names saved in a model folder (safetensors, sharded or not, or pytorch_model.bin), read without
    loading the weights; ``None`` when the folder holds no checkpoint this function reads."""
    single, index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as f:
            return set(f.keys())
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return set(json.load(f).get("weight_map", {}))
    binary = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(binary):
        return set(torch.load(binary, map_location="cpu", weights_only=True, mmap=True))
    return None


def check_model_weights(model: Any, option: str = "allow_weight_mismatch=True") -> None:
    """``ValueError`` (:func:`weight_mismatch_message`) when the model was loaded from a local folder whose weight
    names are not the model's own: every weight the model saves (``state_dict``: no non-persistent buffers) must be in
    the checkpoint, or one of its tied aliases, and every checkpoint weight must be the model's. Models that are not
    from a local folder are not checked, nor models built from a folder of another model type (a PFMEL or ZEMEL
    model initialised from a text backbone keeps the backbone's folder as its ``name_or_path``)."""
    folder = str(getattr(model, "name_or_path", "") or "")
    if not folder or not os.path.isdir(folder) or not hasattr(model, "state_dict"):
        return
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            saved_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    if saved_type != getattr(getattr(model, "config", None), "model_type", None):
        return
    saved = _checkpoint_keys(folder)
    if saved is None:
        return
    own = set(model.state_dict())
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    tied = {name: names for names in aliases.values() for name in names}

    def ignored(key: str, attribute: str) -> bool:
        return any(re.search(p, key) for p in getattr(model, attribute, None) or ())

    missing = [k for k in own if k not in saved and not any(a in saved for a in tied.get(k, ()))
               and not ignored(k, "_keys_to_ignore_on_load_missing") and not ignored(k, "_keys_to_ignore_on_save")]
    unexpected = [k for k in saved if k not in own and not ignored(k, "_keys_to_ignore_on_load_unexpected")]
    message = weight_mismatch_message(folder, model, missing, unexpected, option=option)
    if message is not None:
        raise ValueError(message)


__all__ = ["check_model_weights", "weight_mismatch_message"]
