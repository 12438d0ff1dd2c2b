"""Image features through any transformers vision encoder (ResNet, CLIP, ViT, DINOv2, SigLIP), with a cache and an
identity that a model records.

:class:`ImageFeatureExtractor` encodes images, box crops and patch tokens with an encoder that
:mod:`modeling_mel.image_encoders` builds (a checkpoint, ``random:<arch>`` or ``tiny``; ``--image_model``), and gives
that encoder's identity (:attr:`ImageFeatureExtractor.identity`); :func:`extractor_for` builds the encoder a model
recorded at training (:meth:`ImageFeatureExtractor.from_identity`) and checks a given one against it
(:func:`~modeling_mel.image_encoders.check_image_encoder`).

Features are cached by content hash (SHA-1 of the file bytes or of the decoded pixels, plus the encoder's identity:
name, feature kind, a SHA-256 fingerprint of its weights, input size, preprocessing), in memory and optionally on disk,
so each image is encoded once across epochs and runs; new weights saved at the same path never reuse features cached
for the old ones.

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
import json
import logging
import os
import warnings
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import torch

from .image_encoders import (
    DEFAULT_IMAGE_MODEL,
    FEATURE_KINDS,
    RANDOM_PREFIX,
    TINY_ALIAS,
    TINY_IMAGE_ENCODER,
    ImageEncoderError,
    build_random_encoder,
    check_image_encoder,
    describe_image_encoder,
    load_encoder,
    load_image_processor,
    model_class_for_config,
    processor_image_size,
    random_encoder_config,
    weights_fingerprint,
)

logger = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, "PIL.Image.Image", None]  # noqa: F821

#: Most pixels (width x height) of an image that is decoded (``max_image_pixels``; ``None``: PIL's limit only).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


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
    (:func:`~modeling_mel.regions.box_spatial`, the one definition). ``ValueError`` naming a bad box."""
    from .regions import box_spatial

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


class ImageFeatureExtractor:
    """Image features from a transformers vision encoder for images and image regions, batched and cached.

    Args:
        model_name_or_path: hub id or local folder of a transformers vision checkpoint (ResNet, CLIP, ViT, DINOv2,
            SigLIP, ...; default ``microsoft/resnet-50``), ``random:<arch>`` (:data:`RANDOM_ENCODERS`: a seeded
            randomly initialised encoder, for tests and timing) or ``tiny`` (= ``random:tiny-resnet``). A checkpoint
            that cannot be loaded raises :class:`ImageEncoderError` naming the fix: no silent random fallback.
        cache_dir: directory of the on-disk feature cache (one ``.npy`` per image content hash);
            ``None`` keeps the cache in memory only.
        batch_size: images per forward pass.
        strict: raise :class:`ImageReadError` for a missing or corrupt image instead of returning zeros.
        device: torch device; default CPU.
        config: a vision config (``ResNetConfig``, ``CLIPVisionConfig``, ``ViTConfig``, ...) to build a randomly
            initialised network from (tiny configs in tests); when given, ``model_name_or_path`` is not loaded and the
            identity is ``random:custom`` (its config recorded).
        image_size: side of the square network input; default: the image processor's, else the config's
            ``image_size`` (ViT / CLIP), else 224 (ResNet; smaller is faster).
        seed: seed of a random initialisation (``random:<arch>`` or ``config``), so features are reproducible.
        feature: the global feature kind (:data:`FEATURE_KINDS`); default: ``projected`` for CLIP with a projection,
            ``cls`` for ViT, else ``pooled``.
    """

    def __init__(
        self,
        model_name_or_path: str | None = DEFAULT_IMAGE_MODEL,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 16,
        strict: bool = False,
        device: str | torch.device | None = None,
        config=None,
        image_size: int | None = None,
        seed: int = 0,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        feature: str | None = None,
    ) -> None:
        if max_image_pixels is not None and (isinstance(max_image_pixels, bool) or int(max_image_pixels) < 1):
            raise ValueError(f"max_image_pixels must be >= 1 (or None: PIL's limit only), got {max_image_pixels!r}")
        self.max_image_pixels = None if max_image_pixels is None else int(max_image_pixels)

        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if feature is not None and feature not in FEATURE_KINDS:
            raise ImageEncoderError(f"unknown image feature kind {feature!r}; choose one of {list(FEATURE_KINDS)}")
        self.strict = strict
        self.device = torch.device(device or "cpu")
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self.stats: collections.Counter = collections.Counter()
        self._memory: dict[str, np.ndarray] = {}
        self.seed = int(seed)
        name = None if model_name_or_path is None else os.fspath(model_name_or_path)
        if config is None and not name:
            raise ImageEncoderError("no image encoder given: pass a checkpoint (hub id or folder), random:<arch> or config=")
        if config is None and name == TINY_ALIAS:
            name = TINY_IMAGE_ENCODER
        self._processor = None
        self.random = config is not None or name.startswith(RANDOM_PREFIX)
        self.pretrained = not self.random
        self._config_record = None
        if config is not None:
            self.name = "random:custom"
            self._config_record = json.loads(config.to_json_string(use_diff=False))
            model = build_random_encoder(config, model_class_for_config(config), self.seed)
        elif self.random:
            self.name = name
            config, class_name = random_encoder_config(name[len(RANDOM_PREFIX):])
            model = build_random_encoder(config, class_name, self.seed)
        else:
            self.name = os.path.abspath(name) if os.path.isdir(name) else name
            model = load_encoder(name)
            self._processor = load_image_processor(name)
        self.model = model.eval().to(self.device)
        self.model_type = str(getattr(self.model.config, "model_type", "") or type(self.model.config).__name__)
        self._post_norm = getattr(getattr(self.model, "vision_model", None), "post_layernorm", None)  # CLIP
        self._projection = getattr(self.model, "visual_projection", None)  # CLIP with projection
        self.feature = feature or self._default_feature()
        self._check_feature()
        self.image_size = self._resolve_image_size(image_size)
        self.preprocessing = "image_processor" if self._processor is not None else "resize_crop"
        mean = getattr(self._processor, "image_mean", None) or _IMAGENET_MEAN
        std = getattr(self._processor, "image_std", None) or _IMAGENET_STD
        self._mean = torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1)
        self._std = torch.tensor([float(v) for v in std]).view(1, 3, 1, 1)
        with torch.inference_mode():  # the feature size and the patch layout, from one forward pass
            dummy = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
            out = self.model(pixel_values=dummy)
            tokens = out.last_hidden_state
            patch = getattr(self.model.config, "patch_size", None)
            n_patches = (self.image_size // int(patch)) ** 2 if tokens.dim() == 3 and isinstance(patch, int) else None
            self._prefix_tokens = tokens.shape[1] - n_patches if n_patches else (1 if self.feature == "cls" else 0)
            self.feature_dim = int(self._global(out).shape[-1])
        # the cache key names the weights, not only their path: new weights at the same path never reuse features
        self.weights_sha256 = weights_fingerprint(self.model)
        self.model_key = (f"{self.name}:{self.feature}:w{self.weights_sha256[:16]}:{self.image_size}:"
                          f"{self.preprocessing}" + (f":seed{self.seed}" if self.random else ""))

    # -- identity ----------------------------------------------------------------------------------------------------
    @property
    def identity(self) -> dict:
        """What made these features, as JSON (:data:`IDENTITY_KEYS`): training records it in the processor config
        (``image_encoder``) and inference rebuilds and checks it (:func:`extractor_for`)."""
        out = {
            "name": self.name, "random": self.random, "seed": self.seed if self.random else None,
            "model_type": self.model_type, "model_class": type(self.model).__name__,
            "weights_sha256": self.weights_sha256, "feature": self.feature, "feature_dim": self.feature_dim,
            "image_size": self.image_size, "preprocessing": self.preprocessing,
        }
        if self._config_record is not None:
            out["config"] = self._config_record
        return out

    @classmethod
    def from_identity(cls, identity: Mapping[str, Any], what: str = "the model", **kwargs: Any) -> "ImageFeatureExtractor":
        """The encoder an :attr:`identity` describes (``kwargs``: ``cache_dir``, ``strict``, ``device``,
        ``batch_size``, ``max_image_pixels``), checked against it: :class:`ImageEncoderError` when it cannot be
        loaded here or loads with other weights."""
        identity = dict(identity)
        name = str(identity.get("name") or "")
        settings = dict(kwargs, image_size=identity.get("image_size"), feature=identity.get("feature"),
                        seed=int(identity.get("seed") or 0))
        try:
            if name == "random:custom":
                from transformers import AutoConfig

                record = dict(identity.get("config") or {})
                model_type = record.pop("model_type", identity.get("model_type"))
                settings["config"] = AutoConfig.for_model(model_type, **record)
                extractor = cls(None, **settings)
            else:
                extractor = cls(name, **settings)
        except ImageEncoderError as err:
            raise ImageEncoderError(
                f"{what} was trained with the image encoder {describe_image_encoder(identity)}, which cannot be built "
                f"here: {err}"
            ) from err
        check_image_encoder(identity, extractor, what=what,
                            fix=f"pass --image_model with the encoder the model was trained with ({name})")
        return extractor

    # -- the encoder -------------------------------------------------------------------------------------------------
    def _default_feature(self) -> str:
        if self._projection is not None:
            return "projected"
        if self.model_type == "vit":
            return "cls"
        return "pooled"

    def _check_feature(self) -> None:
        ok = {"pooled", "cls"}
        if self._projection is not None:
            ok.add("projected")
        if self.model_type == "resnet":
            ok = {"pooled"}
        elif self.model_type in ("siglip_vision_model", "siglip"):
            ok = {"pooled"}  # no CLS token
        elif self.model_type == "vit" and getattr(self.model, "pooler", None) is None:
            ok.discard("pooled")
        if self.feature not in ok:
            raise ImageEncoderError(
                f"image encoder {self.name!r} ({type(self.model).__name__}) gives no {self.feature!r} feature; "
                f"choose one of {sorted(ok)}"
            )

    def _resolve_image_size(self, image_size: int | None) -> int:
        native = processor_image_size(self._processor)
        config_size = getattr(self.model.config, "image_size", None)
        fixed = isinstance(config_size, int) and getattr(self.model.config, "patch_size", None) is not None
        if native is None and isinstance(config_size, int):
            native = int(config_size)
        if image_size is None:
            return int(native or 224)
        image_size = int(image_size)
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size!r}")
        if fixed and image_size != int(config_size):
            raise ImageEncoderError(
                f"image encoder {self.name!r} ({type(self.model).__name__}) takes {config_size}-px inputs (its "
                f"position embeddings), not {image_size}: drop --image_size or pass {config_size}"
            )
        if self._processor is not None and native is not None and image_size != native:
            self._processor = None  # a convolutional encoder at another size: resize/crop with the processor's mean/std
        return image_size

    def _global(self, out: Any) -> torch.Tensor:
        """The global feature ``(B, D)`` of a forward output."""
        if self.feature == "projected":
            return out.image_embeds
        tokens = out.last_hidden_state
        if self.feature == "cls":
            cls_token = tokens[:, 0]
            return self._post_norm(cls_token) if self._post_norm is not None else cls_token
        pooled = getattr(out, "pooler_output", None)
        if pooled is None and self._post_norm is not None:  # CLIP with projection: the post-layernorm CLS token
            pooled = self._post_norm(tokens[:, 0])
        if pooled is None:
            raise ImageEncoderError(f"image encoder {self.name!r} gives no pooled output; use feature='cls'")
        return pooled.flatten(1)

    def _patches(self, out: Any) -> torch.Tensor:
        """The patch tokens ``(B, P, D)`` of a forward output, in the space of the global feature."""
        tokens = out.last_hidden_state
        if tokens.dim() == 4:  # a convolutional feature map (B, C, h, w)
            return tokens.flatten(2).transpose(1, 2)
        patches = tokens[:, self._prefix_tokens:]
        if self._post_norm is not None:
            patches = self._post_norm(patches)
            if self.feature == "projected":
                patches = self._projection(patches)
        return patches

    # -- preprocessing -----------------------------------------------------------------------
    def _to_tensor(self, image) -> torch.Tensor:
        """Resize the shorter side to ``image_size / 0.875``, centre-crop: (3, S, S) in [0, 1] (the fallback when
        the encoder has no image processor)."""
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

    def _pixel_values(self, pil_images: list) -> torch.Tensor:
        if self._processor is not None:
            return self._processor(images=pil_images, return_tensors="pt")["pixel_values"].to(self.device)
        batch = torch.stack([self._to_tensor(im) for im in pil_images])
        return ((batch - self._mean) / self._std).to(self.device)  # (B, 3, S, S)

    @torch.inference_mode()
    def _forward(self, pil_images: list, patches: bool = False):
        """Global features ``(N, D)`` of PIL images (with ``patches``: and their patch tokens ``(N, P, D)``)."""
        out, out_patches = [], []
        for start in range(0, len(pil_images), self.batch_size):
            result = self.model(pixel_values=self._pixel_values(pil_images[start : start + self.batch_size]))
            out.append(self._global(result).float().cpu().numpy())
            if patches:
                out_patches.append(self._patches(result).float().cpu().numpy())
        feats = np.concatenate(out, 0) if out else np.zeros((0, self.feature_dim), np.float32)
        if not patches:
            return feats
        return feats, (np.concatenate(out_patches, 0) if out_patches else np.zeros((0, 0, self.feature_dim), np.float32))

    # -- cache -------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> str | None:
        if self.cache_dir is None:
            return None
        return os.path.join(self.cache_dir, key[:2], key + ".npy")

    def _lookup(self, key: str, patches: bool = False) -> np.ndarray | None:
        if key in self._memory:
            return self._memory[key]
        path = self._cache_path(key)
        if path and os.path.isfile(path):
            try:
                feat = np.load(path)
            except (OSError, ValueError):
                return None
            if (feat.ndim == 2 and feat.shape[1] == self.feature_dim) if patches else feat.shape == (self.feature_dim,):
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

    def encode_patches(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Global features ``(N, D)`` of ``images`` and, per image, its patch tokens ``(P, D)`` in the same space
        (CLIP: post-layernorm and projected like ``image_embeds``; ResNet: the cells of the last feature map), or
        ``None`` for an unreadable image (zero global feature, counted as in :meth:`encode`). Cached like
        :meth:`encode`. ZEMEL's ``--image_regions patches`` feeds them as regions (:func:`patch_spatial`)."""
        feats = np.zeros((len(images), self.feature_dim), dtype=np.float32)
        patches: list[np.ndarray | None] = [None] * len(images)
        pending: list[tuple[int, str, Any]] = []
        for i, image in enumerate(images):
            try:
                pil = open_image(image, self.max_image_pixels)
            except ImageReadError as err:
                missing = image is None or (isinstance(image, (str, os.PathLike)) and not os.path.exists(os.fspath(image)))
                reason = "too_large" if isinstance(err, ImageTooLargeError) else "missing" if missing else "corrupt"
                feats[i] = self._bad_image(image, err, reason)
                continue
            key = _content_key(pil, self.model_key + ":patches")
            whole, grid = self._lookup(key + "g"), self._lookup(key + "p", patches=True)
            if whole is not None and grid is not None:
                self.stats["cache_hit"] += 1
                feats[i], patches[i] = whole, grid
                continue
            pending.append((i, key, pil))
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            whole, grid = self._forward([pil for _, _, pil in chunk], patches=True)
            for (i, key, _), g, p in zip(chunk, whole, grid):
                self._store(key + "g", g)
                self._store(key + "p", p)
                self.stats["encoded"] += 1
                feats[i], patches[i] = g, p
        return feats, patches

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
            f"ImageFeatureExtractor(model={self.model_key!r}, pretrained={self.pretrained}, feature={self.feature!r}, "
            f"feature_dim={self.feature_dim}, image_size={self.image_size}, cache_dir={self.cache_dir!r})"
        )


def patch_spatial(n_patches: int) -> np.ndarray:
    """ZEMEL's 5-d spatial vectors ``(n, 5)`` of ``n`` patch tokens laid out as a square grid over the (cropped) image,
    row by row; the whole image for every patch when ``n`` is not a square."""
    from .regions import patch_grid_spatial

    return np.asarray(patch_grid_spatial(int(n_patches)), dtype=np.float32).reshape(-1, 5)


def extractor_for(
    recorded: Mapping[str, Any] | None,
    image_model: str | None = None,
    what: str = "the model",
    image_size: int | None = None,
    feature: str | None = None,
    **kwargs: Any,
) -> "ImageFeatureExtractor":
    """The image encoder of a model: ``image_model`` when given (at the ``recorded`` input size and feature kind
    unless overridden), checked against ``recorded`` (:func:`check_image_encoder`); else the ``recorded`` encoder
    (:meth:`ImageFeatureExtractor.from_identity`); else ``microsoft/resnet-50`` (models saved before identities were
    recorded). ``kwargs``: ``cache_dir``, ``strict``, ``device``, ``batch_size``, ``max_image_pixels``."""
    if image_model:
        try:  # at the recorded input size and feature kind unless overridden
            extractor = ImageFeatureExtractor(image_model, image_size=image_size or (recorded or {}).get("image_size"),
                                              feature=feature or (recorded or {}).get("feature"), **kwargs)
        except ImageEncoderError:
            if not recorded or image_size or feature:
                raise
            # an encoder that takes neither the recorded size nor the recorded feature kind: at its own, so that the
            # error below names both encoders
            extractor = ImageFeatureExtractor(image_model, **kwargs)
        check_image_encoder(recorded, extractor, what=what,
                            fix=f"drop --image_model to use the recorded encoder (or pass --image_model "
                                f"{recorded.get('name') if recorded else ''})")
        return extractor
    if recorded:
        extractor = ImageFeatureExtractor.from_identity(recorded, what=what, **kwargs)
        if (image_size and int(image_size) != extractor.image_size) or (feature and feature != extractor.feature):
            other = ImageFeatureExtractor.from_identity(dict(recorded, image_size=image_size or recorded.get("image_size"),
                                                             feature=feature or recorded.get("feature"),
                                                             weights_sha256=extractor.weights_sha256), what=what, **kwargs)
            check_image_encoder(recorded, other, what=what, fix="drop --image_size / --image_feature to use the "
                                                                "recorded ones")
        return extractor
    return ImageFeatureExtractor(DEFAULT_IMAGE_MODEL, image_size=image_size, feature=feature, **kwargs)



__all__ = [
    "ImageFeatureExtractor",
    "ImageReadError",
    "ImageTooLargeError",
    "check_image_pixels",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageReadWarning",
    "UnreadableImage",
    "open_image",
    "spatial_features",
    "image_source",
    "patch_spatial",
    "extractor_for",
]
