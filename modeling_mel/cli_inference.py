"""What the inference commands of ``mel`` share (``index``, ``link``, ``calibrate``, ``serve``; each lives in its own
``cli_<command>.py``, listed in :data:`modeling_mel.cli.COMMANDS`): loading a saved model and its image encoder, the
common options (``--device``, images, ``--allow_weight_mismatch``), the precision an entity index was built in, the
checks of an input row's span and boxes, and the linking pipeline of ``mel link`` / ``mel serve``.
"""

from __future__ import annotations

import argparse
import json
import logging
import numbers
import os
from typing import Any

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Loading a model
# ----------------------------------------------------------------------------------------------------------------------


def load_model_and_processor(
    path: str, trust_remote_code: bool = False, device: Any = None, allow_weight_mismatch: bool = False
) -> tuple[Any, Any]:
    """A saved linking model (PFMEL or ZEMEL) and its processor, in eval mode, on ``device`` (default CPU).

    ``ValueError`` (one line, exit code 2) when the weight-load report of the model's own class has missing,
    unexpected or reshaped weights (e.g. a ZEMEL ``config.json`` beside a PFMEL ``model.safetensors``: every weight
    would be random), unless ``allow_weight_mismatch`` (``--allow_weight_mismatch``), which logs it instead."""
    import modeling_mel  # noqa: F401 - registers the Auto classes
    from transformers import AutoModel, AutoProcessor

    from .model_files import load_pretrained
    from .weight_checks import weight_mismatch_message

    if not os.path.isdir(path) and not trust_remote_code and "/" not in path:
        raise SystemExit(f"mel: model {path!r} is not a directory; pass a saved model folder or a hub id")
    # a damaged folder (truncated config.json or weights, no weights, a pickle torch refuses, a config.json edited
    # after saving): a ValueError naming the file and the fix (model_files.load_pretrained), not the loader's traceback
    model, info = load_pretrained(AutoModel, path, trust_remote_code=trust_remote_code, output_loading_info=True)
    model = model.eval()
    problem = weight_mismatch_message(path, model, info.get("missing_keys") or (), info.get("unexpected_keys") or (),
                                      info.get("mismatched_keys") or (), option="--allow_weight_mismatch")
    if problem is not None:
        if not allow_weight_mismatch:
            raise ValueError(problem)
        logger.warning("--allow_weight_mismatch: %s", problem)
    if device is not None:
        model = model.to(device)
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001
        raise SystemExit(f"mel: no processor could be loaded from {path!r} ({err}); save the processor with the model") from err
    return model, processor


def build_image_extractor(args: argparse.Namespace, model: Any, processor: Any = None) -> Any:
    """The image feature extractor of a model, on the model's device, or ``None`` (``--no_images``): the encoder
    recorded at training (``processor``'s ``image_encoder``: no image flag needed), or ``--image_model`` checked
    against it (``ImageEncoderError``, a ``ValueError`` naming both: exit code 2); for a model saved before encoders
    were recorded, ``--image_model`` or ``microsoft/resnet-50`` (an error naming ``random:resnet-50`` when it cannot
    be loaded)."""
    if getattr(args, "no_images", False):
        return None
    from .image_encoders import recorded_image_encoder
    from .image_features import ImageFeatureExtractor, extractor_for

    kwargs: dict[str, Any] = {"cache_dir": args.image_cache} if getattr(args, "image_cache", None) else {}
    if getattr(model, "device", None) is not None:
        kwargs["device"] = model.device
    if getattr(args, "max_image_pixels", None) is not None:
        kwargs["max_image_pixels"] = args.max_image_pixels
    recorded = recorded_image_encoder(processor)
    if getattr(args, "features", None):  # extract once: the cache made by mel features, checked against the model
        from .feature_cache import open_features

        return open_features(args.features, image_model=getattr(args, "image_model", None), recorded=recorded,
                             what=f"the model {args.model}", strict=getattr(args, "strict_images", False),
                             **{k: v for k, v in kwargs.items() if k == "max_image_pixels"})
    if recorded is not None:
        return extractor_for(recorded, getattr(args, "image_model", None), what=f"the model {args.model}",
                             strict=getattr(args, "strict_images", False), **kwargs)
    if getattr(args, "image_model", None):
        return ImageFeatureExtractor(args.image_model, strict=getattr(args, "strict_images", False), **kwargs)
    expected = int(getattr(model.config, "image_feature_dim", getattr(model.config, "v_feature_dim", 2048)))
    if expected != 2048:
        raise SystemExit(
            f"mel: the model expects {expected}-d image features; pass --image_model DIR (a ResNet giving "
            f"{expected}-d features) or --no_images"
        )
    return ImageFeatureExtractor(strict=getattr(args, "strict_images", False), **kwargs)


def _load_kb_arg(kb: str) -> Any:
    """A ``--kb`` argument: a jsonl path as is; a ``save_to_disk`` dataset folder loaded with datasets."""
    if os.path.isdir(kb) and os.path.isfile(os.path.join(kb, "dataset_info.json")):
        import datasets

        return datasets.load_from_disk(kb)
    return kb


# ----------------------------------------------------------------------------------------------------------------------
# Options shared by the commands
# ----------------------------------------------------------------------------------------------------------------------


def _add_image_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image_model", default=None,
                        help="image encoder (transformers vision checkpoint dir or hub id, or random:<arch>); default: "
                             "the one recorded in the model's processor config at training, and another one is refused "
                             "(exit code 2); models without a record: microsoft/resnet-50")
    parser.add_argument("--image_cache", default=None, help="directory of the on-disk image feature cache")
    parser.add_argument("--no_images", action="store_true", help="ignore images (text-only linking)")
    parser.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help=f"largest image decoded, in pixels (width x height; default {DEFAULT_MAX_IMAGE_PIXELS:,}, "
                        "well under PIL's decompression-bomb limit): a larger one is refused from its header, before "
                        "decoding, and counts as unreadable (a 13000x13000 1-bit PNG is 20 KB on disk, 2.1 GB decoded)")


#: ``--max_image_pixels`` default: ``image_features.DEFAULT_MAX_IMAGE_PIXELS`` (not imported here: ``mel <command>
#: --help`` starts without torch).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


def _add_weight_mismatch_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow_weight_mismatch", action="store_true",
                        help="load a model whose checkpoint lacks some of its weights (left random) or holds others "
                             "(research; by default that is an error: config.json and weights of different models)")


def _add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device`` of the inference commands (:func:`modeling_mel.hardware.resolve_device`)."""
    parser.add_argument(
        "--device", default="auto",
        help="where the model, the KB vectors and every batch run: auto (default: CUDA when available, else MPS, "
        "else CPU), cpu, cuda, cuda:N or mps. FAISS search stays on the CPU. On a GPU with bf16 support the model "
        "runs under bf16 autocast unless --fp32",
    )


def _device_of(args: argparse.Namespace, local_rank: int | None = None) -> Any:
    """The ``torch.device`` of ``--device`` (``ValueError`` naming it and what this machine has: exit code 2)."""
    from .hardware import resolve_device

    return resolve_device(getattr(args, "device", "auto"), local_rank=local_rank)


def _positive_options_error(args: argparse.Namespace, names: tuple[str, ...]) -> str | None:
    """``"--NAME must be >= 1, got V"`` for the first of the integer options ``names`` set below 1, else ``None``."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            return f"--{name} must be >= 1, got {value}"
    return None


def _os_error_text(err: OSError) -> str:
    """``ENOSPC: No space left on device``: the errno name and text of an OSError (its message when it has none)."""
    import errno

    if err.errno:
        return f"{errno.errorcode.get(err.errno, 'errno ' + str(err.errno))}: {err.strerror or os.strerror(err.errno)}"
    return " ".join(str(err).split()) or type(err).__name__


def _index_precision(index_dir: str | None) -> bool | None:
    """The precision a dense entity index was encoded in, from its ``index_config.json`` (``bf16``): ``True`` (bf16),
    ``False`` (fp32), or ``None`` (no index, a metadata-only index, or not recorded)."""
    if not index_dir:
        return None
    try:
        with open(os.path.join(index_dir, "index_config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None  # the index loader reports an unreadable config
    if not isinstance(config, dict) or config.get("kind") == "bm25" or not isinstance(config.get("bf16"), bool):
        return None
    return config["bf16"]


def _precision_setting(args: argparse.Namespace, index_dir: str | None, device: Any, prog: str) -> bool | None:
    """The pipeline's ``bf16`` for a command that reads an entity index: ``--fp32`` / ``--bf16`` when given, else the
    precision the index was encoded in (its ``index_config.json``), so the mentions are encoded as the entities were
    (fp32 instead of a recorded bf16 where this device has no native bf16 kernels, with a warning);
    ``None`` (bf16 where this machine has native bf16 kernels, ``modeling_mel.hardware.bf16_is_fast``) without a
    recorded precision. Says what it chose and why in one log line (a warning when it differs from the index's)."""
    forced = True if getattr(args, "bf16", False) else (False if getattr(args, "fp32", False) else None)
    recorded = _index_precision(index_dir)
    if recorded is None:
        return forced
    name = {True: "bf16", False: "fp32"}
    if forced is None:
        from .hardware import bf16_is_fast

        if recorded and not bf16_is_fast(getattr(device, "type", str(device))):
            # bf16 without native kernels runs many times slower than fp32 (70x on an AVX2-only CPU): not worth it
            logger.warning("%s: entity index %s was built in bf16, but this machine has no native bf16 kernels: running "
                           "the model in fp32 (scores differ from the index's precision by about 1e-2; --bf16 to "
                           "force bf16)", prog, index_dir)
            return False
        logger.info("%s: running the model in %s, the precision entity index %s was built in (--fp32 / --bf16 to "
                    "choose)", prog, name[recorded], index_dir)
        return recorded
    if forced != recorded:
        logger.warning("%s: running the model in %s (--%s), but entity index %s was built in %s: scores differ from an "
                       "all-%s run by about 1e-2; rebuild the index with the same precision to match", prog,
                       name[forced], name[forced], index_dir, name[recorded], name[recorded])
    return forced


# ----------------------------------------------------------------------------------------------------------------------
# Input rows (mel link, mel calibrate)
# ----------------------------------------------------------------------------------------------------------------------


def _check_offset(name: str, value: Any) -> Any:
    """A ``mention_start``/``mention_end`` value: an int (an integral float becomes one), a string or None is kept
    for the pipeline's own check; a bool, a fractional float or any other type is a ``ValueError``."""
    if value is None or isinstance(value, str):
        return value
    fractional = isinstance(value, float) and not value.is_integer()
    # numbers.Integral: numpy integers (np.int64 offsets of a DataFrame or a datasets column) are integers too
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float)) or fractional:
        raise ValueError(f"{name} must be an integer, got {json.dumps(value, default=repr)[:80]}")
    return int(value)


def _check_boxes(boxes: Any) -> None:
    """``ValueError`` unless ``boxes`` is a list of ``[x1, y1, x2, y2]`` number lists."""
    ok = isinstance(boxes, list) and all(
        isinstance(box, list) and len(box) == 4
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in box)
        for box in boxes
    )
    if not ok:
        raise ValueError(f"boxes must be a list of [x1, y1, x2, y2] number lists, got {json.dumps(boxes)[:80]}")


# ----------------------------------------------------------------------------------------------------------------------
# The linking pipeline (mel link, mel serve)
# ----------------------------------------------------------------------------------------------------------------------


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    """The arguments that build a linking pipeline (``mel link``, ``mel serve``): model, KB or index, retriever,
    images, precision; :func:`build_pipeline` reads them."""
    parser.add_argument("--model", required=True, help="saved PFMEL or ZEMEL model folder")
    kb_group = parser.add_mutually_exclusive_group(required=True)
    kb_group.add_argument("--index", help="entity index directory (mel index)")
    kb_group.add_argument("--kb", help="kb.jsonl (ZEMEL models encode it at start-up)")
    parser.add_argument(
        "--retriever", default=None,
        help="PFMEL (retrieve-then-rerank): 'bm25' adds BM25 candidates to the name rule; an entity index dir built by "
        "a ZEMEL model (mel index) adds its dense top-k, reranked by the NSP model with the retriever score fused",
    )
    parser.add_argument("--retriever_model", default=None,
                        help="the ZEMEL model folder of --retriever (default: the model recorded in the index)")
    parser.add_argument("--strict_images", action="store_true", help="fail a mention with an unreadable image")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp32", action="store_true",
                           help="run the model in fp32 (default: the precision the --index was built in, recorded in "
                           "its index_config.json; else bf16 autocast where this machine has native bf16 kernels)")
    precision.add_argument("--bf16", action="store_true",
                           help="run the model under bf16 autocast on any machine (benchmarks, GPUs)")
    parser.add_argument("--trust_remote_code", action="store_true", help="load the model with its own code")
    _add_weight_mismatch_arg(parser)
    _add_device_arg(parser)
    _add_image_args(parser)


def pipeline_argument_error(args: argparse.Namespace) -> str | None:
    """A one-line problem with the :func:`add_pipeline_args` arguments found before any model is loaded, or ``None``."""
    try:
        _device_of(args)
    except ValueError as err:
        return str(err)
    problem = _positive_options_error(args, ("max_image_pixels",))
    if problem is not None:
        return problem
    if args.index and not os.path.isfile(os.path.join(args.index, "index_config.json")):
        return f"--index {args.index!r} is not an entity index directory (no index_config.json); build one with mel index"
    if args.kb and not os.path.exists(args.kb):
        return f"--kb {args.kb!r} does not exist"
    if args.retriever and args.retriever != "bm25" and not os.path.isfile(os.path.join(args.retriever, "index_config.json")):
        return f"--retriever {args.retriever!r} is neither 'bm25' nor an entity index directory (build one with mel index)"
    return None


def build_pipeline(args: argparse.Namespace) -> Any:
    """The ``multimodal-entity-linking`` pipeline of the :func:`add_pipeline_args` arguments on ``--device``
    (``ValueError`` for a bad KB, index, retriever or device)."""
    from transformers import pipeline

    from .pipeline_entity_linking import MultimodalEntityLinkingPipeline

    device = _device_of(args)
    model, processor = load_model_and_processor(args.model, args.trust_remote_code, device,
                                                allow_weight_mismatch=getattr(args, "allow_weight_mismatch", False))
    extractor = build_image_extractor(args, model, processor)
    init: dict[str, Any] = {"use_images": not args.no_images, "strict_images": args.strict_images,
                            "allow_weight_mismatch": bool(getattr(args, "allow_weight_mismatch", False)),
                            "max_image_pixels": getattr(args, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)}
    # --fp32 / --bf16, else the precision the --index was built in, else None: bf16 where this machine has native
    # bf16 kernels (decided from the hardware, so mel index and mel link / serve agree)
    init["bf16"] = _precision_setting(args, args.index, device, "mel link" if hasattr(args, "input") else "mel serve")
    if extractor is not None:
        init["image_extractor"] = extractor
    if args.retriever:
        init["retriever"] = args.retriever
        if args.retriever_model:
            init["retriever_model"] = args.retriever_model
    return pipeline(
        "multimodal-entity-linking", model=model, processor=processor, kb=args.index or _load_kb_arg(args.kb),
        pipeline_class=MultimodalEntityLinkingPipeline, device=device, **init,
    )


__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "add_pipeline_args",
    "build_image_extractor",
    "build_pipeline",
    "load_model_and_processor",
    "pipeline_argument_error",
]
