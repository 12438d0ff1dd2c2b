"""Unreadable images (issue 15, point 3): decompression bombs, truncated files, non-images and directories give a
zero vector and an ``ImageReadWarning`` naming the file (non-strict) or an ``ImageReadError`` (a ``ValueError``)
naming the file (strict) -- never a traceback; and the feature cache keys on the image model's weights, not its path.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_mel.image_features import (
    ImageFeatureExtractor,
    ImageReadError,
    ImageReadWarning,
    UnreadableImage,
    image_source,
)
from modeling_mel.image_encoders import tiny_resnet_config


def make(**kw) -> ImageFeatureExtractor:
    return ImageFeatureExtractor(config=tiny_resnet_config(), image_size=32, batch_size=2, **kw)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def big_1bit_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid all-black 1-bit PNG of ``width x height`` pixels, tiny on disk (the zero rows compress ~1000:1)."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


# -- the table: name -> builder(tmp_path, monkeypatch) -> (image value, text the messages must contain, context) ----


class _BombWarningAsError:
    """PIL's ``DecompressionBombWarning`` (pixels between MAX_IMAGE_PIXELS and twice that) turned into an error."""

    def __enter__(self):
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def case_bomb(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(big_1bit_png())
    assert path.stat().st_size < 200_000  # 400 Mpixel image, small on disk; PIL's default limit is left as it is
    return str(path), "bomb.png", _Nothing()


def case_bomb_warning_as_error(tmp_path, monkeypatch):
    path = tmp_path / "large.png"
    Image.new("RGB", (50, 40), (10, 20, 30)).save(path)
    # 2000 pixels > 1300 (the 40x30 good image stays below): a warning, not an error, unless filtered
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1300)
    return str(path), "large.png", _BombWarningAsError()


def case_truncated_png(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return str(path), "truncated.png", _Nothing()


def case_text_named_jpg(tmp_path, monkeypatch):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a JPEG\n")
    return str(path), "notes.jpg", _Nothing()


def case_directory(tmp_path, monkeypatch):
    path = tmp_path / "photos.jpg"
    path.mkdir()
    return str(path), "photos.jpg", _Nothing()


def case_bomb_bytes(tmp_path, monkeypatch):
    """A ``datasets.Image`` value holding only the bytes of a bomb (no file): ``image_source`` must not raise."""
    value = image_source({"path": "remote/bomb.png", "bytes": big_1bit_png()})
    return value, "bomb.png", _Nothing()


CASES = {
    "decompression_bomb_20000x20000": case_bomb,
    "decompression_bomb_warning_as_error": case_bomb_warning_as_error,
    "truncated_png": case_truncated_png,
    "text_file_named_jpg": case_text_named_jpg,
    "directory_as_path": case_directory,
    "decompression_bomb_bytes": case_bomb_bytes,
}

REASONS = {  # what the message must say about the cause
    "decompression_bomb_20000x20000": "decompression bomb",
    "decompression_bomb_warning_as_error": "decompression bomb",
    "truncated_png": "truncated",
    "text_file_named_jpg": "not an image",
    "directory_as_path": "is a directory",
    "decompression_bomb_bytes": "decompression bomb",
}


@pytest.mark.parametrize("case", list(CASES))
def test_unreadable_image_non_strict_zero_vector_and_warning_strict_value_error(case, tmp_path, monkeypatch):
    image, name, context = CASES[case](tmp_path, monkeypatch)
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good)

    # non-strict: a zero row for the bad image, the good one still encoded, a warning naming the file
    ex = make()
    with pytest.warns(ImageReadWarning, match=re.escape(name)) as record:
        with context:
            feats = ex.encode([str(good), image])
    assert feats.shape == (2, 2048)
    assert np.abs(feats[0]).sum() > 0
    assert not feats[1].any()
    assert ex.stats["corrupt"] == 1
    messages = [str(w.message) for w in record if issubclass(w.category, ImageReadWarning)]
    assert any(name in m and REASONS[case] in m for m in messages), messages
    assert not any("does not exist" in m for m in messages), messages

    # the entity mean skips it as well
    with pytest.warns(ImageReadWarning):
        with context:
            np.testing.assert_allclose(make().entity_feature([str(good), image]), feats[0], atol=1e-5)

    # strict: ValueError naming the file (ImageReadError subclasses ValueError), not PIL's exception
    strict = make(strict=True)
    with pytest.raises(ValueError, match=re.escape(name)) as info:
        with context:
            strict.encode([str(good), image])
    assert isinstance(info.value, ImageReadError)
    assert REASONS[case] in str(info.value)
    assert "does not exist" not in str(info.value)


def test_bomb_bytes_become_an_unreadable_image_not_a_traceback():
    value = image_source({"path": None, "bytes": big_1bit_png()})
    assert isinstance(value, UnreadableImage)
    assert image_source({"path": None, "bytes": b"not an image"}).__class__ is UnreadableImage


def test_cache_keys_on_weights_not_on_path(tmp_path):
    """New weights saved at the same path must not be served the old weights' cached features."""
    from transformers import ResNetModel

    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(image)
    model_dir, cache = tmp_path / "resnet", tmp_path / "cache"

    def save_random_weights(seed: int) -> None:
        torch.manual_seed(seed)
        ResNetModel(tiny_resnet_config()).save_pretrained(model_dir)

    save_random_weights(1)
    first = ImageFeatureExtractor(str(model_dir), cache_dir=cache, image_size=32)
    assert first.pretrained
    old = first.encode([str(image)])[0]
    assert first.stats["encoded"] == 1 and os.listdir(cache)

    save_random_weights(2)  # same path, different weights
    second = ImageFeatureExtractor(str(model_dir), cache_dir=cache, image_size=32)
    assert second.model_key != first.model_key
    new = second.encode([str(image)])[0]
    assert second.stats["cache_hit"] == 0 and second.stats["encoded"] == 1
    assert not np.allclose(new, old)
    uncached = ImageFeatureExtractor(str(model_dir), image_size=32).encode([str(image)])[0]
    np.testing.assert_allclose(new, uncached, atol=1e-5)

    # the same weights again (reloaded) do hit the cache
    third = ImageFeatureExtractor(str(model_dir), cache_dir=cache, image_size=32)
    np.testing.assert_array_equal(third.encode([str(image)])[0], new)
    assert third.stats["cache_hit"] == 1 and third.stats["encoded"] == 0


# -- the pipeline (mel link): a bad mention image or a bad KB image never kills linking ----------------------------


@pytest.fixture(scope="module")
def nsp_family():
    from inference_fixtures import register_all, tiny_nsp

    register_all()
    return tiny_nsp()


def _pipe(family, kb, strict_images=False):
    from inference_fixtures import tiny_extractor
    from transformers import pipeline

    from modeling_mel.pipeline_entity_linking import TASK

    model, processor = family
    extractor = tiny_extractor()
    extractor.strict = strict_images  # what the default extractor does with strict_images=True
    return pipeline(TASK, model=model, processor=processor, kb=kb, image_extractor=extractor, strict_images=strict_images)


def test_pipeline_bad_kb_and_mention_images(nsp_family, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(big_1bit_png())
    folder = tmp_path / "folder.png"
    folder.mkdir()
    kb = [
        {"entity_id": "nasa", "name": "NASA", "description": "space agency"},
        {"entity_id": "nasa_bomb", "name": "NASA", "description": "space agency fan account", "images": [str(bomb)]},
    ]
    query = {"text": "launch day at NASA", "mention": "NASA"}

    # non-strict: the bomb entity image is skipped with a warning naming the file; both entities are ranked
    pipe = _pipe(nsp_family, kb)
    with pytest.warns(ImageReadWarning, match="bomb.png"):
        out = pipe(query, top_k=2)
    assert {r["entity_id"] for r in out} == {"nasa", "nasa_bomb"}

    # strict: ValueError naming the entity and the file
    strict = _pipe(nsp_family, kb, strict_images=True)
    with pytest.raises(ValueError, match=r"entity 'nasa_bomb'.*bomb\.png"):
        strict(query, top_k=2)

    # a mention image that is a directory: named as such (not "does not exist"); linked text-only / ValueError
    text_kb = kb[:1]
    lenient = _pipe(nsp_family, text_kb)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("modeling_mel.pipeline_entity_linking")
    log.addHandler(handler)
    try:
        out = lenient(dict(query, image=str(folder)), top_k=1)
    finally:
        log.removeHandler(handler)
    assert out[0]["entity_id"] == "nasa"
    assert any("folder.png" in r.getMessage() and "is a directory" in r.getMessage() for r in records)
    with pytest.raises(ValueError, match=r"folder\.png.*is a directory"):
        _pipe(nsp_family, text_kb, strict_images=True)(dict(query, image=str(folder)), top_k=1)
    with pytest.raises(ValueError, match=r"mention 'NASA'.*bomb\.png.*decompression bomb"):
        _pipe(nsp_family, text_kb, strict_images=True)(dict(query, image=str(bomb)), top_k=1)
