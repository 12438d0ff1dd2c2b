"""Inference and data subcommands of ``mel``: ``index``, ``link``, ``calibrate``, ``serve``, ``model-card``,
``build-dataset``, ``export-dataset`` (listed in :data:`modeling_mel.cli.COMMANDS`).

Each function takes ``argv`` (its own arguments, so ``mel <name> --help`` shows them) and returns an exit code.

    mel index --model M --kb kb.jsonl --out kb_index
    mel link --model M --index kb_index --input mentions.jsonl --output links.jsonl
    mel model-card --model M --results eval_results.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import numbers
import os
import sys
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)

Command = Callable[[list[str]], "int | None"]


# ----------------------------------------------------------------------------------------------------------------------
# Shared loading
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
    from .pipeline_entity_linking import weight_mismatch_message

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
    from .image_features import ImageFeatureExtractor, extractor_for, recorded_image_encoder

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
# mel index
# ----------------------------------------------------------------------------------------------------------------------

try:  # raised by safetensors' save_file for a full disk (not an OSError)
    from safetensors import SafetensorError as _SafetensorError

    _SAFETENSORS_ERRORS: tuple[type[BaseException], ...] = (_SafetensorError,)
except ImportError:  # pragma: no cover - safetensors comes with transformers
    _SAFETENSORS_ERRORS = ()


def _index_error_text(err: BaseException, out: str) -> str:
    """One line for a ``mel index`` error; a write error that names no file names the index (``out``)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and not err.filename and err.errno:
        return f"writing the entity index {out!r} failed ({_os_error_text(err)}); free disk space and run again"
    if not isinstance(err, (ValueError, OSError)):
        return f"writing the entity index {out!r} failed ({type(err).__name__}: {text}); free disk space and run again"
    return text



def index_main(argv: list[str]) -> int:
    """``mel index``: encode a KB once with a ZEMEL model's candidate encoder and save a FAISS entity index."""
    parser = argparse.ArgumentParser(
        prog="mel index",
        description="Encode a KB once with a ZEMEL model and save an entity index (vectors, FAISS index, metadata). "
        "With a PFMEL model or --bm25_only, save a metadata-only index (name rule / BM25 candidates).",
    )
    parser.add_argument("--model", default=None, help="saved ZEMEL model folder (or PFMEL: metadata-only index)")
    parser.add_argument("--kb", required=True, help="kb.jsonl (mel_jsonl layout) or a dataset saved with save_to_disk")
    parser.add_argument("--out", required=True, help="output directory of the index")
    parser.add_argument("--batch_size", type=int, default=64, help="entities per forward pass")
    parser.add_argument("--max_length", type=int, default=64, help="token limit of an entity (name + description)")
    parser.add_argument("--index_type", choices=("auto", "flat", "hnsw", "ivf", "ivfpq", "ivfsq8", "hnswsq8"),
                        default="auto",
                        help="flat = exact inner product; hnsw / ivf = approximate over float32 vectors; ivfpq, ivfsq8, "
                        "hnswsq8 = compressed codes (PQ: pq_m bytes a vector; SQ8: 1 byte a dimension); auto = flat "
                        "below --hnsw_threshold entities, HNSW above, or, with --memory_budget, the most exact that fits")
    parser.add_argument("--memory_budget", default=None,
                        help="memory for the index and the rerank vectors, e.g. 4GB; 'auto' picks the index type by it "
                        "and vectors are kept for the exact rerank only when they fit")
    parser.add_argument("--store_vectors", choices=("auto", "yes", "no"), default="auto",
                        help="keep the exact float32 vectors for the poly rerank (auto: when they fit --memory_budget; "
                        "no: the rerank runs on vectors decoded from the compressed codes)")
    parser.add_argument("--hnsw_threshold", type=int, default=100_000, help="KB size from which 'auto' uses HNSW")
    parser.add_argument("--ef_search", type=int, default=512, help="HNSW search depth (recall vs speed)")
    parser.add_argument("--ivf_nlist", type=int, default=None, help="IVF lists (default 4 sqrt(N))")
    parser.add_argument("--ivf_nprobe", type=int, default=None, help="IVF lists searched a query (default nlist / 8)")
    parser.add_argument("--pq_m", type=int, default=None, help="PQ bytes a vector (a divisor of the dim; default dim / 4)")
    parser.add_argument("--shard_size", type=int, default=None,
                        help="encode the KB in shards of this many entities, each saved with a completion marker in "
                        "--shard_dir: a killed run restarted with the same command reuses finished shards; under "
                        "torchrun / accelerate launch the shards are spread over the processes (default there 50000)")
    parser.add_argument("--shard_dir", default=None, help="folder of the shards (default <out>.shards)")
    parser.add_argument("--keep_shards", action="store_true", help="keep the shard folder after the index is saved")
    parser.add_argument("--bm25_only", action="store_true", help="metadata-only index, no model needed")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp32", action="store_true",
                           help="encode the KB in fp32 (default: bf16 autocast where this machine has native bf16 "
                           "kernels: AVX512-BF16 / AMX CPUs, bf16 GPUs); the precision is recorded in the index, and "
                           "mel link / serve / calibrate --index run the model in it")
    precision.add_argument("--bf16", action="store_true", help="encode the KB under bf16 autocast on any machine")
    parser.add_argument("--trust_remote_code", action="store_true", help="load the model with its own code")
    _add_weight_mismatch_arg(parser)
    _add_device_arg(parser)
    _add_image_args(parser)
    parser.add_argument("--features", default=None,
                        help="feature cache of the KB images made by mel features (refused when its encoder is not "
                             "the model's; a KB image not in it is an error naming the fix)")
    args = parser.parse_args(argv)

    if not args.bm25_only and not args.model:
        parser.error("--model is required (or --bm25_only for a metadata-only index)")
    problem = _positive_options_error(args, ("batch_size", "max_length", "hnsw_threshold", "ef_search", "ivf_nlist",
                                             "ivf_nprobe", "pq_m", "shard_size", "max_image_pixels"))
    if problem is not None:
        print(f"mel index: {problem}", file=sys.stderr)
        return 2

    from .entity_index import EntityIndex, check_index_destination, index_write_lock, parse_memory
    from .knowledge_base import linking_method

    store_vectors = {"auto": None, "yes": True, "no": False}[args.store_vectors]
    try:
        parse_memory(args.memory_budget)
    except ValueError as err:
        parser.error(f"--memory_budget: {err}")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    # under torchrun / accelerate launch each process takes its own GPU (cuda:LOCAL_RANK) with auto / cuda
    device = _device_of(args, int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else None)
    if args.shard_size is not None or world > 1:
        return _index_sharded(args, world, device)
    # The folder is locked and checked before the (possibly long) encoding; the index is written atomically, so a
    # failure or a kill leaves the previous index as it was. Errors: one line on stderr, exit code 2.
    try:
        with index_write_lock(args.out):
            check_index_destination(args.out)
            kb = _load_kb_arg(args.kb)
            model = processor = extractor = None
            if not args.bm25_only:
                model, processor = load_model_and_processor(args.model, args.trust_remote_code, device,
                                                            allow_weight_mismatch=args.allow_weight_mismatch)
                if linking_method(model) != "dense":
                    logger.warning("%s is a PFMEL model (no candidate encoder): writing a metadata-only index", args.model)
                    model = processor = None
                else:
                    extractor = build_image_extractor(args, model, processor)
            start = time.perf_counter()
            index = EntityIndex.build(
                model, processor, kb, batch_size=args.batch_size, index_type=args.index_type,
                hnsw_threshold=args.hnsw_threshold, image_extractor=extractor, max_length=args.max_length,
                ef_search=args.ef_search, bf16=False if model is None else _encoding_bf16(args, model),
                memory_budget=args.memory_budget, store_vectors=store_vectors, ivf_nlist=args.ivf_nlist,
                ivf_nprobe=args.ivf_nprobe, pq_m=args.pq_m,
            )
            index.save(args.out)
    except (ValueError, OSError, *_SAFETENSORS_ERRORS) as err:  # a full disk while writing: one line too
        print(f"mel index: {_index_error_text(err, args.out)}", file=sys.stderr)
        return 2
    logger.info("indexed %d entities in %.1f s -> %s (%r)", len(index), time.perf_counter() - start, args.out, index)
    return 0


def _encoding_bf16(args: argparse.Namespace, model: Any) -> bool:
    """``mel index``: encode the KB in bf16 with ``--bf16``, in fp32 with ``--fp32``, else where this machine has native
    bf16 kernels (:func:`modeling_mel.hardware.bf16_is_fast`: the hardware decides, the same answer every run)."""
    from .hardware import bf16_is_fast

    return True if getattr(args, "bf16", False) else False if args.fp32 else bf16_is_fast(model.device.type)


def _index_sharded(args: argparse.Namespace, world: int, device: Any = None) -> int:
    """``mel index --shard_size`` / under torchrun or accelerate launch: sharded, resumable encoding
    (:mod:`modeling_mel.sharded_index`) on ``device`` (this process's own); the main process merges the shards and
    saves the index."""
    from .knowledge_base import linking_method
    from .sharded_index import build_sharded

    rank = int(os.environ.get("RANK", "0"))
    store_vectors = {"auto": None, "yes": True, "no": False}[args.store_vectors]
    try:
        model = processor = None
        if not args.bm25_only:
            model, processor = load_model_and_processor(args.model, args.trust_remote_code, device,
                                                        allow_weight_mismatch=args.allow_weight_mismatch)
        if model is None or linking_method(model) != "dense":
            if rank != 0:
                return 0  # a metadata-only index: nothing to encode, the main process writes it
            raise ValueError("sharded indexing encodes the KB with a ZEMEL model; drop --shard_size for a metadata-only index")
        start = time.perf_counter()
        index = build_sharded(
            model, processor, _load_kb_arg(args.kb), args.out, shard_size=args.shard_size or 50_000,
            shard_dir=args.shard_dir, keep_shards=args.keep_shards, batch_size=args.batch_size,
            max_length=args.max_length, bf16=_encoding_bf16(args, model),
            image_extractor=build_image_extractor(args, model, processor), index_type=args.index_type,
            memory_budget=args.memory_budget, store_vectors=store_vectors, hnsw_threshold=args.hnsw_threshold,
            ef_search=args.ef_search, ivf_nlist=args.ivf_nlist, ivf_nprobe=args.ivf_nprobe, pq_m=args.pq_m,
            device=device,
        )
    except (ValueError, OSError, *_SAFETENSORS_ERRORS) as err:  # a full disk while writing: one line too
        print(f"mel index: {_index_error_text(err, args.out)}", file=sys.stderr)
        return 2
    if index is not None:
        logger.info("indexed %d entities in %.1f s over %d processes -> %s (%r)", len(index),
                    time.perf_counter() - start, world, args.out, index)
    return 0


def _load_kb_arg(kb: str) -> Any:
    """A ``--kb`` argument: a jsonl path as is; a ``save_to_disk`` dataset folder loaded with datasets."""
    if os.path.isdir(kb) and os.path.isfile(os.path.join(kb, "dataset_info.json")):
        import datasets

        return datasets.load_from_disk(kb)
    return kb


# ----------------------------------------------------------------------------------------------------------------------
# mel link
# ----------------------------------------------------------------------------------------------------------------------


def _resolve_image(row: dict, base_dir: str) -> dict:
    image = row.get("image")
    if isinstance(image, str) and image and not os.path.isabs(image):
        row = dict(row, image=os.path.join(base_dir, image))
    return row


#: ``mel link`` writes ``<output>.partial`` line by line and renames it onto ``<output>`` when every line is done.
PARTIAL_SUFFIX = ".partial"
_UTF8_BOM = b"\xef\xbb\xbf"
_PIPELINE_KEYS = ("text", "mention", "mention_start", "mention_end", "image", "boxes")


def _split_input_lines(data: bytes) -> list[bytes]:
    """The lines of a JSONL file's bytes, split on ``\\n`` only (U+2028 and friends stay inside their line).

    A leading UTF-8 BOM is dropped, a ``\\r`` before the ``\\n`` too; a final newline ends the last line (it does not
    start an empty one), an empty line in the middle stays a line.
    """
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _decode_line(raw: bytes) -> str:
    """One input line as text; ``ValueError`` naming the byte position when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"not valid UTF-8: byte 0x{raw[err.start]:02x} at byte position {err.start} of the line ({err.reason})"
        ) from None


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


def _error_text(err: BaseException) -> str:
    """The ``error`` field of a failed line: a ValueError's message as is, other exceptions with their type."""
    return str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"


def _parse_line(pipe: Any, raw: bytes, n: int, base_dir: str) -> tuple[dict[str, Any], dict | None]:
    """The output record of input line ``n`` and its pipeline input (``None`` when the record is an error)."""
    record: dict[str, Any] = {"line": n}
    try:
        line = _decode_line(raw)
        if not line.strip():
            record["error"] = "empty line"
            return record, None
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            record["error"] = f"not valid JSON: {err}"
            return record, None
        if not isinstance(row, dict):
            record["error"] = f"a JSON {type(row).__name__}, expected an object with text and mention"
            return record, None
        record["id"] = row.get("id")
        if row.get("entity_id") is not None:
            record["gold"] = str(row["entity_id"])
        item = dict(row, mention_start=_check_offset("mention_start", row.get("mention_start")),
                    mention_end=_check_offset("mention_end", row.get("mention_end")))
        if item.get("boxes") is not None:
            _check_boxes(item["boxes"])
        item = _resolve_image(item, base_dir)
        pipe._check_input(item)
        record["mention"] = item.get("mention") if item.get("mention") is not None else \
            item["text"][int(item["mention_start"]) : int(item["mention_end"])]
    except Exception as err:  # noqa: BLE001 - one bad line must not stop the run
        record["error"] = _error_text(err)
        return record, None
    return record, {k: item.get(k) for k in _PIPELINE_KEYS if item.get(k) is not None}


def _dump_record(record: dict) -> bytes:
    """One output line (UTF-8, ``\\n``-terminated); strings a UTF-8 encoder refuses (lone surrogates) are escaped."""
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record) + "\n").encode("ascii")


def _count_record(counts: dict[str, int], record: dict) -> None:
    """Add one output record to the counts of :func:`link_file`."""
    counts["lines"] += 1
    if "error" in record:
        counts["errors"] += 1
        return
    counts["linked"] += 1
    if "gold" in record:
        counts["with_gold"] += 1
        preds = record.get("predictions") or []
        counts["correct@1"] += int(bool(preds) and preds[0].get("entity_id") == record["gold"])


def _input_id(raw: bytes) -> Any:
    """The ``id`` an output record of this input line carries (``None`` when the line is not a JSON object)."""
    try:
        row = json.loads(_decode_line(raw))
    except ValueError:
        return None
    return row.get("id") if isinstance(row, dict) else None


def _resumable_records(partial_path: str, raw_lines: list[bytes]) -> tuple[list[dict], int]:
    """The complete records at the start of an earlier run's partial output, and their size in bytes.

    A record is kept while it is a whole ``\\n``-terminated line of valid JSON with the next ``line`` number (from 1),
    a result (``predictions`` or ``error``) and the ``id`` of that input line; the first one that is not (a torn last
    line, a line of another input file) ends the kept part.
    """
    try:
        with open(partial_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], 0
    kept: list[dict] = []
    size = 0
    for piece in data.split(b"\n")[:-1]:  # the last piece has no newline: empty, or torn by the kill
        n = len(kept) + 1
        if n > len(raw_lines):
            break
        try:
            record = json.loads(piece.decode("utf-8"))
        except ValueError:
            break
        if not isinstance(record, dict) or type(record.get("line")) is not int or record["line"] != n:
            break
        if ("error" in record) == ("predictions" in record) or record.get("id") != _input_id(raw_lines[n - 1]):
            break
        kept.append(record)
        size += len(piece) + 1
    if size < len(data):
        logger.warning("%s: dropping %d bytes after the %d complete lines", partial_path, len(data) - size, len(kept))
    return kept, size


#: Beside ``<output>.partial``: the fingerprint of the input file and of the options it was started with.
META_SUFFIX = ".meta.json"
#: The files of a model / index / dataset folder whose change changes the links (their size and mtime are recorded).
_SIGNATURE_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "nil_calibration.json", "index_config.json", "dataset_info.json", "state.json")


def _os_error_text(err: OSError) -> str:
    """``ENOSPC: No space left on device``: the errno name and text of an OSError (its message when it has none)."""
    import errno

    if err.errno:
        return f"{errno.errorcode.get(err.errno, 'errno ' + str(err.errno))}: {err.strerror or os.strerror(err.errno)}"
    return " ".join(str(err).split()) or type(err).__name__


def _path_signature(path: str | None) -> Any:
    """A file or folder argument as ``{"path", "files": {name: "size:mtime_ns"}}`` (``bm25``, hub ids, ``None`` as
    they are): what :func:`_resume_changes` compares to tell that a model, KB or index changed."""
    if not path or path == "bm25":
        return path
    full = os.path.abspath(path)
    if not os.path.exists(full):
        return {"path": path}
    names = [""] if os.path.isfile(full) else _SIGNATURE_FILES
    files = {}
    for name in names:
        file = os.path.join(full, name) if name else full
        if os.path.isfile(file):
            st = os.stat(file)
            files[name or os.path.basename(full)] = f"{st.st_size}:{st.st_mtime_ns}"
    return {"path": full, "files": files}


def _input_fingerprint(input_path: str, data: bytes) -> dict:
    import hashlib

    return {"path": os.path.abspath(input_path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def link_fingerprint(args: argparse.Namespace) -> dict:
    """The ``mel link`` options whose change changes the output lines (model, KB / index, retriever, top_k,
    candidates, images, precision...), JSON-normalised; recorded beside ``<output>.partial`` when it is started and
    compared on ``--resume``. The batch size, the device and the image cache are left out (same links)."""
    options = {
        "--model": _path_signature(args.model),
        "--kb": _path_signature(getattr(args, "kb", None)),
        "--index": _path_signature(getattr(args, "index", None)),
        "--retriever": _path_signature(getattr(args, "retriever", None)),
        "--retriever_model": _path_signature(getattr(args, "retriever_model", None)),
        "--image_model": _path_signature(getattr(args, "image_model", None)),
    }
    for name in ("top_k", "candidates", "num_candidates", "retriever_k", "no_images", "strict_images", "fp32", "bf16",
                 "allow_weight_mismatch", "trust_remote_code"):
        options["--" + name] = getattr(args, name, None)
    return json.loads(json.dumps({"options": options}))


def _resume_changes(old: dict, new: dict) -> list[str]:
    """What differs between the fingerprint a partial output was started with and this run's, one phrase each."""
    changes = []
    before, now = old.get("input") or {}, new.get("input") or {}
    if before.get("sha256") != now.get("sha256"):
        moved = f"{before.get('path')!r} -> {now.get('path')!r}, " if before.get("path") != now.get("path") else ""
        changes.append(f"--input ({moved}its content changed: {before.get('bytes')} -> {now.get('bytes')} bytes, "
                       f"sha256 {str(before.get('sha256'))[:12]} -> {str(now.get('sha256'))[:12]})")
    old_options, new_options = old.get("options") or {}, new.get("options") or {}
    for name in list(new_options) + [n for n in old_options if n not in new_options]:
        a, b = old_options.get(name), new_options.get(name)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and a.get("path") == b.get("path"):
            changes.append(f"{name} ({b.get('path')!r}: its files changed)")
        else:
            shown = [x.get("path") if isinstance(x, dict) else x for x in (a, b)]
            changes.append(f"{name} ({json.dumps(shown[0])} -> {json.dumps(shown[1])})")
    return changes


def check_resume_fingerprint(partial_path: str, fingerprint: dict) -> None:
    """``ValueError`` naming what changed when ``--resume`` would continue a partial output started with another
    input file or other options (its lines would belong to other mentions or settings); nothing when there is no
    partial output to continue."""
    if not os.path.isfile(partial_path) or os.path.getsize(partial_path) == 0:
        return
    meta_path = partial_path + META_SUFFIX
    try:
        with open(meta_path, encoding="utf-8") as f:
            old = json.load(f)
    except FileNotFoundError:
        raise ValueError(
            f"--resume: {partial_path!r} has no record of the input and options it was started with ({meta_path!r} "
            "is missing: an older mel link, or removed); link again without --resume"
        ) from None
    except (OSError, ValueError) as err:
        raise ValueError(f"--resume: {meta_path!r} is unreadable ({' '.join(str(err).split())}); link again without "
                         "--resume") from err
    changes = _resume_changes(old if isinstance(old, dict) else {}, fingerprint)
    if changes:
        raise ValueError(
            f"--resume: {partial_path!r} was started with another input or other options: {'; '.join(changes)}; "
            "resume with the same ones, or link again without --resume"
        )


def _write_meta(meta_path: str, fingerprint: dict) -> None:
    tmp = meta_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(fingerprint, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, meta_path)


def _immutable_reason(path: str) -> str | None:
    """``"immutable"`` / ``"append-only"`` when Linux file attributes (``chattr +i`` / ``+a``) forbid replacing or
    rewriting ``path``; ``None`` otherwise, or when this cannot be told (not Linux, the file system has no flags)."""
    if not sys.platform.startswith("linux") or not os.path.exists(path):
        return None
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (ImportError, OSError):
        return None
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, 0x80086601, buf, True)  # FS_IOC_GETFLAGS
    except OSError:
        return None
    finally:
        os.close(fd)
    flags = int.from_bytes(bytes(buf[:4]), sys.byteorder)
    return "immutable" if flags & 0x10 else ("append-only" if flags & 0x20 else None)


def check_output_writable(output: str, what: str) -> None:
    """``ValueError`` before any work when ``output`` (a file to be written through a temp file and a rename) exists
    but cannot be replaced, or its folder is immutable (``chattr +i``). A folder without write permission shows when
    the writer lock is created in it."""
    for path in (output, output + PARTIAL_SUFFIX, os.path.dirname(os.path.abspath(output))):
        reason = _immutable_reason(path)
        if reason is not None:
            raise ValueError(f"{what}: {path!r} is {reason} (chattr), so it cannot be written or replaced; remove "
                             "the attribute (chattr -i / -a) or write somewhere else")


def link_file(
    pipe: Any, input_path: str, output_path: str, batch_size: int = 8, resume: bool = False,
    fingerprint: dict | None = None, **call_kwargs: Any,
) -> dict[str, int]:
    """Link every line of a mentions.jsonl; write one output line per input line, in order (``error`` on a bad line).

    Output lines: ``{"line", "id", "mention", "predictions": [{"entity_id", "name", "score"}], "gold"?}`` or
    ``{"line", "id"?, "error": "..."}``. Lines are written to ``<output>.partial`` as they finish (flushed), which
    becomes ``output_path`` at the end, so a killed run leaves no half-written output. With ``resume``, the complete
    lines of an earlier run's partial file are kept and their input lines skipped. Returns counts (``lines``,
    ``linked``, ``errors``, ``correct@1``, ``with_gold``; ``resumed`` with ``resume``).

    With ``fingerprint`` (:func:`link_fingerprint`: the options), a fresh partial file gets
    ``<output>.partial.meta.json`` (the options and the input file's sha256), and ``resume`` refuses, naming what
    changed, to continue one started with another input or other options. An ``OSError`` while writing (a full disk,
    a read-only or immutable file) is a one-line ``ValueError`` naming the file; the lines already written stay in
    the partial file for ``--resume``.
    """
    partial_path = output_path + PARTIAL_SUFFIX
    meta_path = partial_path + META_SUFFIX
    inputs = os.path.realpath(input_path)
    if inputs in (os.path.realpath(output_path), os.path.realpath(partial_path)):
        raise ValueError(f"the output {output_path!r} would overwrite the input {input_path!r}")
    base_dir = os.path.dirname(os.path.abspath(input_path))
    with open(input_path, "rb") as f:
        data = f.read()
    raw_lines = _split_input_lines(data)
    if fingerprint is not None:
        fingerprint = dict(fingerprint, input=_input_fingerprint(input_path, data))
        if resume:
            check_resume_fingerprint(partial_path, fingerprint)
    done, done_size = _resumable_records(partial_path, raw_lines) if resume else ([], 0)
    if resume:
        logger.info("mel link: resuming %s: %d of %d lines already done", partial_path, len(done), len(raw_lines))
    counts = {"lines": 0, "linked": 0, "errors": 0, "correct@1": 0, "with_gold": 0}
    for record in done:
        _count_record(counts, record)

    from transformers.utils.logging import tqdm

    chunk = max(1, int(batch_size)) * 8
    records: list[dict] = []  # parsed, not yet written
    pending: list[tuple[int, dict]] = []  # (index in records, pipeline input)

    def run_one(idx: int, item: dict) -> None:
        try:
            records[idx]["predictions"] = pipe(item, **call_kwargs)
        except Exception as err:  # noqa: BLE001 - one bad line must not stop the run
            records[idx]["error"] = _error_text(err)

    def write_out(out: Any, progress: Any) -> None:
        if pending:
            # length-sorted batches (least padding, fewer distinct shapes); outputs go back to their lines
            ordered = sorted(pending, key=lambda p: len(str(p[1].get("text") or "")))
            try:
                outputs = list(pipe([item for _, item in ordered], batch_size=batch_size, **call_kwargs))
                if len(outputs) != len(ordered):
                    raise RuntimeError(f"{len(outputs)} outputs for {len(ordered)} inputs")
            except Exception as err:  # noqa: BLE001 - find the bad line(s) one by one
                logger.warning("a batch failed (%s); retrying its %d lines one by one", err, len(pending))
                for idx, item in pending:
                    run_one(idx, item)
            else:
                for (idx, _), output in zip(ordered, outputs):
                    records[idx]["predictions"] = output
        for record in records:
            if "error" in record:
                record.pop("predictions", None)
            _count_record(counts, record)
            out.write(_dump_record(record))
            out.flush()
        progress.update(len(records))
        records.clear()
        pending.clear()

    quiet = len(raw_lines) - len(done) <= chunk
    try:
        if fingerprint is not None and not done:
            _write_meta(meta_path, fingerprint)
        with open(partial_path, "r+b" if done else "wb") as out, \
                tqdm(total=len(raw_lines), initial=len(done), desc="linking", unit="line", disable=quiet) as progress:
            if done:
                out.seek(done_size)
                out.truncate()
            for n in range(len(done) + 1, len(raw_lines) + 1):
                record, item = _parse_line(pipe, raw_lines[n - 1], n, base_dir)
                records.append(record)
                if item is not None:
                    pending.append((len(records) - 1, item))
                if not pending or len(pending) >= chunk:  # error lines before any pending one go out at once
                    write_out(out, progress)
            write_out(out, progress)
            os.fsync(out.fileno())
    except OSError as err:  # a full disk, a read-only file: the lines written so far stay for --resume
        target = err.filename if isinstance(err.filename, str) else partial_path
        raise ValueError(
            f"writing {target!r} failed ({_os_error_text(err)}); the complete lines written so far are kept in "
            f"{partial_path!r}: free space or fix the file and rerun with --resume"
        ) from err
    try:
        os.replace(partial_path, output_path)
    except OSError as err:
        raise ValueError(
            f"could not rename {partial_path!r} onto the output {output_path!r} ({_os_error_text(err)}); every line "
            f"is linked and kept in {partial_path!r}: fix the output (e.g. chattr -i) and rerun with --resume, or "
            "move that file yourself"
        ) from err
    if os.path.exists(meta_path):
        try:
            os.remove(meta_path)
        except OSError as err:
            logger.warning("could not remove %s (%s)", meta_path, _os_error_text(err))
    if resume:
        counts["resumed"] = len(done)
    return counts


def _link_argument_error(args: argparse.Namespace) -> str | None:
    """The first invalid ``mel link`` argument as a one-line message naming it and its value, or ``None``."""
    for name in ("top_k", "num_candidates", "batch_size", "retriever_k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return f"--{name} must be >= 1, got {value}"
    if not os.path.exists(args.input):
        return f"--input file {args.input!r} does not exist"
    if not os.path.isfile(args.input):
        return f"--input {args.input!r} is not a file"
    for path in (args.output, args.output + PARTIAL_SUFFIX):
        if os.path.realpath(path) == os.path.realpath(args.input) or (
            os.path.exists(path) and os.path.samefile(path, args.input)
        ):
            return f"--output {args.output!r} is the --input file; write the links to another file"
    if os.path.isdir(args.output):
        return f"--output {args.output!r} is a directory"
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        return f"--output {args.output!r}: directory {out_dir!r} does not exist"
    return None


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


def link_main(argv: list[str]) -> int:
    """``mel link``: link the mentions of a JSONL file against a KB or an entity index."""
    parser = argparse.ArgumentParser(
        prog="mel link",
        description="Link mentions ({text, mention | mention_start/mention_end, image?} per line) to a KB. Writes one "
        "output line per input line, in order; a bad line gets an 'error' field instead of stopping the run. Lines "
        f"go to OUTPUT{PARTIAL_SUFFIX} as they finish, renamed to OUTPUT at the end (--resume continues a killed run).",
    )
    add_pipeline_args(parser)
    parser.add_argument("--input", required=True, help="mentions.jsonl")
    parser.add_argument("--output", required=True, help="output JSONL (one line per input line)")
    parser.add_argument("--resume", action="store_true",
                        help=f"keep the complete lines of OUTPUT{PARTIAL_SUFFIX} of a killed run; link the rest")
    parser.add_argument("--top_k", type=int, default=5, help="predictions per mention")
    parser.add_argument("--batch_size", type=int, default=8, help="mentions per batch")
    parser.add_argument("--candidates", choices=("auto", "rule", "bm25", "dense", "all"), default=None,
                        help="ZEMEL candidate source (default auto: BM25+rules and dense)")
    parser.add_argument("--num_candidates", type=int, default=None, help="candidates per source before reranking")
    parser.add_argument("--retriever_k", type=int, default=None,
                        help="with --retriever: its dense top k (and the k closest names) are reranked (default: the "
                             "reranker's config.retriever_k, the value it was trained with)")
    args = parser.parse_args(argv)

    problem = _link_argument_error(args) or pipeline_argument_error(args)  # before any model is loaded
    if problem is not None:
        print(f"mel link: {problem}", file=sys.stderr)
        return 2
    from .entity_index import output_write_lock

    call: dict[str, Any] = {"top_k": args.top_k}
    if args.candidates:
        call["candidates"] = args.candidates
    if args.num_candidates is not None:
        call["num_candidates"] = args.num_candidates
    if args.retriever_k is not None:
        call["retriever_k"] = args.retriever_k
    fingerprint = link_fingerprint(args)
    with contextlib.ExitStack() as held:
        try:
            # Before the model loads: an output that cannot be replaced; the writer lock of OUTPUT.partial (a second
            # `mel link` to the same output stops here instead of interleaving lines; creating it shows an
            # unwritable folder); a --resume of a partial output started with another input or other options.
            what = f"--output {args.output!r}"
            check_output_writable(args.output, what)
            try:
                held.enter_context(output_write_lock(args.output, what=what, by="another `mel link`"))
            except OSError as err:
                folder = os.path.dirname(os.path.abspath(args.output))
                raise ValueError(f"{what}: cannot write in {folder!r} ({_os_error_text(err)}); write the links to a "
                                 "writable folder") from err
            if args.resume:
                with open(args.input, "rb") as f:
                    check_resume_fingerprint(args.output + PARTIAL_SUFFIX,
                                             dict(fingerprint, input=_input_fingerprint(args.input, f.read())))
            pipe = build_pipeline(args)
            start = time.perf_counter()
            counts = link_file(pipe, args.input, args.output, batch_size=args.batch_size, resume=args.resume,
                               fingerprint=fingerprint, **call)
        except ValueError as err:
            print(f"mel link: {' '.join(str(err).split())}", file=sys.stderr)
            return 2
    elapsed = time.perf_counter() - start
    summary = dict(counts, seconds=round(elapsed, 2))
    if counts["with_gold"]:
        summary["accuracy@1"] = round(counts["correct@1"] / counts["with_gold"], 4)
    logger.info("mel link: %s -> %s", json.dumps(summary), args.output)
    print(json.dumps(summary))
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# mel model-card
# ----------------------------------------------------------------------------------------------------------------------


def model_card_main(argv: list[str]) -> int:
    """``mel model-card``: render the model card template into a saved model folder's README.md."""
    parser = argparse.ArgumentParser(
        prog="mel model-card",
        description="Render model_card.md (the template) into MODEL/README.md with the evaluation figures of a "
        "results JSON in the model-index metadata.",
    )
    parser.add_argument("--model", required=True, help="saved model folder")
    parser.add_argument("--results", default=None, help="eval_results.json (flat metrics, {metrics, dataset}, or splits)")
    parser.add_argument("--template", default=None, help="card template (default: the model_card.md installed with the package)")
    parser.add_argument("--output", default=None, help="output path (default MODEL/README.md)")
    parser.add_argument("--model_name", default=None, help="name / hub id shown in the card (default: folder name)")
    parser.add_argument("--dataset_type", default=None, help="dataset id in model-index (default by model family)")
    parser.add_argument("--dataset_name", default=None, help="dataset display name")
    parser.add_argument("--split", default=None, help="evaluation split (default test)")
    parser.add_argument("--base_model", default=None, help="text backbone the model started from (shown in the card)")
    parser.add_argument("--add_code", action="store_true", help="also copy the pipeline code into the folder")
    args = parser.parse_args(argv)
    from .hub import add_pipeline_code, render_model_card

    dataset = {k: v for k, v in (("type", args.dataset_type), ("name", args.dataset_name), ("split", args.split)) if v}
    try:
        if args.add_code:
            add_pipeline_code(args.model)
        path = render_model_card(
            args.model, results=args.results, model_name=args.model_name, template=args.template,
            output=args.output, dataset=dataset or None, base_model=args.base_model,
        )
    except ValueError as err:
        print(f"mel model-card: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# mel build-dataset / export-dataset (the corpus code lives in corpus.py / hub_dataset.py)
# ----------------------------------------------------------------------------------------------------------------------


def build_dataset_main(argv: list[str]) -> int:
    """``mel build-dataset``: build the ``mentions`` and ``kb`` configs of a corpus and save them with save_to_disk."""
    parser = argparse.ArgumentParser(
        prog="mel build-dataset",
        description="Build a corpus with its datasets builder (mentions + kb configs) and save both with "
        "save_to_disk: OUT/mentions (a DatasetDict of splits) and OUT/kb (a Dataset).",
    )
    parser.add_argument(
        "--dataset", required=True,
        help="builder name: twitter_mel, zemeld, mel_jsonl, wikimel, richpedia_mel, mimic_mel"
    )
    parser.add_argument("--data_dir", required=True, help="folder with the corpus files in the builder's raw layout")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--cache_dir", default=None, help="Arrow cache folder of the builder")
    args = parser.parse_args(argv)
    from .corpus import load_mel_corpus

    try:
        for config in ("mentions", "kb"):
            ds = load_mel_corpus(args.dataset, args.data_dir, config=config, cache_dir=args.cache_dir)
            ds.save_to_disk(os.path.join(args.out, config))
            logger.info("%s/%s: %s -> %s", args.dataset, config, ds, os.path.join(args.out, config))
    except (ValueError, FileNotFoundError) as err:
        print(f"mel build-dataset: {err}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


def export_dataset_main(argv: list[str]) -> int:
    """``mel export-dataset``: :func:`modeling_mel.hub_dataset.export_main`."""
    from .hub_dataset import export_main

    return int(export_main(argv, prog="mel export-dataset") or 0)


#: The lines cli.py adds to its COMMANDS table.
# ----------------------------------------------------------------------------------------------------------------------
# mel calibrate
# ----------------------------------------------------------------------------------------------------------------------
def _calibration_rows(args: argparse.Namespace) -> list[dict]:
    """The labelled mentions of ``mel calibrate --data``: a JSONL file, or ``--split`` of a corpus folder built
    with ``--dataset`` (its mention image, when there is one, as the pipeline's ``image``)."""
    if not os.path.isdir(args.data):  # read_jsonl's rules, each row with its file line number ("_where")
        from .knowledge_base import read_jsonl_numbered

        return [{**row, "_where": f"line {n}"} for n, row in read_jsonl_numbered(args.data)]
    if not args.dataset:
        raise ValueError(f"--data {args.data!r} is a folder: give its builder with --dataset (e.g. mel_jsonl, wikimel)")
    from .corpus import load_mel_corpus

    splits = load_mel_corpus(args.dataset, args.data, config="mentions")
    aliases = {"dev": ("dev", "validation", "valid"), "validation": ("validation", "dev", "valid")}
    name = next((n for n in aliases.get(args.split, (args.split,)) if n in splits), None)
    if name is None:
        raise ValueError(f"--split {args.split!r} is not in {args.data!r}; its splits are {sorted(splits)}")
    keep = ("text", "caption", "mention", "mention_start", "mention_end", "entity_id", "image")
    ds = splits[name]
    rows = []
    for i, row in enumerate(ds.select_columns([c for c in keep if c in ds.column_names])):
        text = row.pop("caption", None)  # ZEMELD calls the text a caption
        rows.append({**row, "text": row.get("text") or text, "_where": f"split {name!r} row {i}"})
    return rows


#: The keys of a ``mel calibrate`` row the pipeline takes.
_CALIBRATION_KEYS = ("text", "mention", "mention_start", "mention_end", "image", "boxes")


def _check_calibration_rows(args: argparse.Namespace, rows: list[dict]) -> None:
    """Before any model loads: ``ValueError`` naming the file line (or split row) of the first labelled row the
    pipeline would refuse (no text, a bad span, bad boxes), instead of failing after the linking."""
    from .pipeline_entity_linking import MultimodalEntityLinkingPipeline

    for row in rows:
        try:
            item = {k: row[k] for k in _CALIBRATION_KEYS if row.get(k) is not None}
            for name in ("mention_start", "mention_end"):
                if name in item:
                    item[name] = _check_offset(name, item[name])
            if "boxes" in item:
                _check_boxes(item["boxes"])
            MultimodalEntityLinkingPipeline._check_input(item)
        except (TypeError, ValueError) as err:
            message = str(err).removeprefix("input: ")
            raise ValueError(f"--data {args.data!r} {row.get('_where', '')}: {message}; fix or remove that mention") \
                from err


def calibrate_main(argv: list[str]) -> int:
    """``mel calibrate``: choose the NIL threshold of a model on labelled dev mentions (``modeling_mel.nil``)."""
    parser = argparse.ArgumentParser(
        prog="mel calibrate",
        description="Choose a NIL ('not in the KB') score threshold on labelled dev mentions: a seeded fraction of their "
                    "gold entities is removed from the KB (and from the --index / --retriever index, without "
                    "re-encoding), the linker links every mention against the reduced KB, and the threshold with the "
                    "best overall accuracy that costs in-KB mentions at most --max_in_kb_drop is saved as "
                    "nil_calibration.json (in the --index folder when given, else the model folder); pipeline() and "
                    "mel link then use it.",
    )
    parser.add_argument("--model", required=True, help="saved model folder (either family)")
    kb_group = parser.add_mutually_exclusive_group(required=True)
    kb_group.add_argument("--kb", help="kb.jsonl of the entities")
    kb_group.add_argument("--index", help="entity index directory (mel index) of the model, used as the KB")
    parser.add_argument("--retriever", default=None,
                        help="PFMEL two-stage linker: 'bm25' or an entity index dir built by a ZEMEL model (mel index)")
    parser.add_argument("--retriever_model", default=None, help="the ZEMEL model folder of --retriever")
    parser.add_argument("--data", required=True,
                        help="dev mentions: a JSONL file (text, mention or spans, entity_id), or a corpus folder with "
                             "--dataset and --split")
    parser.add_argument("--dataset", default=None,
                        help="builder of a corpus folder given as --data (twitter_mel, zemeld, mel_jsonl, wikimel, ...)")
    parser.add_argument("--split", default="dev", help="split of the --data corpus folder (default dev)")
    parser.add_argument("--nil_fraction", type=float, default=0.2, help="share of the gold entities removed from the KB")
    parser.add_argument("--max_in_kb_drop", type=float, default=0.02, help="most in-KB accuracy the threshold may cost")
    parser.add_argument("--seed", type=int, default=0, help="seed of the removed entities")
    parser.add_argument("--batch_size", type=int, default=32, help="mentions per batch")
    parser.add_argument("--candidates", default=None, help="ZEMEL candidate source (pipeline default: auto)")
    parser.add_argument("--out", default=None, help="folder of nil_calibration.json (default: --index, else --model)")
    parser.add_argument("--fp32", action="store_true",
                        help="run the model in fp32 (default: the precision the --index was built in; else bf16 "
                        "where this machine has native bf16 kernels)")
    parser.add_argument("--trust_remote_code", action="store_true", help="load the model with its own code")
    _add_weight_mismatch_arg(parser)
    _add_device_arg(parser)
    _add_image_args(parser)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as held:
        return _calibrate(args, held)


def _calibrate(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    """``mel calibrate`` once its arguments are parsed; the writer lock of nil_calibration.json goes on ``held``."""
    from transformers import pipeline

    from .entity_index import EntityIndex, load_retriever, output_write_lock
    from .knowledge_base import kb_records, linking_method
    from .nil import CALIBRATION_NAME, choose_threshold, is_nil_gold, nil_metrics, removed_entities, save_calibration
    from .pipeline_entity_linking import MultimodalEntityLinkingPipeline

    out_dir = args.out or args.index or args.model
    target = os.path.join(out_dir, CALIBRATION_NAME)
    try:
        device = _device_of(args)  # a device this machine lacks: exit 2 before anything is read
        rows = [r for r in _calibration_rows(args) if r.get("entity_id") is not None]
        if not rows:
            raise ValueError(f"--data {args.data!r} has no mention with an entity_id")
        _check_calibration_rows(args, rows)  # a bad row: named by its file line now, not after the linking
        if args.index and not os.path.isfile(os.path.join(args.index, "index_config.json")):
            raise ValueError(f"--index {args.index!r} is not an entity index directory (build one with mel index)")
        # the destination, before the model loads: a folder that exists, an output that can be replaced, the writer
        # lock of nil_calibration.json (a second `mel calibrate` into the same folder stops here; creating the lock
        # shows a read-only folder)
        what = f"the calibration {target!r}" + ("" if args.out else " (--out: default --index, else --model)")
        if not os.path.isdir(out_dir):
            raise ValueError(f"{what}: folder {out_dir!r} does not exist; pass an existing folder as --out")
        check_output_writable(target, what)
        try:
            held.enter_context(output_write_lock(target, what=what, by="another `mel calibrate`"))
        except OSError as err:
            raise ValueError(f"{what}: cannot write in {out_dir!r} ({_os_error_text(err)}); pass a writable folder "
                             "as --out") from err
        model, processor = load_model_and_processor(args.model, args.trust_remote_code, device,
                                                    allow_weight_mismatch=args.allow_weight_mismatch)
        if args.index:
            index = EntityIndex.load(args.index, model=model if linking_method(model) == "dense" else None)
            kb_ids = index.entity_ids
        else:
            kb = kb_records(args.kb)
            kb_ids = [e["entity_id"] for e in kb]
        removed = removed_entities(kb_ids, (r["entity_id"] for r in rows), args.nil_fraction, args.seed)
        reduced: Any = index.without(removed) if args.index else [e for e in kb if e["entity_id"] not in removed]
        extractor = build_image_extractor(args, model, processor)
        init: dict[str, Any] = {"use_images": not args.no_images, "max_image_pixels": args.max_image_pixels,
                                "bf16": _precision_setting(args, args.index, device, "mel calibrate"),
                                "allow_weight_mismatch": args.allow_weight_mismatch}
        if extractor is not None:
            init["image_extractor"] = extractor
        if args.retriever:
            init["retriever"] = (args.retriever if args.retriever == "bm25"
                                 else load_retriever(args.retriever, args.retriever_model, device).without(removed))
        pipe = pipeline("multimodal-entity-linking", model=model, processor=processor, kb=reduced,
                        pipeline_class=MultimodalEntityLinkingPipeline, nil_threshold=None, device=device, **init)
    except (ValueError, OSError) as err:
        print(f"mel calibrate: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    items = [{k: r[k] for k in _CALIBRATION_KEYS if r.get(k) is not None} for r in rows]
    call: dict[str, Any] = {"top_k": 1, "batch_size": args.batch_size}
    if args.candidates:
        call["candidates"] = args.candidates
    outputs = pipe(items, **call)
    best_ids = [out[0]["entity_id"] if out else None for out in outputs]
    best_scores = [out[0]["score"] if out else None for out in outputs]
    golds = [str(r["entity_id"]) for r in rows]
    is_nil = [g in removed or is_nil_gold(g) for g in golds]  # simulated NIL mentions and those labelled NIL
    threshold, calibrated = choose_threshold(best_ids, best_scores, golds, is_nil, args.max_in_kb_drop)
    source = {"index": os.path.abspath(args.index)} if args.index else {"kb": os.path.abspath(args.kb)}
    if args.retriever:
        source["retriever"] = args.retriever if args.retriever == "bm25" else os.path.abspath(args.retriever)
    payload = {
        "threshold": threshold,
        "protocol": {"nil_fraction": args.nil_fraction, "seed": args.seed, "max_in_kb_drop": args.max_in_kb_drop,
                     "removed_entities": len(removed), "data": os.path.abspath(args.data),
                     **({"dataset": args.dataset, "split": args.split} if os.path.isdir(args.data) else {}), **source},
        "uncalibrated": nil_metrics(best_ids, best_scores, golds, is_nil, None),
        "calibrated": calibrated,
    }
    try:
        path = save_calibration(out_dir, payload)
    except OSError as err:  # the result still goes to stdout: the linking is not lost
        with contextlib.suppress(OSError):
            os.remove(target + ".tmp")
        print(json.dumps(payload, sort_keys=True))
        print(f"mel calibrate: writing {target!r} failed ({_os_error_text(err)}); the result is printed above: free "
              "space or fix the folder and run again", file=sys.stderr)
        return 2
    logger.info("mel calibrate: threshold %s -> %s", threshold, path)
    print(json.dumps(payload, sort_keys=True))
    return 0


def serve_main(argv: list[str]) -> int:
    """``mel serve``: load a pipeline and serve it over HTTP until SIGINT / SIGTERM (``modeling_mel.serving``)."""
    parser = argparse.ArgumentParser(
        prog="mel serve",
        description="Serve a linking model over HTTP: POST /link (one mention, a list, or {inputs, parameters}), "
                    "GET /health, GET /info. Concurrent requests are merged into shared forward passes (dynamic "
                    'batching). Needs the serve extra: pip install "modeling-mel[serve]".',
    )
    add_pipeline_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max_batch_size", type=int, default=32, help="most mentions merged into one forward pass")
    parser.add_argument("--max_wait_ms", type=float, default=10.0,
                        help="how long a batch waits for more requests after its first one, under concurrent load "
                             "(a lone client never waits)")
    parser.add_argument("--no_batching", action="store_true", help="run every request alone (dynamic batching off)")
    parser.add_argument("--max_body_bytes", type=int, default=1 << 20,
                        help="largest request body, counted as it arrives whatever the transfer encoding (chunked "
                             "too): 413 and the connection closes as soon as a body passes it")
    parser.add_argument("--max_list", type=int, default=64, help="most mentions in one request")
    parser.add_argument("--max_top_k", type=int, default=100, help="largest top_k a request may ask for")
    parser.add_argument("--read_timeout", type=float, default=30.0,
                        help="seconds a request body may pause (no bytes) before the server answers 408 and closes "
                             "the connection (default 30; 0: no limit)")
    parser.add_argument("--header_timeout", type=float, default=10.0,
                        help="seconds the request line and headers may take to arrive, from the connection (or the "
                             "first byte of a later request on it), before the server closes it (default 10; 0: no "
                             "limit)")
    parser.add_argument("--info_paths", action="store_true",
                        help="GET /info also shows the model's path on the server (default: only its name)")
    parser.add_argument("--graceful_timeout", type=float, default=30.0,
                        help="seconds shutdown waits for the requests in flight")
    parser.add_argument("--log_level", default="info", help="uvicorn log level")
    args = parser.parse_args(argv)
    problems = [f"--{name} must be >= 1, got {getattr(args, name)}"
                for name in ("max_batch_size", "max_body_bytes", "max_list", "max_top_k") if getattr(args, name) < 1]
    problems += [f"--{name} must be >= 0, got {getattr(args, name)}"
                 for name in ("max_wait_ms", "read_timeout", "header_timeout") if getattr(args, name) < 0]
    if not 0 <= args.port <= 65535:
        problems.append(f"--port must be in 0..65535, got {args.port}")
    if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("fastapi") is None:
        problems.append('needs FastAPI and uvicorn: pip install "modeling-mel[serve]"')
    problem = problems[0] if problems else pipeline_argument_error(args)  # the first problem, before any model loads
    if problem is not None:
        print(f"mel serve: {problem}", file=sys.stderr)
        return 2
    from .serving import ServeLimits, run_server

    pipe = build_pipeline(args)
    run_server(pipe, args.host, args.port, args.max_batch_size, args.max_wait_ms, not args.no_batching,
               ServeLimits(args.max_body_bytes, args.max_list, args.max_top_k, read_timeout=args.read_timeout,
                           header_timeout=args.header_timeout),
               args.graceful_timeout, args.log_level, info_paths=args.info_paths)
    return 0


__all__ = [
    "index_main",
    "link_main",
    "calibrate_main",
    "serve_main",
    "add_pipeline_args",
    "build_pipeline",
    "pipeline_argument_error",
    "model_card_main",
    "build_dataset_main",
    "export_dataset_main",
    "link_file",
]
