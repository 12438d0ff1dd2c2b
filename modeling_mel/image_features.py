"""ResNet-50 image features (pooled, 2048-d) through transformers' ``ResNetModel``, with a cache.

Both papers feed pooled ResNet-50 features: PFMEL one vector per tweet image (an entity's vector is
the mean over its timeline images), ZEMEL one vector per region (box crops plus the whole image).
torchvision is not needed: the network is transformers' ``ResNetModel``. ``microsoft/resnet-50`` is
loaded when the hub or a local directory has it; otherwise a randomly initialised ResNet-50 is used
with a loud warning (its features still separate colours and shapes, but they are not ImageNet
features). Pass a directory holding the real weights to reproduce the papers.

Features are cached by content hash (SHA-1 of the file bytes or of the decoded pixels, plus the
model's identity), in memory and optionally on disk, so each image is encoded once across epochs and
runs. The model's identity includes a SHA-256 fingerprint of its weights, so new weights saved at the same path
never reuse features cached for the old ones.

Pixel limit: an image of more than ``max_image_pixels`` pixels (default :data:`DEFAULT_MAX_IMAGE_PIXELS`, 50M, well
under PIL's own decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS`` of about 89M, which is left as it is) is
refused from its header, before any pixel is decoded: a 13000x13000 1-bit PNG is 20 KB on disk, under PIL's error
limit, and takes 2.1 GB of memory to decode. ``mel index`` / ``link`` / ``serve`` / ``calibrate`` take
``--max_image_pixels``.

A missing, truncated or corrupt image, a directory given as an image, an image over the pixel limit, or an image
PIL refuses as a possible decompression bomb gives a zero vector, is counted in :attr:`ImageFeatureExtractor.stats`
and is reported with an :class:`ImageReadWarning` naming the file, or raises :class:`ImageReadError` (a
``ValueError``) naming the file in ``strict`` mode.
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import os
import warnings
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, "PIL.Image.Image", None]  # noqa: F821

DEFAULT_IMAGE_MODEL = "microsoft/resnet-50"
#: Most pixels (width x height) of an image that is decoded (``max_image_pixels``; ``None``: PIL's limit only).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


class ImageReadError(ValueError):
    """An image file is missing, empty or not decodable."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than the extractor's ``max_image_pixels`` (refused from its header, not decoded)."""


class ImageReadWarning(UserWarning):
    """An unreadable image was replaced by a zero feature vector (non-strict mode)."""


class UnreadableImage:
    """Stand-in for an image value that could not even be opened (e.g. undecodable bytes of a ``datasets.Image``);
    :func:`open_image` raises :class:`ImageReadError` for it and :meth:`ImageFeatureExtractor.encode` counts it as
    corrupt."""

    def __init__(self, description: str, error: BaseException) -> None:
        self.description = description
        self.error = error

    def __repr__(self) -> str:
        return f"UnreadableImage({self.description!r})"


def _describe(image: Any) -> str:
    """How an image value is named in messages: the path of a file, else a short repr."""
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    if isinstance(image, UnreadableImage):
        return image.description
    filename = getattr(image, "filename", None)
    if filename:
        return repr(filename)
    return f"{image!r:.120}"


def _decode_error(image: Any, err: BaseException) -> ImageReadError:
    """The :class:`ImageReadError` for a failure to decode ``image``, naming it and the cause."""
    from PIL import Image

    what = _describe(image)
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageReadError(
            f"image {what} is too large to decode safely (possible decompression bomb: {err}); it exceeds PIL's "
            "Image.MAX_IMAGE_PIXELS limit, which modeling-mel leaves as it is: downscale the image"
        )
    if isinstance(err, MemoryError):
        return ImageReadError(f"image {what} is too large to decode in memory")
    return ImageReadError(f"image {what} is corrupt, truncated or not an image: {type(err).__name__}: {err}")


def _check_path(path: str) -> ImageReadError | None:
    """An :class:`ImageReadError` when ``path`` is not a regular file, else ``None``."""
    if os.path.isdir(path):
        return ImageReadError(f"image path {path!r} is a directory, not an image file")
    if not os.path.isfile(path):
        return ImageReadError(f"image file {path!r} does not exist")
    return None


def spatial_features(boxes: Sequence[Sequence[float]], width: float, height: float) -> np.ndarray:
    """ZEMEL's 5-d spatial vector per box: ``(x1/W, y1/H, x2/W, y2/H, area/(W*H))``, as an array ``(n, 5)``
    (:func:`~modeling_mel.processing_zemel.box_spatial`, the one definition). ``ValueError`` naming a bad box."""
    from .processing_zemel import box_spatial

    return np.asarray(box_spatial(boxes, width, height), dtype=np.float32).reshape(-1, 5)


def check_image_pixels(image: Any, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, name: Any = None) -> None:
    """``ImageReadError`` naming the image and its size when ``image`` (a PIL image, opened lazily: only its header is
    read) has more than ``max_pixels`` pixels; ``None`` / 0: no limit."""
    if not max_pixels:
        return
    width, height = image.size
    if width * height > int(max_pixels):
        raise ImageTooLargeError(
            f"image {_describe(name if name is not None else image)} is {width}x{height} = {width * height:,} pixels, "
            f"over the limit of {int(max_pixels):,} (max_image_pixels; decoding it would take about "
            f"{width * height * 3 / 2**30:.1f} GiB as RGB): downscale it, or raise --max_image_pixels"
        )


def open_image(image: ImageInput, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
    """Open ``image`` (path or PIL image) as an RGB PIL image; ``ImageReadError`` if it cannot be read, or when it has
    more than ``max_pixels`` pixels (checked from the header, before decoding: :func:`check_image_pixels`)."""
    from PIL import Image

    if image is None:
        raise ImageReadError("no image given (None)")
    if isinstance(image, UnreadableImage):
        raise _decode_error(image, image.error) from image.error
    if isinstance(image, Image.Image):
        check_image_pixels(image, max_pixels)
        try:
            return image.convert("RGB")
        except Exception as err:  # noqa: BLE001 - a lazily opened image decodes here; PIL raises many types
            raise _decode_error(image, err) from err
    path = os.fspath(image)
    bad = _check_path(path)
    if bad is not None:
        raise bad
    try:
        with Image.open(path) as im:  # reads the header only
            check_image_pixels(im, max_pixels, path)
            im.load()
            return im.convert("RGB")
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001 - UnidentifiedImageError, OSError, DecompressionBombError / -Warning as error, ...
        raise _decode_error(path, err) from err


def image_source(value: Any) -> Any:
    """What :meth:`ImageFeatureExtractor.encode` takes, from a ``datasets.Image`` value (decoded or undecoded
    ``{"path", "bytes"}``), a path or a PIL image: the path when the file exists, else a PIL image from the bytes,
    else ``None`` (counted as a missing image by the extractor). Bytes PIL cannot open (corrupt, or a possible
    decompression bomb) give an :class:`UnreadableImage`, reported by the extractor as a corrupt image."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        path = value.get("path")
        if path and os.path.isfile(path):
            return path
        if value.get("bytes"):
            from PIL import Image

            try:
                return Image.open(io.BytesIO(value["bytes"]))
            except Exception as err:  # noqa: BLE001 - incl. DecompressionBombError
                name = f"{path!r} (bytes)" if path else "image bytes"
                return UnreadableImage(name, err)
        return None
    return value  # a PIL image


def _content_key(image: ImageInput, model_key: str) -> str | None:
    """Hash of the image content plus the model identity; ``None`` when the image cannot be read."""
    from PIL import Image

    h = hashlib.sha1(model_key.encode())
    if isinstance(image, Image.Image):
        im = image.convert("RGB")
        h.update(f"{im.size}".encode())
        h.update(im.tobytes())
        return h.hexdigest()
    path = os.fspath(image)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``model``'s state_dict tensors (computed once at load)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class ImageFeatureExtractor:
    """Pooled ResNet features for images and image regions, batched and cached.

    Args:
        model_name_or_path: hub id or local dir of a transformers ResNet checkpoint
            (default ``microsoft/resnet-50``). When it cannot be loaded (offline), a randomly
            initialised ResNet-50 is used and a warning says so.
        cache_dir: directory of the on-disk feature cache (one ``.npy`` per image content hash);
            ``None`` keeps the cache in memory only.
        batch_size: images per forward pass.
        strict: raise :class:`ImageReadError` for a missing or corrupt image instead of returning zeros.
        device: torch device; default CPU.
        config: a ``ResNetConfig`` to build a randomly initialised network from (tiny configs in tests);
            when given, ``model_name_or_path`` is not loaded.
        image_size: side of the square network input (224 as in the papers; smaller is faster).
        seed: seed of the random initialisation used when no pre-trained weights are available, so
            features are reproducible across runs and processes.
    """

    def __init__(
        self,
        model_name_or_path: str | None = DEFAULT_IMAGE_MODEL,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 16,
        strict: bool = False,
        device: str | torch.device | None = None,
        config=None,
        image_size: int = 224,
        seed: int = 0,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        from transformers import ResNetConfig, ResNetModel

        if max_image_pixels is not None and (isinstance(max_image_pixels, bool) or int(max_image_pixels) < 1):
            raise ValueError(f"max_image_pixels must be >= 1 (or None: PIL's limit only), got {max_image_pixels!r}")
        self.max_image_pixels = None if max_image_pixels is None else int(max_image_pixels)

        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.strict = strict
        self.device = torch.device(device or "cpu")
        self.image_size = int(image_size)
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self.stats: collections.Counter = collections.Counter()
        self._memory: dict[str, np.ndarray] = {}
        self.pretrained = False
        model = None
        if config is None and model_name_or_path:
            try:
                model = ResNetModel.from_pretrained(model_name_or_path)
                self.pretrained = True
                self.model_key = f"{model_name_or_path}"
            except (OSError, ValueError) as err:
                msg = (
                    f"could not load image model {model_name_or_path!r} ({type(err).__name__}); using a RANDOMLY "
                    "INITIALISED ResNet-50. Image features will not be ImageNet features: pass "
                    "--image_model <dir with microsoft/resnet-50> to reproduce the papers."
                )
                logger.warning(msg)
                warnings.warn(msg, stacklevel=2)
        if model is None:
            config = config if config is not None else ResNetConfig()
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = ResNetModel(config)
            self.model_key = f"random-resnet:{seed}:{hashlib.sha1(config.to_json_string().encode()).hexdigest()[:12]}"
        self.model = model.eval().to(self.device)
        self.feature_dim = int(self.model.config.hidden_sizes[-1])
        # the cache key names the weights, not only their path: new weights at the same path never reuse features
        self.weights_sha256 = weights_fingerprint(self.model)
        self.model_key += f":w{self.weights_sha256[:16]}:{self.image_size}"
        # ImageNet normalisation as in microsoft/resnet-50's preprocessor.
        self._mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self._std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    # -- preprocessing -----------------------------------------------------------------------
    def _to_tensor(self, image) -> torch.Tensor:
        """Resize the shorter side to ``image_size / 0.875``, centre-crop, normalise: (3, S, S)."""
        from PIL import Image

        s = self.image_size
        short = int(round(s / 0.875))
        w, h = image.size
        scale = short / min(w, h)
        image = image.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
        return arr

    @torch.inference_mode()
    def _forward(self, pil_images: list) -> np.ndarray:
        out = []
        for start in range(0, len(pil_images), self.batch_size):
            batch = torch.stack([self._to_tensor(im) for im in pil_images[start : start + self.batch_size]])
            batch = ((batch - self._mean) / self._std).to(self.device)  # (B, 3, S, S)
            pooled = self.model(pixel_values=batch).pooler_output.flatten(1)  # (B, D)
            out.append(pooled.float().cpu().numpy())
        return np.concatenate(out, 0) if out else np.zeros((0, self.feature_dim), np.float32)

    # -- cache -------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> str | None:
        if self.cache_dir is None:
            return None
        return os.path.join(self.cache_dir, key[:2], key + ".npy")

    def _lookup(self, key: str) -> np.ndarray | None:
        if key in self._memory:
            return self._memory[key]
        path = self._cache_path(key)
        if path and os.path.isfile(path):
            try:
                feat = np.load(path)
            except (OSError, ValueError):
                return None
            if feat.shape == (self.feature_dim,):
                self._memory[key] = feat
                return feat
        return None

    def _store(self, key: str, feat: np.ndarray) -> None:
        self._memory[key] = feat
        path = self._cache_path(key)
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npy"
            np.save(tmp, feat)
            os.replace(tmp, path)

    def _bad_image(self, image: ImageInput, err: Exception, reason: str) -> np.ndarray:
        if self.strict:
            if isinstance(err, ImageReadError):
                raise err
            raise ImageReadError(str(err)) from err
        self.stats[reason] += 1
        n = self.stats[reason]
        if n <= 5 or n % 100 == 0:
            msg = f"{reason} image: {err}; using a zero feature vector ({n} so far)"
            logger.warning("%s", msg)
            warnings.warn(msg, ImageReadWarning, stacklevel=3)
        return np.zeros(self.feature_dim, dtype=np.float32)

    # -- public API --------------------------------------------------------------------------
    def encode(self, images: Sequence[ImageInput], progress: bool = False) -> np.ndarray:
        """Features of ``images`` (paths, PIL images or ``None``): ``(N, feature_dim)`` float32.

        Cached images are not re-encoded. ``None``, a missing or a corrupt image gives zeros
        (counted in :attr:`stats` as ``missing``/``corrupt``) or raises in strict mode.
        """
        from PIL import Image

        feats = np.zeros((len(images), self.feature_dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        pending: list[tuple[str, object]] = []
        for i, image in enumerate(images):
            if image is None:
                feats[i] = self._bad_image(image, ImageReadError("no image given (None)"), "missing")
                continue
            if isinstance(image, UnreadableImage):
                feats[i] = self._bad_image(image, _decode_error(image, image.error), "corrupt")
                continue
            if not isinstance(image, Image.Image):
                bad = _check_path(os.fspath(image))
                if bad is not None:
                    feats[i] = self._bad_image(image, bad, "corrupt" if os.path.isdir(os.fspath(image)) else "missing")
                    continue
            else:
                try:  # before the content key decodes a lazily opened image
                    check_image_pixels(image, self.max_image_pixels)
                except ImageReadError as err:
                    feats[i] = self._bad_image(image, err, "too_large")
                    continue
            try:
                key = _content_key(image, self.model_key)
            except Exception as err:  # noqa: BLE001 - a lazily opened PIL image decodes here
                feats[i] = self._bad_image(image, _decode_error(image, err), "corrupt")
                continue
            if key is None:
                feats[i] = self._bad_image(image, ImageReadError(f"cannot read image {_describe(image)}"), "corrupt")
                continue
            cached = self._lookup(key)
            if cached is not None:
                self.stats["cache_hit"] += 1
                feats[i] = cached
                continue
            if key in todo:
                todo[key].append(i)
                continue
            todo[key] = [i]
            pending.append((key, image))
        if pending:
            decoded: list[tuple[str, object]] = []
            for key, image in pending:
                try:
                    decoded.append((key, open_image(image, self.max_image_pixels)))
                except ImageReadError as err:
                    reason = "too_large" if isinstance(err, ImageTooLargeError) else "corrupt"
                    zero = self._bad_image(image, err, reason)
                    for i in todo[key]:
                        feats[i] = zero
            iterator: Iterable = range(0, len(decoded), self.batch_size)
            if progress:
                from tqdm.auto import tqdm

                iterator = tqdm(iterator, desc="image features", unit="batch")
            for start in iterator:
                chunk = decoded[start : start + self.batch_size]
                out = self._forward([im for _, im in chunk])
                for (key, _), feat in zip(chunk, out):
                    self._store(key, feat)
                    self.stats["encoded"] += 1
                    for i in todo[key]:
                        feats[i] = feat
        return feats

    def encode_regions(self, image: ImageInput, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """Features of the crops ``boxes`` (``[x1, y1, x2, y2]`` in pixels) of one image: ``(len(boxes), D)``."""
        pil = open_image(image, self.max_image_pixels)
        spatial_features(boxes, *pil.size)  # validates every box
        crops = [pil.crop(tuple(int(round(v)) for v in box)) for box in boxes]
        return self.encode(crops)

    def entity_feature(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Mean feature over the readable ``images`` (PFMEL's entity image); zeros when none is readable."""
        if len(images) == 0:
            return np.zeros(self.feature_dim, dtype=np.float32)
        feats = self.encode(list(images))
        ok = np.abs(feats).sum(1) > 0
        if not ok.any():
            return np.zeros(self.feature_dim, dtype=np.float32)
        return feats[ok].mean(0).astype(np.float32)

    def __repr__(self) -> str:
        return (
            f"ImageFeatureExtractor(model={self.model_key!r}, pretrained={self.pretrained}, "
            f"feature_dim={self.feature_dim}, cache_dir={self.cache_dir!r})"
        )


def tiny_resnet_config(feature_dim: int = 2048):
    """A small ResNet config with the same 2048-d output, for tests and quick runs."""
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=8, hidden_sizes=[16, 32, 64, feature_dim], depths=[1, 1, 1, 1], layer_type="basic")


__all__ = [
    "ImageFeatureExtractor",
    "ImageReadError",
    "ImageTooLargeError",
    "check_image_pixels",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageReadWarning",
    "UnreadableImage",
    "weights_fingerprint",
    "open_image",
    "spatial_features",
    "image_source",
    "tiny_resnet_config",
    "DEFAULT_IMAGE_MODEL",
]
