"""ResNet feature extraction: batching, content-hash cache, bad images, entity means, spatial vectors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modeling_mel.image_features import (
    ImageFeatureExtractor,
    ImageReadError,
    spatial_features,
)
from modeling_mel.image_encoders import tiny_resnet_config


@pytest.fixture()
def images(tmp_path):
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 30), colour).save(p)
        paths.append(str(p))
    (tmp_path / "corrupt.jpg").write_bytes(b"not an image")
    return paths, str(tmp_path / "corrupt.jpg")


def make(tmp_path, **kw) -> ImageFeatureExtractor:
    return ImageFeatureExtractor(config=tiny_resnet_config(), image_size=32, batch_size=2, **kw)


def test_encode_batched_equals_one_by_one(tmp_path, images):
    paths, _ = images
    ex = make(tmp_path)
    batched = ex.encode(paths)
    assert batched.shape == (3, 2048) and batched.dtype == np.float32
    single = np.stack([make(tmp_path).encode([p])[0] for p in paths])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    assert not np.allclose(batched[0], batched[1])


def test_cache_hits_in_memory_and_on_disk(tmp_path, images):
    paths, _ = images
    cache = tmp_path / "cache"
    ex = make(tmp_path, cache_dir=cache)
    first = ex.encode(paths + [paths[0]])
    assert ex.stats["encoded"] == 3  # the duplicate is encoded once
    ex.encode(paths)
    assert ex.stats["cache_hit"] == 3
    fresh = make(tmp_path, cache_dir=cache)
    again = fresh.encode(paths)
    assert fresh.stats["encoded"] == 0 and fresh.stats["cache_hit"] == 3
    np.testing.assert_array_equal(first[:3], again)


def test_missing_and_corrupt_give_zeros_and_are_counted(tmp_path, images):
    paths, corrupt = images
    ex = make(tmp_path)
    feats = ex.encode([paths[0], None, str(tmp_path / "nope.png"), corrupt])
    assert np.abs(feats[0]).sum() > 0
    assert not feats[1:].any()
    assert ex.stats["missing"] == 2 and ex.stats["corrupt"] == 1


def test_strict_mode_raises(tmp_path, images):
    _, corrupt = images
    ex = make(tmp_path, strict=True)
    with pytest.raises(ImageReadError, match="corrupt"):
        ex.encode([corrupt])
    with pytest.raises(ImageReadError, match="does not exist"):
        ex.encode([str(tmp_path / "nope.png")])


def test_entity_feature_is_mean_of_readable_images(tmp_path, images):
    paths, corrupt = images
    ex = make(tmp_path)
    feats = ex.encode(paths)
    np.testing.assert_allclose(ex.entity_feature(paths + [corrupt]), feats.mean(0), atol=1e-5)
    assert not ex.entity_feature([]).any()


def test_regions_and_spatial_features(tmp_path, images):
    paths, _ = images
    ex = make(tmp_path)
    regions = ex.encode_regions(paths[0], [[0, 0, 20, 15], [10, 5, 40, 30]])
    assert regions.shape == (2, 2048)
    sp = spatial_features([[0, 0, 20, 15], [10, 5, 40, 30]], 40, 30)
    np.testing.assert_allclose(sp[0], [0, 0, 0.5, 0.5, 0.25])
    np.testing.assert_allclose(sp[1], [0.25, 5 / 30, 1.0, 1.0, 30 * 25 / 1200])
    with pytest.raises(ValueError, match="outside the image"):
        spatial_features([[0, 0, 50, 10]], 40, 30)
    with pytest.raises(ValueError, match="x2 > x1"):
        spatial_features([[10, 0, 10, 10]], 40, 30)
