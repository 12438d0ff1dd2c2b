"""ZEMEL's visual inputs of one image: the whole image first (spatial ``[0, 0, 1, 1, 1]``), then its regions (box
crops with their 5-d spatial vector ``(x1/W, y1/H, x2/W, y2/H, area/(W*H))``, or the encoder's patch tokens on a
square grid), as ``{"features": (R, D), "spatial": (R, 5)}``.

:func:`box_spatial` is the one definition of the spatial vector; :func:`make_regions` / :func:`patch_regions` the
one region builder (the processor, the pipeline, the evaluation and ``image_features`` use them).

This file ships with saved ZEMEL models (``processing_zemel.py`` imports it): it imports only torch and the standard
library (PIL inside :func:`regions_from_image`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

WHOLE_IMAGE_SPATIAL = (0.0, 0.0, 1.0, 1.0, 1.0)


def box_spatial(boxes: Sequence[Sequence[float]], width: float, height: float) -> list[list[float]]:
    """5-d spatial vectors of pixel boxes ``[x1, y1, x2, y2]`` in a ``width`` x ``height`` image.

    Raises ValueError naming the box for a box outside the image or with ``x2 <= x1`` / ``y2 <= y1``.
    The one definition of the spatial vector (``image_features.spatial_features``, the pipeline and the evaluation
    call it).
    """
    width, height = float(width), float(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    out = []
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"box {list(box)!r} must have 4 numbers [x1, y1, x2, y2]")
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"box {list(box)!r} is empty: expected [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ValueError(f"box {list(box)!r} lies outside the image of size {width:g}x{height:g}; clip it to the image")
        out.append([x1 / width, y1 / height, x2 / width, y2 / height, (x2 - x1) * (y2 - y1) / (width * height)])
    return out



def _as_2d(features: Any, where: str) -> torch.Tensor:
    t = torch.as_tensor(getattr(features, "numpy", lambda: features)() if isinstance(features, torch.Tensor) else features, dtype=torch.float32)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        raise ValueError(f"{where}: features of shape {tuple(t.shape)}; expected (n, feature_dim)")
    return t


def make_regions(
    image_feature: Any,
    box_features: Any = None,
    boxes: Sequence[Sequence[float]] | None = None,
    image_size: tuple[float, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Visual inputs of one image: the whole image first, then its boxes.

    `image_feature` `(D,)`; `box_features` `(n, D)` for `boxes` (pixel `[x1, y1, x2, y2]`) in an image of
    `image_size` `(W, H)`. Returns ``{"features": (1+n, D), "spatial": (1+n, 5)}``.
    """
    feats = [_as_2d(image_feature, "image_feature")]
    spatial = [list(WHOLE_IMAGE_SPATIAL)]
    if boxes is not None and len(boxes):
        if image_size is None:
            raise ValueError("image_size (W, H) is required with boxes")
        bf = _as_2d(box_features, "box_features")
        if bf.shape[0] != len(boxes):
            raise ValueError(f"{bf.shape[0]} box features for {len(boxes)} boxes")
        feats.append(bf)
        spatial += box_spatial(boxes, *image_size)
    return {"features": torch.cat(feats), "spatial": torch.tensor(spatial, dtype=torch.float32)}


def patch_grid_spatial(n_patches: int) -> list[list[float]]:
    """ZEMEL's 5-d spatial vectors of ``n`` patch tokens laid out as a square grid over the (cropped) image, row by
    row; the whole image for every patch when ``n`` is not a square."""
    side = int(round(n_patches ** 0.5))
    if side * side != n_patches:
        return [list(WHOLE_IMAGE_SPATIAL) for _ in range(n_patches)]
    return [[c / side, r / side, (c + 1) / side, (r + 1) / side, 1.0 / n_patches] for r in range(side) for c in range(side)]


def patch_regions(image_feature: Any, patch_features: Any) -> dict[str, torch.Tensor]:
    """Visual inputs of one image with ``image_regions="patches"``: the whole image first, then its patch tokens
    ``(P, D)`` (``ImageFeatureExtractor.encode_patches``) with grid spatial vectors. ``{"features": (1+P, D),
    "spatial": (1+P, 5)}``; the processor keeps the first ``max_regions``."""
    whole = _as_2d(image_feature, "image_feature")
    patches = _as_2d(patch_features, "patch_features") if patch_features is not None else whole[:0]
    spatial = [list(WHOLE_IMAGE_SPATIAL)] + patch_grid_spatial(int(patches.shape[0]))
    return {"features": torch.cat([whole, patches]), "spatial": torch.tensor(spatial, dtype=torch.float32)}


def regions_from_image(image: Any, boxes: Sequence[Sequence[float]], extractor: Any) -> dict[str, torch.Tensor]:
    """Region inputs of a PIL image / path with an ``ImageFeatureExtractor`` (``modeling_mel.image_features``):
    whole-image feature first (``extractor.encode``), then one crop feature per box (``extractor.encode_regions``)."""
    from PIL import Image

    pil = image if hasattr(image, "size") and not isinstance(image, str) else Image.open(image)
    pil = pil.convert("RGB")
    whole = extractor.encode([pil])[0]
    box_feats = extractor.encode_regions(pil, boxes) if len(boxes) else None
    return make_regions(whole, box_feats, boxes, pil.size)

__all__ = [
    "WHOLE_IMAGE_SPATIAL",
    "box_spatial",
    "make_regions",
    "patch_grid_spatial",
    "patch_regions",
    "regions_from_image",
]
