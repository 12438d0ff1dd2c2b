"""Sharded, resumable KB encoding for ``mel index``: the KB is cut into shards of ``shard_size`` entities, each
process of a ``torchrun`` / ``accelerate launch`` run encodes its shards (shard ``s`` goes to rank ``s % world``) and
writes each one as ``shard-NNNNN.safetensors`` plus a completion marker ``shard-NNNNN.done.json``; the main process
then merges the shards into one FAISS index (trained on a sample drawn across shards, filled shard by shard).

    torchrun --nproc_per_node 2 -m modeling_mel.cli index --model M --kb kb.jsonl --out kb_index --shard_size 100000
    accelerate launch --multi_gpu --num_processes 2 -m modeling_mel.cli index ...      # the same environment
    mel index --model M --kb kb.jsonl --out kb_index --shard_size 100000              # one process, resumable

The KB file is streamed: each process reads it line by line and parses only the lines of its own shards; the
merge reads each shard's vectors in turn. A killed run restarted with the same command reuses every shard whose
marker matches (same KB lines, same model weights, same encoding settings: the marker records a key over them and the
sha256 of the vectors file) and encodes only the others. The shard folder (``<out>.shards`` by default) is removed
once the index is saved, unless ``keep_shards``.

Processes talk through the shard folder and, with ``WORLD_SIZE > 1``, a ``torch.distributed`` barrier (gloo), so the
same code runs under ``torchrun`` and ``accelerate launch`` (both set ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any, Iterator

import numpy as np

from .knowledge_base import encode_entities, model_config_hash, model_fingerprint, normalize_entity

logger = logging.getLogger(__name__)

SHARD_PREFIX = "shard-"
VECTORS_SUFFIX = ".safetensors"
MARKER_SUFFIX = ".done.json"
SHARDS_SUFFIX = ".shards"
#: Test hook: a process exits (status 75) right after completing the shard of this number, as if killed there.
EXIT_AFTER_SHARD_ENV = "MEL_INDEX_EXIT_AFTER_SHARD"
EXIT_AFTER_SHARD_STATUS = 75


def shard_paths(shard_dir: str, shard: int) -> tuple[str, str]:
    """``(vectors file, completion marker)`` of shard number ``shard``."""
    stem = os.path.join(shard_dir, f"{SHARD_PREFIX}{shard:05d}")
    return stem + VECTORS_SUFFIX, stem + MARKER_SUFFIX


def default_shard_dir(out: str | os.PathLike) -> str:
    """``<out>.shards``, beside the index folder (the index folder itself may hold index files only)."""
    return os.path.realpath(os.fspath(out)).rstrip(os.sep) + SHARDS_SUFFIX


def distributed_context() -> tuple[int, int, Any]:
    """``(rank, world_size, barrier)`` of this process: from ``RANK`` / ``WORLD_SIZE`` (torchrun, accelerate
    launch), with a gloo process group for the barrier when ``WORLD_SIZE > 1``; ``(0, 1, no-op)`` otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world <= 1:
        return 0, 1, lambda: None
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is outside WORLD_SIZE {world}; launch with torchrun or accelerate launch")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return rank, world, dist.barrier


def process_device(spec: Any = "auto") -> Any:
    """The ``torch.device`` of this process of a sharded run (:func:`~modeling_mel.hardware.resolve_device`): with
    ``WORLD_SIZE > 1``, ``auto`` and ``cuda`` give each process its own GPU, ``cuda:<LOCAL_RANK % device_count>``;
    CPU processes where there is no accelerator. A ``torch.device`` is kept as it is."""
    import torch

    from .hardware import resolve_device

    if isinstance(spec, torch.device):
        return spec
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return resolve_device(spec, local_rank=int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else None)


# -- streaming the KB in shards ----------------------------------------------------------------------------------------
def iter_kb_shards(kb: Any, shard_size: int, owned: Any = None) -> Iterator[tuple[int, int, list[dict], str]]:
    """``(shard, start, records, digest)`` for each shard of ``shard_size`` KB rows, in KB order, reading a
    ``kb.jsonl`` line by line (never whole). ``owned(shard) -> bool``: shards to parse; the others are only counted
    (``records`` empty, ``digest`` ``""``). ``digest``: sha256 of the shard's rows (its raw lines for a file)."""
    if int(shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size!r}")
    size = int(shard_size)
    owned = owned or (lambda s: True)
    if isinstance(kb, (str, os.PathLike)):
        path = os.fspath(kb)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "kb.jsonl")):
            path = os.path.join(path, "kb.jsonl")
        if not os.path.isfile(path):
            raise ValueError(f"KB file {path!r} does not exist; sharded indexing reads a kb.jsonl (or a saved Dataset)")
        base = os.path.dirname(os.path.abspath(path))
        shard, lines, h, line_no = 0, [], hashlib.sha256(), 0

        def flush() -> tuple[int, int, list[dict], str]:
            start = shard * size
            if not owned(shard):
                return shard, start, [], ""
            records = []
            for j, (n, line) in enumerate(lines):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {n} is not valid JSON: {err}") from err
                if not isinstance(row, dict):
                    raise ValueError(f"{path} line {n} is a {type(row).__name__}, expected a JSON object")
                records.append(normalize_entity(row, start + j, base))
            return shard, start, records, h.hexdigest()

        with open(path, encoding="utf-8") as f:
            for raw in f:
                line_no += 1
                line = raw.strip()
                if not line:
                    continue
                if owned(shard):
                    h.update(line.encode("utf-8") + b"\n")
                    lines.append((line_no, line))
                else:
                    lines.append((line_no, ""))
                if len(lines) == size:
                    yield flush()
                    shard, lines, h = shard + 1, [], hashlib.sha256()
        if lines:
            yield flush()
        return
    if hasattr(kb, "select") and hasattr(kb, "__len__"):  # a datasets.Dataset: row slices
        for shard, start in enumerate(range(0, len(kb), size)):
            if not owned(shard):
                yield shard, start, [], ""
                continue
            rows = [dict(r) for r in kb.select(range(start, min(len(kb), start + size)))]
            yield shard, start, [normalize_entity(r, start + j) for j, r in enumerate(rows)], _rows_digest(rows)
        return
    raise ValueError(f"sharded indexing reads a kb.jsonl path or a datasets.Dataset, got {type(kb).__name__}")


def _rows_digest(rows: list[dict]) -> str:
    from .index_files import _json_safe

    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(_json_safe(r), sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def encoding_key(model: Any, max_length: int, bf16: bool, image_extractor: Any = None) -> str:
    """What a shard's vectors depend on besides its rows: model weights and config, token limit, precision, images."""
    payload = {"fingerprint": model_fingerprint(model), "config_hash": model_config_hash(model),
               "max_length": int(max_length), "bf16": bool(bf16), "image_model": getattr(image_extractor, "model_key", None)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def finished_shard(shard_dir: str, shard: int, key: str) -> dict | None:
    """The marker of shard ``shard`` when it is complete for ``key`` (same rows and encoding; vectors file intact),
    else ``None``."""
    vec_path, marker_path = shard_paths(shard_dir, shard)
    try:
        with open(marker_path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("key") != key or not os.path.isfile(vec_path):
        return None
    if os.path.getsize(vec_path) != marker.get("bytes") or _sha256(vec_path) != marker.get("sha256"):
        logger.warning("shard %d in %s does not match its marker; encoding it again", shard, shard_dir)
        return None
    return marker


def _write_shard(shard_dir: str, shard: int, start: int, vectors: np.ndarray, key: str) -> dict:
    """Vectors file, then marker, each written to a temp name and renamed (a kill leaves no half shard)."""
    from safetensors.numpy import save_file

    vec_path, marker_path = shard_paths(shard_dir, shard)
    tmp = f"{vec_path}.tmp-{os.getpid()}"
    save_file({"vectors": np.ascontiguousarray(vectors, dtype=np.float32)}, tmp)
    os.replace(tmp, vec_path)
    marker = {"shard": shard, "start": start, "count": int(len(vectors)), "dim": int(vectors.shape[1]), "key": key,
              "sha256": _sha256(vec_path), "bytes": os.path.getsize(vec_path)}
    tmp = f"{marker_path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(marker, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker_path)
    return marker


def encode_shards(
    model: Any,
    processor: Any,
    kb: Any,
    shard_dir: str,
    shard_size: int,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 64,
    max_length: int = 64,
    bf16: bool = False,
    image_extractor: Any = None,
    progress: bool = True,
) -> dict[str, int]:
    """Encode this process's shards of ``kb`` (shard ``s`` when ``s % world_size == rank``) with
    :func:`~modeling_mel.knowledge_base.encode_entities` into ``shard_dir``, reusing finished ones.

    Returns ``{"encoded": ..., "reused": ..., "shards": ...}`` (counts of this process's shards).
    """
    os.makedirs(shard_dir, exist_ok=True)
    key = encoding_key(model, max_length, bf16, image_extractor)
    exit_after = os.environ.get(EXIT_AFTER_SHARD_ENV)
    counts = {"encoded": 0, "reused": 0, "shards": 0}
    bar = None
    if progress:
        from transformers.utils.logging import tqdm

        bar = tqdm(desc=f"encoding KB shards (rank {rank}/{world_size})", unit="shard", position=rank)
    for shard, start, records, digest in iter_kb_shards(kb, shard_size, owned=lambda s: s % world_size == rank):
        if shard % world_size != rank:
            continue
        counts["shards"] += 1
        shard_key = hashlib.sha256(f"{key}:{digest}:{start}".encode()).hexdigest()
        if finished_shard(shard_dir, shard, shard_key) is not None:
            logger.info("reusing finished shard %d (%d entities) from %s", shard, len(records), shard_dir)
            counts["reused"] += 1
        else:
            vectors = encode_entities(
                model, processor, records, batch_size=batch_size, image_extractor=image_extractor,
                max_length=max_length, bf16=bf16,
            ).numpy()
            _write_shard(shard_dir, shard, start, vectors, shard_key)
            logger.info("encoded shard %d (%d entities) -> %s", shard, len(records), shard_paths(shard_dir, shard)[0])
            counts["encoded"] += 1
            if exit_after is not None and exit_after.strip() == str(shard):
                logger.warning("%s=%s: exiting after shard %d, as if killed", EXIT_AFTER_SHARD_ENV, exit_after, shard)
                logging.shutdown()
                os._exit(EXIT_AFTER_SHARD_STATUS)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return counts


def merge_shards(
    model: Any,
    kb: Any,
    shard_dir: str,
    shard_size: int,
    max_length: int = 64,
    bf16: bool = False,
    image_extractor: Any = None,
    faiss: Any = None,
    processor: Any = None,
    progress: bool = False,
):
    """The :class:`~modeling_mel.entity_index.EntityIndex` of finished shards: entity metadata streamed from ``kb``
    (checked against each shard's marker), the FAISS index of the settings ``faiss`` (a
    :class:`~modeling_mel.faiss_index.FaissIndexConfig`, default ``auto``) trained on a sample across shards and
    filled shard by shard (:func:`~modeling_mel.faiss_index.attach_index`; exact vectors concatenated only when they
    are kept). With ``processor``, an IVF index without a given ``ivf_nprobe`` gets it tuned on the model's
    mention-like queries as :meth:`EntityIndex.build` does (exact search streamed over the shards).
    ``ValueError`` naming the first missing or stale shard."""
    from safetensors.numpy import load_file

    from .entity_index import EntityIndex
    from .faiss_index import FaissIndexConfig, attach_index, mention_like_queries
    from .index_files import FORMAT_VERSION

    faiss = FaissIndexConfig.merged(faiss)

    key = encoding_key(model, max_length, bf16, image_extractor)
    entities: list[dict] = []
    markers: list[dict] = []
    seen: dict[str, int] = {}
    for shard, start, records, digest in iter_kb_shards(kb, shard_size):
        marker = finished_shard(shard_dir, shard, hashlib.sha256(f"{key}:{digest}:{start}".encode()).hexdigest())
        if marker is None or marker["count"] != len(records):
            raise ValueError(
                f"shard {shard} (entities {start}..{start + len(records) - 1}) is missing or stale in {shard_dir!r}: "
                "a process did not finish it; run the same command again to encode it"
            )
        for i, e in enumerate(records):
            if e["entity_id"] in seen:
                raise ValueError(f"entity_id {e['entity_id']!r} occurs twice in the KB (rows {seen[e['entity_id']]} and {start + i})")
            seen[e["entity_id"]] = start + i
        entities.extend(records)
        markers.append(marker)
    if not entities:
        raise ValueError(f"the knowledge base {kb!r:.80} is empty (0 entities); nothing to index")
    dim = int(markers[0]["dim"])

    def chunks():
        for shard in range(len(markers)):
            yield load_file(shard_paths(shard_dir, shard)[0])["vectors"]

    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "size": len(entities), "metric": "inner_product",
        "config_hash": model_config_hash(model), "weights_fingerprint": model_fingerprint(model),
        "model_type": getattr(model.config, "model_type", None),
        "model_name_or_path": str(getattr(model, "name_or_path", "") or ""),
        "scoring": getattr(model.config, "scoring", None), "image_model": getattr(image_extractor, "model_key", None),
        "max_length": int(max_length), "bf16": bool(bf16),
        "shards": {"count": len(markers), "shard_size": int(shard_size)},
    }
    index = EntityIndex(entities, None, config)
    attach_index(index, len(entities), dim, chunks, faiss, progress=progress)
    if processor is not None and faiss.tunes_nprobe(index.config["index_type"]):
        index.tune_nprobe(chunks, mention_like_queries(model, processor, entities, max_length=max_length))
    return index


def build_sharded(
    model: Any,
    processor: Any,
    kb: Any,
    out: str | os.PathLike,
    shard_size: int,
    shard_dir: str | None = None,
    keep_shards: bool = False,
    batch_size: int = 64,
    max_length: int = 64,
    bf16: bool = False,
    image_extractor: Any = None,
    faiss: Any = None,
    progress: bool = True,
    device: Any = None,
):
    """Encode ``kb`` in shards over the processes of this run, then (main process) merge and save the index to
    ``out``, with the FAISS settings ``faiss`` (a :class:`~modeling_mel.faiss_index.FaissIndexConfig`, the one
    ``EntityIndex.build`` takes; default ``auto``). Returns the saved :class:`~modeling_mel.entity_index.EntityIndex` on the main process, ``None`` on the
    others. The main process holds ``out``'s writer lock from the start; the shard folder is removed after the save
    unless ``keep_shards``.

    ``device``: where this process encodes (the model is moved there): a ``torch.device``, or a ``--device`` string
    resolved by :func:`process_device` (``"auto"``: this process's own GPU, ``cuda:LOCAL_RANK``, when there are GPUs,
    else the CPU); ``None`` leaves the model where it is. FAISS training and search stay on the CPU."""
    if device is not None:
        device = process_device(device)
        if device.type == "cuda":
            import torch

            torch.cuda.set_device(device)  # this process's default GPU (its own under torchrun)
        model = model.to(device)
    rank, world, barrier = distributed_context()
    try:
        return _build_sharded(
            model, processor, kb, out, shard_size, shard_dir, keep_shards, batch_size, max_length, bf16,
            image_extractor, faiss, progress, rank, world, barrier,
        )
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _build_sharded(model, processor, kb, out, shard_size, shard_dir, keep_shards, batch_size, max_length, bf16,
                   image_extractor, faiss, progress, rank, world, barrier):
    import contextlib

    from .index_files import check_index_destination, index_write_lock

    shard_dir = os.path.realpath(shard_dir or default_shard_dir(out))
    lock = index_write_lock(out) if rank == 0 else contextlib.nullcontext()
    with lock:
        if rank == 0:
            check_index_destination(out)
        counts = encode_shards(
            model, processor, kb, shard_dir, shard_size, rank=rank, world_size=world, batch_size=batch_size,
            max_length=max_length, bf16=bf16, image_extractor=image_extractor, progress=progress,
        )
        logger.info("rank %d/%d: %d shards encoded, %d reused", rank, world, counts["encoded"], counts["reused"])
        barrier()
        if rank != 0:
            return None
        index = merge_shards(
            model, kb, shard_dir, shard_size, max_length=max_length, bf16=bf16, image_extractor=image_extractor,
            faiss=faiss, processor=processor, progress=progress,
        )
        index.model, index.processor = model, processor
        index.save(out)
    if not keep_shards:
        shutil.rmtree(shard_dir, ignore_errors=True)
    return index


__all__ = [
    "EXIT_AFTER_SHARD_ENV",
    "build_sharded",
    "default_shard_dir",
    "distributed_context",
    "encode_shards",
    "encoding_key",
    "finished_shard",
    "iter_kb_shards",
    "merge_shards",
    "process_device",
    "shard_paths",
]
