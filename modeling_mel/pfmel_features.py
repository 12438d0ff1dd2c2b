"""PFMEL's image features: the :class:`FeatureTable` that holds every image vector of a corpus once (encoded
examples carry its row numbers, the collator gathers the normalised vectors per batch) and the precomputed feature
maps of ``--image_features precomputed`` (:func:`save_precomputed_features`, :func:`load_precomputed_features`)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .processing_multimodal_nsp import normalize_image_features


class FeatureTable:
    """Image feature vectors by key (``mention:<id>``, ``entity:<id>``); row 0 is the zero vector (no image).

    Rows are stored raw. :meth:`gather` (what the model receives) applies the feature normalisation: subtract
    ``center`` when set, then divide by the L2 norm when ``l2``; a zero row (no image) stays zero.
    """

    def __init__(self, dim: int = 2048, l2: bool = False, center: np.ndarray | None = None) -> None:
        self.dim = int(dim)
        self.l2 = bool(l2)
        self.center = None if center is None else np.asarray(center, np.float32).reshape(self.dim)
        self.index: dict[str, int] = {}
        self._rows: list[np.ndarray] = [np.zeros(self.dim, np.float32)]
        self._array: np.ndarray | None = None

    def add(self, key: str, vector: np.ndarray) -> int:
        """Store ``vector`` under ``key`` (an existing key keeps its row); returns its row."""
        if key in self.index:
            return self.index[key]
        vector = np.asarray(vector, np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise ValueError(f"feature of {key!r} has size {vector.shape[0]}; this table holds {self.dim}-d features")
        self.index[key] = len(self._rows)
        self._rows.append(vector)
        self._array = None
        return self.index[key]

    def row(self, key: str) -> int:
        """Row of ``key``; 0 (zeros) when absent."""
        return self.index.get(key, 0)

    @property
    def array(self) -> np.ndarray:
        """All raw rows as one ``(n_rows, dim)`` float32 array."""
        if self._array is None or len(self._array) != len(self._rows):
            self._array = np.stack(self._rows).astype(np.float32)
        return self._array

    def nonzero_mean(self) -> np.ndarray:
        """Mean of the non-zero rows (the centre used by ``feature_norm="center_l2"``)."""
        arr = self.array
        ok = np.abs(arr).sum(1) > 0
        return arr[ok].mean(0) if ok.any() else np.zeros(self.dim, np.float32)

    def normalized(self, rows: Sequence[int]) -> np.ndarray:
        """Rows as the model receives them: ``(len(rows), dim)``."""
        return normalize_image_features(self.array[list(rows)], self.center, self.l2)

    def gather(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Normalised features of per-example row lists, zero padded: ``(B, n_max, dim)``."""
        n = max((len(r) for r in rows), default=0)
        out = np.zeros((len(rows), n, self.dim), np.float32)
        for i, r in enumerate(rows):
            if len(r):
                out[i, : len(r)] = self.normalized(r)
        return torch.from_numpy(out)

    def __len__(self) -> int:
        return len(self._rows)


def save_precomputed_features(path: str | os.PathLike, mentions: Mapping[str, Any], entities: Mapping[str, Any]) -> None:
    """Write a precomputed feature map for ``--image_features precomputed --features_path path``.

    Format: a ``.safetensors`` or ``.npz`` file of float32 vectors (all the same size, 2048 for ResNet-50)
    named ``mention:<mention id>`` (the tweet image of a mention row) and ``entity:<entity_id>`` (the entity
    image, i.e. the mean over its timeline images). Missing keys read as zeros (no image).
    """
    tensors = {f"mention:{k}": np.asarray(v, np.float32).reshape(-1) for k, v in mentions.items()}
    tensors.update({f"entity:{k}": np.asarray(v, np.float32).reshape(-1) for k, v in entities.items()})
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(tensors, path)
    elif path.endswith(".npz"):
        np.savez(path, **tensors)
    else:
        raise ValueError(f"features path {path!r} must end with .safetensors or .npz")


def load_precomputed_features(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a feature map written by :func:`save_precomputed_features` (``.safetensors`` or ``.npz``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"features file {path!r} does not exist; write one with save_precomputed_features()")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    raise ValueError(f"features path {path!r} must end with .safetensors or .npz")


__all__ = ["FeatureTable", "save_precomputed_features", "load_precomputed_features"]
