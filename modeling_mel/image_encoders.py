"""Image encoders: a transformers vision encoder built by name, and the identity a model records of it.

Both papers feed pooled ResNet-50 features: PFMEL one vector per tweet image (an entity's vector is the mean over its
timeline images), ZEMEL one vector per region (box crops plus the whole image). The MEL methods since 2023 (MIMIC,
M3EL, MMoE, KGMEL) use CLIP ViT-B/32: the projected ``image_embeds`` (512-d) and the vision tower's patch tokens.
:class:`~modeling_mel.image_features.ImageFeatureExtractor` takes any of them (``--image_model``); this module builds
them:

- a transformers checkpoint (hub id or folder): ``ResNetModel`` (feature ``pooled``: ``pooler_output``, 2048-d for
  ``microsoft/resnet-50``); ``CLIPVisionModelWithProjection`` or a whole ``CLIPModel`` (``projected``: the projected
  ``image_embeds``; or ``pooled``: the post-layernorm CLS token); ``CLIPVisionModel`` / ``Dinov2Model`` /
  ``SiglipVisionModel`` (``pooled``); ``ViTModel`` (``cls``: the CLS token of the last layer; ``pooled`` needs pooler
  weights); any other ``AutoModel`` giving ``pooler_output`` (``pooled``) or a token sequence (``cls``). The feature
  size comes from the encoder. :meth:`ImageFeatureExtractor.encode_patches` gives the patch tokens (the ResNet's last
  feature map cells) in the same space as the global feature (CLIP: post-layernorm and projected), for ZEMEL regions.
- the image processor comes with it: ``AutoImageProcessor`` of the same folder / hub id. When there is none (e.g. a
  tiny random config saved without one) the images are resized (shorter side to ``image_size / 0.875``),
  centre-cropped to ``image_size`` and normalised with the ImageNet mean and std, ``image_size`` being the config's
  (ViT / CLIP) or 224 (ResNet). A convolutional encoder may run at another ``image_size`` (that fallback, with the
  processor's mean and std); a ViT-like encoder refuses a size other than its own.
- ``random:<arch>`` (:data:`RANDOM_ENCODERS`: ``random:resnet-50``, ``random:clip-vit-b32``, ``random:tiny-resnet``,
  ``random:tiny-clip``, ...): a randomly initialised encoder, seeded (``seed``), for tests and timing only; ``tiny`` is
  an alias of ``random:tiny-resnet`` (64-d). A checkpoint that cannot be loaded (offline and not in the local cache)
  is an :class:`ImageEncoderError` naming the explicit ``random:`` choice: a random encoder is never a silent fallback.

Identity: :attr:`ImageFeatureExtractor.identity <modeling_mel.image_features.ImageFeatureExtractor.identity>` is a JSON
dict (:data:`IDENTITY_KEYS`: ``name``, ``random``, ``seed``, ``model_type``, ``model_class``, ``weights_sha256``,
``feature``, ``feature_dim``, ``image_size``, ``preprocessing``). Training records it in the processor config
(``image_encoder`` of ``processor_config.json``); :func:`~modeling_mel.image_features.extractor_for` builds the
recorded encoder by default and :func:`check_image_encoder` refuses another one (different weights, feature kind, size
or preprocessing) with a one-line :class:`ImageEncoderError` naming both. A feature cache can store the same dict and
check it the same way.

This file ships with saved models (the pipeline imports it): it imports only torch, transformers and the standard
library.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Mapping

import torch

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_MODEL = "microsoft/resnet-50"
#: Prefix of an explicitly random encoder (``random:<arch>``, :data:`RANDOM_ENCODERS`).
RANDOM_PREFIX = "random:"
#: ``--image_model tiny``: a small random ResNet with a 64-d output (tests, quick runs), recorded as this name.
TINY_ALIAS = "tiny"
TINY_IMAGE_ENCODER = "random:tiny-resnet"
#: Global feature kinds: ``pooled`` (the encoder's pooled output), ``projected`` (CLIP's ``image_embeds``), ``cls``
#: (the CLS token of the last layer).
FEATURE_KINDS = ("pooled", "projected", "cls")
#: The keys of :attr:`ImageFeatureExtractor.identity` (``config`` too for ``random:custom``).
IDENTITY_KEYS = ("name", "random", "seed", "model_type", "model_class", "weights_sha256", "feature", "feature_dim",
                 "image_size", "preprocessing")
#: What must be equal for two encoders to give the same features (:func:`image_encoder_mismatch`).
_IDENTITY_CHECKED = ("weights_sha256", "feature", "feature_dim", "image_size", "preprocessing")
_TINY_VIT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                 patch_size=8)
#: ``random:<arch>`` encoders: arch -> (config class, config kwargs, model class). ``random:tiny-resnet-<D>``: a tiny
#: ResNet with a D-d output.
RANDOM_ENCODERS: dict[str, tuple[str, dict, str]] = {
    "resnet-50": ("ResNetConfig", {}, "ResNetModel"),
    "tiny-resnet": ("ResNetConfig", {"embedding_size": 8, "hidden_sizes": [16, 32, 64, 64], "depths": [1, 1, 1, 1],
                                     "layer_type": "basic"}, "ResNetModel"),
    "clip-vit-b32": ("CLIPVisionConfig", {"patch_size": 32, "projection_dim": 512}, "CLIPVisionModelWithProjection"),
    "clip-vit-b16": ("CLIPVisionConfig", {"patch_size": 16, "projection_dim": 512}, "CLIPVisionModelWithProjection"),
    "tiny-clip": ("CLIPVisionConfig", dict(_TINY_VIT, projection_dim=16), "CLIPVisionModelWithProjection"),
    "vit-b16": ("ViTConfig", {}, "ViTModel"),
    "tiny-vit": ("ViTConfig", dict(_TINY_VIT), "ViTModel"),
}


class ImageEncoderError(ValueError):
    """An image encoder cannot be built (not loadable, unknown ``random:`` arch, weights missing from its checkpoint),
    or is not the one a model was trained with (:func:`check_image_encoder`). One line; ``mel`` exits with code 2."""


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``model``'s state_dict tensors (computed once at load)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def tiny_resnet_config(feature_dim: int = 2048):
    """A small ResNet config with the same 2048-d output, for tests and quick runs."""
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=8, hidden_sizes=[16, 32, 64, feature_dim], depths=[1, 1, 1, 1], layer_type="basic")


# ----------------------------------------------------------------------------------------------------------------------
# Building encoders
# ----------------------------------------------------------------------------------------------------------------------
def random_encoder_config(arch: str):
    """``(config, model class name)`` of ``random:<arch>`` (:data:`RANDOM_ENCODERS`, or ``tiny-resnet-<D>``: a tiny
    ResNet with a D-d output); :class:`ImageEncoderError` listing the choices for an unknown arch."""
    import transformers

    arch = str(arch)
    if arch.startswith("tiny-resnet-") and arch[len("tiny-resnet-"):].isdigit():
        return tiny_resnet_config(int(arch[len("tiny-resnet-"):])), "ResNetModel"
    if arch not in RANDOM_ENCODERS:
        raise ImageEncoderError(
            f"unknown random image encoder {RANDOM_PREFIX}{arch}; choose one of "
            f"{[RANDOM_PREFIX + a for a in RANDOM_ENCODERS] + [RANDOM_PREFIX + 'tiny-resnet-<D>']}"
        )
    config_class, kwargs, model_class = RANDOM_ENCODERS[arch]
    return getattr(transformers, config_class)(**kwargs), model_class


def model_class_for_config(config) -> str:
    model_type = getattr(config, "model_type", None)
    return {"resnet": "ResNetModel", "clip_vision_model": "CLIPVisionModelWithProjection", "vit": "ViTModel",
            "dinov2": "Dinov2Model", "siglip_vision_model": "SiglipVisionModel"}.get(model_type, "AutoModel")


def _instantiate(class_name: str, config):
    import transformers

    if class_name == "AutoModel":
        return transformers.AutoModel.from_config(config)
    if class_name == "ViTModel":
        return transformers.ViTModel(config, add_pooling_layer=False)
    return getattr(transformers, class_name)(config)


def build_random_encoder(config, class_name: str, seed: int):
    """A randomly initialised encoder, the same for the same seed (the global torch RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        return _instantiate(class_name, config)


def _random_suggestion(name: str) -> str:
    low = name.lower()
    if "clip" in low:
        return "random:clip-vit-b16" if "16" in low else "random:clip-vit-b32"
    if "vit" in low or "dino" in low or "siglip" in low:
        return "random:vit-b16"
    return "random:resnet-50"


def load_encoder(name: str):
    """The vision model of checkpoint ``name`` (folder or hub id): :class:`ImageEncoderError` naming the fix when it
    cannot be loaded, or when its checkpoint lacks weights the model needs (they would be random)."""
    import transformers
    from transformers import AutoConfig

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        where = "the folder does not hold a transformers checkpoint" if os.path.isdir(name) else (
            "not in the local Hugging Face cache and the hub is off (HF_HUB_OFFLINE)" if offline else
            "neither a folder nor a hub id that could be downloaded")
        raise ImageEncoderError(
            f"cannot load image encoder {name!r} ({where}: {type(err).__name__}: {first}); download it once "
            f"(huggingface-cli download {name}) or pass --image_model DIR holding it; for a randomly initialised "
            f"encoder (tests and timing only, not pretrained features) pass --image_model {_random_suggestion(name)} "
            "explicitly"
        ) from err
    model_type = getattr(config, "model_type", None)
    architectures = list(getattr(config, "architectures", None) or [])
    kwargs: dict[str, Any] = {}
    if model_type == "clip":  # a whole CLIP model: its vision tower and projection
        vision = config.vision_config
        vision.projection_dim = config.projection_dim
        cls, kwargs["config"] = transformers.CLIPVisionModelWithProjection, vision
    elif model_type == "clip_vision_model":
        cls = (transformers.CLIPVisionModelWithProjection if any("WithProjection" in a for a in architectures)
               else transformers.CLIPVisionModel)
    elif model_type in ("siglip", "siglip_vision_model"):
        cls = transformers.SiglipVisionModel
        if model_type == "siglip":
            kwargs["config"] = config.vision_config
    elif model_type == "vit":
        cls, kwargs["add_pooling_layer"] = transformers.ViTModel, False
    elif model_type == "dinov2":
        cls = transformers.Dinov2Model
    elif model_type == "resnet":
        cls = transformers.ResNetModel
    else:
        cls = transformers.AutoModel
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the load report lists a whole CLIP's text weights as unexpected
    try:
        model, info = cls.from_pretrained(name, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise ImageEncoderError(f"cannot load image encoder {name!r} as {cls.__name__}: {type(err).__name__}: "
                                f"{(str(err).strip().splitlines() or [''])[0][:200]}") from err
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing = sorted(set(info.get("missing_keys") or ()) | set(info.get("mismatched_keys") or ()))
    if missing:
        shown = ", ".join(map(str, missing[:4])) + (", ..." if len(missing) > 4 else "")
        raise ImageEncoderError(
            f"image encoder {name!r} lacks {len(missing)} weights of {cls.__name__} ({shown}): they would be randomly "
            "initialised; pass a complete checkpoint"
        )
    return model


def load_image_processor(name: str):
    """The ``AutoImageProcessor`` saved with checkpoint ``name``, or ``None`` when it has none (the fallback
    resize / crop / ImageNet normalisation is used)."""
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "preprocessor_config.json")):
        return None
    import transformers
    from transformers import AutoImageProcessor

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "falling back to the PIL backend" without torchvision
    try:
        return AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        logger.info("no image processor for %s (%s): resize / centre crop / ImageNet normalisation", name, err)
        return None
    finally:
        transformers.logging.set_verbosity(verbosity)


def processor_image_size(processor) -> int | None:
    """The side of the images an image processor gives (its crop, else its size), or ``None``."""
    if processor is None:
        return None

    def side(value):
        if value is None:
            return None
        get = value.get if isinstance(value, Mapping) else (lambda k: getattr(value, k, None))
        return get("height") or get("shortest_edge")

    if getattr(processor, "do_center_crop", False):
        crop = side(getattr(processor, "crop_size", None))
        if crop:
            return int(crop)
    size = side(getattr(processor, "size", None))
    return int(size) if size else None



# ----------------------------------------------------------------------------------------------------------------------
# Identity: recorded at training, checked at inference
# ----------------------------------------------------------------------------------------------------------------------
def describe_image_encoder(identity: Mapping[str, Any] | None) -> str:
    """One phrase naming an encoder identity: ``'NAME' (feature D-d, S px, preprocessing, weights sha256 abc...)``."""
    if not identity:
        return "an unrecorded image encoder"
    random_note = f", random seed {identity.get('seed')}" if identity.get("random") else ""
    return (f"{str(identity.get('name'))!r} ({identity.get('feature')} {identity.get('feature_dim')}-d, "
            f"{identity.get('image_size')} px, {identity.get('preprocessing')}{random_note}, weights sha256 "
            f"{str(identity.get('weights_sha256') or '?')[:12]})")


def image_encoder_mismatch(recorded: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """The identity fields (:data:`_IDENTITY_CHECKED`: weights fingerprint, feature kind, size, input size,
    preprocessing) on which two encoders differ; empty when they give the same features."""
    return [k for k in _IDENTITY_CHECKED if recorded.get(k) is not None and recorded.get(k) != actual.get(k)]


def check_image_encoder(recorded: Mapping[str, Any] | None, extractor: Any, what: str = "the model",
                        fix: str = "drop --image_model to use the recorded encoder") -> None:
    """:class:`ImageEncoderError` (one line naming both encoders, what differs, and ``fix``) when ``extractor`` is not
    the encoder ``recorded`` (an :attr:`ImageFeatureExtractor.identity`); nothing when either is unknown."""
    actual = getattr(extractor, "identity", None)
    if not recorded or not isinstance(actual, Mapping):
        dim = getattr(extractor, "feature_dim", None)
        if recorded and dim is not None and recorded.get("feature_dim") not in (None, int(dim)):
            raise ImageEncoderError(
                f"{what} was trained with {recorded.get('feature_dim')}-d image features from "
                f"{describe_image_encoder(recorded)}, but the given image extractor gives {dim}-d; {fix}"
            )
        return
    differ = image_encoder_mismatch(recorded, actual)
    if differ:
        raise ImageEncoderError(
            f"image encoder mismatch: {what} was trained with {describe_image_encoder(recorded)}, but "
            f"{describe_image_encoder(actual)} was given (different {', '.join(differ)}); {fix}"
        )


def recorded_image_encoder(processor: Any = None, model: Any = None) -> dict | None:
    """The image encoder identity a model was trained with: its processor's ``image_encoder`` (saved in
    ``processor_config.json``), else ``None`` (a model saved before identities were recorded, or text only)."""
    value = getattr(processor, "image_encoder", None)
    return dict(value) if isinstance(value, Mapping) and value.get("weights_sha256") else None


def read_recorded_image_encoder(model_dir: str | os.PathLike | None) -> dict | None:
    """:func:`recorded_image_encoder` of a saved model folder, read from its ``processor_config.json`` (no loading)."""
    if not model_dir:
        return None
    path = os.path.join(os.fspath(model_dir), "processor_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("image_encoder")
    except (OSError, ValueError, AttributeError):
        return None
    return dict(value) if isinstance(value, Mapping) and value.get("weights_sha256") else None



__all__ = [
    "DEFAULT_IMAGE_MODEL",
    "FEATURE_KINDS",
    "IDENTITY_KEYS",
    "ImageEncoderError",
    "RANDOM_ENCODERS",
    "RANDOM_PREFIX",
    "TINY_ALIAS",
    "TINY_IMAGE_ENCODER",
    "build_random_encoder",
    "check_image_encoder",
    "describe_image_encoder",
    "image_encoder_mismatch",
    "load_encoder",
    "load_image_processor",
    "model_class_for_config",
    "processor_image_size",
    "random_encoder_config",
    "read_recorded_image_encoder",
    "recorded_image_encoder",
    "tiny_resnet_config",
    "weights_fingerprint",
]
