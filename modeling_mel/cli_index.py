"""``mel index``: encode a KB once with a ZEMEL model's candidate encoder and save an entity index (vectors, FAISS
index, metadata), in one process or sharded and resumable (``--shard_size``, torchrun / accelerate launch); a PFMEL
model or ``--bm25_only`` gives a metadata-only index.

    mel index --model M --kb kb.jsonl --out kb_index
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

from .cli_inference import (
    _add_device_arg,
    _add_image_args,
    _add_weight_mismatch_arg,
    _device_of,
    _load_kb_arg,
    _os_error_text,
    _positive_options_error,
    build_image_extractor,
    load_model_and_processor,
)

logger = logging.getLogger(__name__)

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


def _index_parser() -> argparse.ArgumentParser:
    """The arguments of ``mel index``."""
    parser = argparse.ArgumentParser(
        prog="mel index",
        description="Encode a KB once with a ZEMEL model and save an entity index (vectors, FAISS index, metadata). "
        "With a PFMEL model or --bm25_only, save a metadata-only index (name rule / BM25 candidates).",
    )
    parser.add_argument("--model", default=None, help="saved ZEMEL model folder (or PFMEL: metadata-only index)")
    parser.add_argument("--kb", required=True, help="kb.jsonl (mel_jsonl layout) or a dataset saved with save_to_disk")
    parser.add_argument("--out", required=True, help="output directory of the index")
    parser.add_argument("--batch_size", type=int, default=64, help="entities per forward pass")
    parser.add_argument("--max_length", type=int, default=None,
                        help="token limit of an entity (name + description); default: the model's "
                             "config.candidate_max_length, the length it was trained with (64 when not recorded)")
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
    return parser


def index_main(argv: list[str]) -> int:
    """``mel index``: encode a KB once with a ZEMEL model's candidate encoder and save a FAISS entity index."""
    parser = _index_parser()
    args = parser.parse_args(argv)

    if not args.bm25_only and not args.model:
        parser.error("--model is required (or --bm25_only for a metadata-only index)")
    problem = _positive_options_error(args, ("batch_size", "max_length", "hnsw_threshold", "ef_search", "ivf_nlist",
                                             "ivf_nprobe", "pq_m", "shard_size", "max_image_pixels"))
    if problem is not None:
        print(f"mel index: {problem}", file=sys.stderr)
        return 2

    from .entity_index import EntityIndex
    from .faiss_index import FaissIndexConfig
    from .index_files import check_index_destination, index_write_lock
    from .knowledge_base import linking_method

    try:
        faiss = FaissIndexConfig.from_options(args)  # every FAISS setting, for the plain and the sharded build
    except ValueError as err:
        parser.error(f"--memory_budget: {err}")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    # under torchrun / accelerate launch each process takes its own GPU (cuda:LOCAL_RANK) with auto / cuda
    device = _device_of(args, int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else None)
    if args.shard_size is not None or world > 1:
        return _index_sharded(args, world, device, faiss)
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
                model, processor, kb, batch_size=args.batch_size, image_extractor=extractor, max_length=args.max_length,
                bf16=False if model is None else _encoding_bf16(args, model), faiss=faiss,
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


def _index_sharded(args: argparse.Namespace, world: int, device: Any = None, faiss: Any = None) -> int:
    """``mel index --shard_size`` / under torchrun or accelerate launch: sharded, resumable encoding
    (:mod:`modeling_mel.sharded_index`) on ``device`` (this process's own); the main process merges the shards and
    saves the index."""
    from .knowledge_base import linking_method
    from .linking_dense import trained_lengths
    from .sharded_index import build_sharded

    rank = int(os.environ.get("RANK", "0"))
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
            max_length=args.max_length or trained_lengths(model)[1], bf16=_encoding_bf16(args, model),
            image_extractor=build_image_extractor(args, model, processor), faiss=faiss, device=device,
        )
    except (ValueError, OSError, *_SAFETENSORS_ERRORS) as err:  # a full disk while writing: one line too
        print(f"mel index: {_index_error_text(err, args.out)}", file=sys.stderr)
        return 2
    if index is not None:
        logger.info("indexed %d entities in %.1f s over %d processes -> %s (%r)", len(index),
                    time.perf_counter() - start, world, args.out, index)
    return 0


__all__ = ["index_main"]
