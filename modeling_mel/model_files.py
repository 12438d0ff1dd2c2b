"""Loading a saved model folder with a one-line error naming the broken file and the fix (issue 29).

``AutoModel.from_pretrained`` on a damaged folder raises whatever its layers raise: an ``OSError`` for a truncated
``config.json``, a ``SafetensorError`` for a truncated ``model.safetensors``, an ``UnpicklingError`` for a
``pytorch_model.bin`` that holds more than tensors (refused by ``torch.load(weights_only=True)``: possibly
malicious), a ``RuntimeError`` for a ``config.json`` edited after saving (``poly_m``: the ``poly_codes`` weights no
longer fit). :func:`load_pretrained` turns each into a ``ValueError`` whose message names the file and what to do,
which ``mel`` prints as one line (exit code 2).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from typing import Any

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PT_WEIGHTS = "pytorch_model.bin"
PT_INDEX = "pytorch_model.bin.index.json"
_RESAVE = "copy it again from where the model was saved, or save the model again with save_pretrained"


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _config_problem(folder: str) -> str | None:
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        return f"model folder {folder!r} has no {CONFIG_NAME}; pass a folder written by save_pretrained"
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        return (f"{CONFIG_NAME} in {folder!r} is not valid JSON ({os.path.getsize(path)} bytes, truncated or corrupt: "
                f"{_one_line(err)}); {_RESAVE}")
    if not isinstance(config, dict):
        return f"{CONFIG_NAME} in {folder!r} is not a JSON object; {_RESAVE}"
    return None


def _safetensors_problem(folder: str, name: str) -> str | None:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return f"{name} is missing from the model folder {folder!r} ({SAFE_INDEX} lists it); {_RESAVE}"
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            f.keys()
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends
        size = os.path.getsize(path)
        return f"{name} in {folder!r} is truncated or corrupt ({size} bytes: {_one_line(err)}); {_RESAVE}"
    return None


def _weights_problem(folder: str, err: BaseException) -> str | None:
    """The problem with the weight files of ``folder``, or ``None`` when they look readable."""
    names = set(os.listdir(folder))
    if not names & {SAFE_WEIGHTS, SAFE_INDEX, PT_WEIGHTS, PT_INDEX}:
        return (f"model folder {folder!r} has no weights ({SAFE_WEIGHTS} or {PT_WEIGHTS}); {_RESAVE}")
    if SAFE_WEIGHTS in names:
        return _safetensors_problem(folder, SAFE_WEIGHTS)
    if SAFE_INDEX in names:
        try:
            with open(os.path.join(folder, SAFE_INDEX), encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as index_err:
            return f"{SAFE_INDEX} in {folder!r} is not a valid shard index ({_one_line(index_err)}); {_RESAVE}"
        for shard in shards:
            problem = _safetensors_problem(folder, shard)
            if problem:
                return problem
        return None
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text or "Weights only load failed" in text:
        return (
            f"{PT_WEIGHTS} in {folder!r} holds objects other than tensors, so it was not loaded (torch.load with "
            "weights_only=True refuses them: the file may run code when unpickled); do not load it: get the weights "
            f"as {SAFE_WEIGHTS} from a source you trust"
        )
    if isinstance(err, (EOFError, RuntimeError, OSError)) and PT_WEIGHTS in names and "size mismatch" not in text \
            and "ignore_mismatched_sizes" not in text:
        return f"{PT_WEIGHTS} in {folder!r} could not be read ({_one_line(err)}): truncated or corrupt? {_RESAVE}"
    return None


def _checkpoint_shapes(folder: str) -> dict[str, tuple[int, ...]]:
    """Weight name -> shape of a safetensors checkpoint, read from the headers only; ``{}`` when there is none."""
    from safetensors import safe_open

    files = [SAFE_WEIGHTS] if os.path.isfile(os.path.join(folder, SAFE_WEIGHTS)) else []
    if not files and os.path.isfile(os.path.join(folder, SAFE_INDEX)):
        with open(os.path.join(folder, SAFE_INDEX), encoding="utf-8") as f:
            files = sorted(set(json.load(f).get("weight_map", {}).values()))
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        with safe_open(os.path.join(folder, name), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _shape_problem(folder: str, loader: Any, kwargs: dict) -> str:
    """The one-line error of a ``config.json`` whose shapes do not fit the saved weights, naming the first weights."""
    detail = ""
    try:
        import torch
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(folder, trust_remote_code=kwargs.get("trust_remote_code", False))
        with torch.device("meta"):
            model = loader.from_config(config, trust_remote_code=kwargs.get("trust_remote_code", False))
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        saved = _checkpoint_shapes(folder)
        differ = [(k, saved[k], expected[k]) for k in sorted(saved) if k in expected and saved[k] != expected[k]]
        if differ:
            shown = "; ".join(f"{k}: {list(a)} saved, {list(b)} by config.json" for k, a, b in differ[:3])
            detail = f" ({shown}{'; ...' if len(differ) > 3 else ''})"
    except Exception as err:  # noqa: BLE001 - the diagnosis is best effort; the message stands without the detail
        logger.debug("could not compare the shapes of %s: %s", folder, err)
    return (
        f"{CONFIG_NAME} in {folder!r} does not fit the saved weights{detail}: the config was edited after the model "
        "was saved (e.g. poly_m); restore the saved config.json, or retrain the model with the new setting"
    )


def describe_load_error(folder: str, err: BaseException, loader: Any = None, kwargs: dict | None = None) -> str:
    """One line naming what is wrong with the saved model folder ``folder`` that ``from_pretrained`` failed on with
    ``err``, and the fix."""
    if not os.path.isdir(folder):
        return f"model {folder!r} could not be loaded ({type(err).__name__}: {_one_line(err)})"
    problem = _config_problem(folder) or _weights_problem(folder, err)
    if problem:
        return problem
    text = str(err)
    if "size mismatch" in text or "ignore_mismatched_sizes" in text or "mismatch" in text.lower():
        return _shape_problem(folder, loader, kwargs or {})
    return f"model folder {folder!r} could not be loaded ({type(err).__name__}: {_one_line(err)})"


def load_pretrained(loader: Any, folder: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(folder, **kwargs)`` (``AutoModel``, a model class), with a one-line ``ValueError``
    (:func:`describe_load_error`) instead of the loader's own exception when the folder is damaged."""
    try:
        return loader.from_pretrained(folder, **kwargs)
    except Exception as err:  # noqa: BLE001 - OSError, SafetensorError, UnpicklingError, RuntimeError, ...
        raise ValueError(describe_load_error(os.fspath(folder), err, loader, kwargs)) from err


__all__ = ["describe_load_error", "load_pretrained"]
