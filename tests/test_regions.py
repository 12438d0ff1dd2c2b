"""regions: ZEMEL's visual inputs of one image, the whole image first, then box crops or patch tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_mel.regions import (
    WHOLE_IMAGE_SPATIAL,
    box_spatial,
    make_regions,
    patch_grid_spatial,
    patch_regions,
    regions_from_image,
)


def test_whole_image_first_then_boxes():
    regions = make_regions(np.full(8, 2.0), np.ones((2, 8)), [[0, 0, 10, 20], [10, 10, 40, 20]], (40, 20))
    assert regions["features"].shape == (3, 8) and regions["features"][0, 0] == 2.0
    torch.testing.assert_close(
        regions["spatial"],
        torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0.25, 1, 0.25], [0.25, 0.5, 1, 1, 0.375]], dtype=torch.float32),
    )
    assert make_regions(np.zeros(8))["spatial"].tolist() == [list(WHOLE_IMAGE_SPATIAL)]
    with pytest.raises(ValueError, match="image_size"):
        make_regions(np.zeros(8), np.ones((1, 8)), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="1 box features for 2 boxes"):
        make_regions(np.zeros(8), np.ones((1, 8)), [[0, 0, 1, 1], [1, 1, 2, 2]], (4, 4))


@pytest.mark.parametrize("box", [[0, 0, 50, 10], [-1, 0, 5, 5], [5, 0, 5, 10], [0, 8, 10, 3]])
def test_bad_boxes_raise(box):
    with pytest.raises(ValueError, match=str(box).replace("[", r"\[").replace("]", r"\]")):
        box_spatial([box], 40, 20)


def test_patch_regions_lay_patches_on_a_grid():
    assert patch_grid_spatial(4) == [[0, 0, 0.5, 0.5, 0.25], [0.5, 0, 1, 0.5, 0.25], [0, 0.5, 0.5, 1, 0.25],
                                     [0.5, 0.5, 1, 1, 0.25]]
    assert patch_grid_spatial(3) == [list(WHOLE_IMAGE_SPATIAL)] * 3  # not a square: the whole image for each
    regions = patch_regions(np.ones(8), np.zeros((4, 8)))
    assert regions["features"].shape == (5, 8) and regions["spatial"].shape == (5, 5)
    assert regions["spatial"][0].tolist() == list(WHOLE_IMAGE_SPATIAL)
    assert patch_regions(np.ones(8), None)["features"].shape == (1, 8)


def test_regions_from_image_uses_extractor():
    from PIL import Image

    class FakeExtractor:
        def encode(self, images):
            return np.stack([np.full(8, float(im.size[0])) for im in images])

        def encode_regions(self, image, boxes):
            return np.stack([np.full(8, float(b[2] - b[0])) for b in boxes])

    r = regions_from_image(Image.new("RGB", (32, 16)), [[0, 0, 8, 8]], FakeExtractor())
    assert r["features"][:, 0].tolist() == [32.0, 8.0]
    assert r["spatial"][1].tolist() == [0.0, 0.0, 0.25, 0.5, 0.125]
