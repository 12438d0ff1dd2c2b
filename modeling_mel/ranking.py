"""The one tie rule of every linker of the package: candidates sorted by score (descending), ties by KB position.

Both linkers (:mod:`modeling_mel.linking_dense`, :mod:`modeling_mel.linking_cross`) rank with it, so the pipeline,
``mel link``, the evaluation scripts and hard-negative mining order equal scores the same way.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def rank_by_score(positions: Sequence[int], scores: Iterable[float]) -> list[tuple[int, float]]:
    """``[(position, score), ...]`` sorted by score (descending), ties by KB position (ascending).

    ``scores`` may be a list or a 1-d tensor/array of the same length as ``positions``."""
    values = scores.tolist() if hasattr(scores, "tolist") else list(scores)
    if len(values) != len(positions):
        raise ValueError(f"{len(positions)} candidates but {len(values)} scores")
    return sorted(((int(p), float(s)) for p, s in zip(positions, values)), key=lambda ps: (-ps[1], ps[0]))


def rank_keys(keys: Sequence[Any], scores: Iterable[float], order: dict[Any, int]) -> list[tuple[Any, float]]:
    """:func:`rank_by_score` for candidates named by key (e.g. entity ids): ``order[key]`` is the KB position."""
    ranked = rank_by_score([order[k] for k in keys], scores)
    by_position = {order[k]: k for k in keys}
    return [(by_position[p], s) for p, s in ranked]


__all__ = ["rank_by_score", "rank_keys"]
