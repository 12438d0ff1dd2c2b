"""A saved, searchable index of KB entities: cached ZEMEL candidate vectors in FAISS, plus entity metadata.

Build once (``mel index`` or :meth:`EntityIndex.build`), then link many mentions against it::

    index = EntityIndex.build(model, processor, "kb.jsonl", batch_size=64)
    index.save("kb_index")
    index = EntityIndex.load("kb_index", model=model)      # ValueError if built by another model
    scores, positions = index.search(query_vectors, k=100)

A saved index directory holds ``vectors.safetensors`` (``(N, H)`` float32), ``faiss.index``, ``entities.jsonl`` (the
entity metadata, JSON-serialisable fields only) and ``index_config.json`` (model config hash, weights fingerprint,
index type and parameters, recall@64 measured at build time, memory). Index types: exact inner product
(``IndexFlatIP``) for KBs smaller than ``hnsw_threshold``, HNSW (``IndexHNSWFlat``, inner-product metric) above it
with ``index_type="auto"``; ``"ivf"`` (``IndexIVFFlat``) for very large KBs; and compressed codes for KBs whose float32
vectors do not fit in memory: ``"ivfpq"`` (``IndexIVFPQ``, ``pq_m`` bytes a vector, dim/4 by default), ``"ivfsq8"``
(``IndexIVFScalarQuantizer`` 8-bit, one byte a dimension) and ``"hnswsq8"`` (``IndexHNSWSQ``). With a
``memory_budget``, ``"auto"`` picks the most exact type that fits (:func:`choose_index_type`).

The poly rerank of the top-k reads :attr:`EntityIndex.vectors`: the exact float32 vectors when they are stored
(``vectors.safetensors``; ``store_vectors=None`` keeps them when they fit the budget), else the rows decoded from the
compressed codes (:class:`CodeVectors`, FAISS ``reconstruct_batch``; IVF indexes get a direct map, 8 bytes a vector,
for it): the rerank then scores approximate vectors (SQ8: about 1e-2 off per dimension; PQ: more). Such a folder has
no ``vectors.safetensors`` and ``index_config.json`` says ``"vectors_stored": false``. Without a model the index holds
metadata only (BM25 / name-rule candidates for PFMEL users). The BLINK indexer names (``index_data``,
``search_knn``, ``serialize``, ``deserialize_from``) are aliases. Sharded, resumable building over processes:
:mod:`modeling_mel.sharded_index`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .candidates import dense_candidates
from .knowledge_base import (
    ENTITIES_NAME,
    INDEX_CONFIG_NAME,
    VECTORS_NAME,
    check_index_compatible,
    encode_entities,
    kb_records,
    linking_method,
    model_config_hash,
    model_fingerprint,
)

logger = logging.getLogger(__name__)

FAISS_NAME = "faiss.index"
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq", "ivfsq8", "hnswsq8")
#: 2: index_config.json records the entity count, file checksums and sizes, FAISS ntotal and the index kind.
FORMAT_VERSION = 2


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("EntityIndex needs faiss: pip install 'modeling-mel[faiss]' (faiss-cpu)") from err
    return faiss


def _json_safe(value: Any) -> Any:
    """JSON-serialisable copy of a metadata value; PIL images and other objects become ``None``."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return None


# -- integrity and atomic writes of index folders ---------------------------------------------------------------------
#: Entries an index folder may hold; ``save`` refuses to replace a folder holding anything else.
INDEX_FILES = (ENTITIES_NAME, VECTORS_NAME, FAISS_NAME, INDEX_CONFIG_NAME)
#: Next to the folder ``D``: ``D.lock`` (the writer lock), ``D.tmp-<pid>-<hex>`` (a folder being written) and
#: ``D.backup`` (the previous folder, only for the instant between the two renames of the swap when the kernel has no
#: atomic exchange).
LOCK_SUFFIX, TMP_INFIX, BACKUP_SUFFIX = ".lock", ".tmp-", ".backup"
_REBUILD = "rebuild it with `mel index`"
_held_locks: dict[str, list] = {}  # folder -> [lock fd, depth, thread id] for the writer locks this process holds
_held_guard = threading.Lock()


def _index_target(directory: str | os.PathLike) -> str:
    """The absolute, symlink-free path of an index folder (its lock, temp and backup folders sit beside it)."""
    target = os.path.realpath(os.fspath(directory))
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"{os.fspath(directory)!r} exists and is not a folder; an entity index is written as a folder")
    return target


def _one_line(err: BaseException, limit: int = 240) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync(path: str) -> None:
    """Flush a file (or a folder's entries) to disk; best effort (some platforms cannot open folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _try_lock(target: str) -> tuple[int | None, str | None]:
    """``(fd, None)`` with ``<target>.lock`` flocked, ``(None, holder)`` when another writer holds it; ``fd`` is -1
    where file locks do not exist (no fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks, writers are not serialised
        return -1, None
    os.makedirs(os.path.dirname(target), exist_ok=True)
    lock_path = target + LOCK_SUFFIX
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        except OSError:
            holder = ""
        os.close(fd)
        return None, holder or "another process"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, None


def _unlock(fd: int) -> None:
    if fd >= 0:
        os.close(fd)  # closing the descriptor drops its flock


@contextlib.contextmanager
def index_write_lock(directory: str | os.PathLike):
    """Hold the writer lock of index folder ``directory`` (``fcntl.flock`` on ``<directory>.lock``, non-blocking).

    A second writer (another process or thread) gets a ``ValueError`` naming the folder instead of interleaving its
    files. Re-entrant in the holding thread (``mel index`` takes it before encoding the KB; ``save`` takes it again).
    On first acquisition, what a killed writer left beside the folder is cleaned up (a stale temp folder, a backup).
    Yields the folder's absolute path.
    """
    target = _index_target(directory)
    with _held_guard:
        held = _held_locks.get(target)
        if held is not None:
            if held[2] != threading.get_ident():
                raise ValueError(f"entity index folder {target!r} is being written by another thread of this process")
            held[1] += 1
    if held is not None:
        try:
            yield target
        finally:
            with _held_guard:
                held[1] -= 1
        return
    fd, holder = _try_lock(target)
    if fd is None:
        raise ValueError(
            f"entity index folder {target!r} is being written by another `mel index` (process {holder}, lock "
            f"{target + LOCK_SUFFIX!r}); wait for it to finish or write to another folder"
        )
    with _held_guard:
        _held_locks[target] = [fd, 1, threading.get_ident()]
    try:
        _recover_interrupted_write(target, clean_temp=fd >= 0)
        yield target
    finally:
        with _held_guard:
            _held_locks.pop(target, None)
        _unlock(fd)


@contextlib.contextmanager
def output_write_lock(output: str | os.PathLike, what: str | None = None, by: str = "another run"):
    """Hold the writer lock of the output file ``output`` of ``mel link`` / ``mel calibrate``: the mechanism of
    :func:`index_write_lock` (non-blocking ``fcntl.flock``) on ``<output>.partial.lock``.

    A second writer of the same output (another process or thread) gets a one-line ``ValueError`` naming ``what``
    (default: the output path) and the process holding it, instead of interleaving its lines with the first one's.
    Creating the lock file is also the early check that the output's folder is writable (``OSError`` otherwise). The
    lock file is removed on release. Yields the output's absolute path.
    """
    path = os.path.realpath(os.fspath(output))
    target = path + ".partial"
    lock_path = target + LOCK_SUFFIX
    what = what or f"output {os.fspath(output)!r}"
    with _held_guard:
        if target in _held_locks:
            raise ValueError(f"{what} is being written by another writer in this process (a thread); wait for it to "
                             "finish or write to another file")
    for _ in range(5):
        fd, holder = _try_lock(target)
        if fd is None:
            raise ValueError(
                f"{what} is being written by {by} (process {holder}, lock {lock_path!r}); wait for it to finish or "
                "write to another file"
            )
        try:  # the lock file may have been removed by a holder releasing it between our open and flock: retry
            if fd < 0 or os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        _unlock(fd)
    else:
        raise ValueError(f"could not take the writer lock {lock_path!r} of {what}; try again")
    with _held_guard:
        _held_locks[target] = [fd, 1, threading.get_ident()]
    try:
        yield path
    finally:
        with _held_guard:
            _held_locks.pop(target, None)
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)  # still holding the flock: a new writer opens a fresh file
        _unlock(fd)


def _recover_interrupted_write(target: str, clean_temp: bool = True) -> None:
    """With the writer lock held: undo what a writer killed mid-save left behind. A backup with no folder (killed
    between the two renames) is renamed back (the previous index); a backup beside a complete folder (killed before
    deleting it) and temp folders of dead writers are deleted."""
    backup = target + BACKUP_SUFFIX
    if os.path.isdir(backup):
        if os.path.isfile(os.path.join(target, INDEX_CONFIG_NAME)):
            shutil.rmtree(backup, ignore_errors=True)
        elif not os.path.lexists(target):
            os.rename(backup, target)
            _fsync(os.path.dirname(target))
            logger.warning("restored the entity index %s from %s (a `mel index` was killed while replacing it)", target, backup)
    if clean_temp:
        parent, prefix = os.path.dirname(target), os.path.basename(target) + TMP_INFIX
        for name in os.listdir(parent) if os.path.isdir(parent) else []:
            if name.startswith(prefix) and os.path.isdir(os.path.join(parent, name)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
                logger.info("removed %s, left by a killed index writer", os.path.join(parent, name))


def check_index_destination(directory: str | os.PathLike) -> str:
    """``ValueError`` unless ``directory`` may become an index folder: absent, empty, or an index folder (only
    :data:`INDEX_FILES`). Saving replaces the whole folder, so other files in it would be lost."""
    target = _index_target(directory)
    cwd = os.path.realpath(os.getcwd())
    if cwd == target or cwd.startswith(target.rstrip(os.sep) + os.sep):
        raise ValueError(f"refusing to write an entity index into {target!r}: it is (or holds) the current folder")
    if os.path.isdir(target):
        # a NIL calibration (`mel calibrate --index`) is not lost: save() keeps it or moves it aside
        # (_carry_calibration)
        extra = sorted(set(os.listdir(target)) - set(INDEX_FILES) - {CALIBRATION_NAME})
        if extra:
            shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
            raise ValueError(
                f"refusing to write an entity index into {target!r}: it holds {shown}, which are not index files and "
                "would be lost when the folder is replaced; write the index to a new or empty folder"
            )
    return target


#: ``mel calibrate --index I`` writes the NIL threshold here (``modeling_mel.nil.CALIBRATION_NAME``).
CALIBRATION_NAME = "nil_calibration.json"
#: Where a rebuild of ``I`` moves a calibration that belongs to the replaced vectors: ``I`` + this suffix, beside it.
STALE_CALIBRATION_SUFFIX = ".nil_calibration.previous.json"


def _index_identity(config: Any) -> tuple:
    """What a NIL calibration of an index depends on: the model (config hash, weights fingerprint), the entities
    (``entities.jsonl`` checksum) and the precision the vectors were encoded in."""
    if not isinstance(config, dict):
        return (None,)
    files = config.get("files") if isinstance(config.get("files"), dict) else {}
    entities = files.get(ENTITIES_NAME) if isinstance(files.get(ENTITIES_NAME), dict) else {}
    return (config.get("config_hash"), config.get("weights_fingerprint"), entities.get("sha256"), config.get("bf16"))


def _carry_calibration(target: str, tmp: str, config: dict) -> str | None:
    """Before the folder ``tmp`` (the new index, described by ``config``) replaces ``target``: the NIL calibration of
    ``target`` is copied into ``tmp`` when the new index has the same model, entities and precision (its threshold
    still applies), else copied aside to ``target`` + :data:`STALE_CALIBRATION_SUFFIX` (it belongs to the replaced
    vectors), with a log line either way. Returns the aside copy (the caller removes it if the swap fails), or None."""
    old = os.path.join(target, CALIBRATION_NAME)
    if not os.path.isfile(old):
        return None
    try:
        with open(os.path.join(target, INDEX_CONFIG_NAME), encoding="utf-8") as f:
            old_config = json.load(f)
    except (OSError, ValueError):
        old_config = None
    identity = _index_identity(config)
    if identity[0] is not None and _index_identity(old_config) == identity:
        shutil.copy2(old, os.path.join(tmp, CALIBRATION_NAME))
        logger.info("kept the NIL calibration of %s: the new index has the same model, entities and precision", target)
        return None
    aside = target + STALE_CALIBRATION_SUFFIX
    shutil.copy2(old, aside)
    logger.warning(
        "%s is rebuilt with another model, KB or precision: its NIL calibration belongs to the replaced vectors, so it "
        "was moved to %s; run `mel calibrate --index %s` again for the new index", target, aside, target,
    )
    return aside


def _exchange_dirs(a: str, b: str) -> bool:
    """Atomically swap two folders (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False  # an old kernel or a filesystem without exchange: fall back to two renames
    raise OSError(code, os.strerror(code), a, None, b)


def _swap_in(tmp: str, target: str) -> None:
    """Make the complete folder ``tmp`` the index folder ``target``, replacing the previous one.

    ``target`` always names a complete index, except (without an atomic exchange) between the two renames
    ``target -> target.backup`` and ``tmp -> target``, a window that :func:`_recover_interrupted_write` (run by the next
    writer and by ``EntityIndex.load``) closes by renaming the backup back.
    """
    backup = target + BACKUP_SUFFIX
    if not os.path.lexists(target):
        os.rename(tmp, target)
    elif _exchange_dirs(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # now the previous index
    else:
        if os.path.lexists(backup):
            raise ValueError(f"{backup!r} exists (left by an interrupted write); check it and remove it, then write again")
        os.rename(target, backup)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(backup, target)  # put the previous index back
            raise
        shutil.rmtree(backup, ignore_errors=True)
    _fsync(os.path.dirname(target))


def _recover_for_load(directory: str) -> str:
    """The folder to read for ``EntityIndex.load(directory)``: after a writer was killed between the two renames of a
    swap, the previous index is restored from ``<directory>.backup`` first (or read from there while a live writer
    holds the lock and the folder does not reappear)."""
    target = os.path.realpath(directory)
    backup = target + BACKUP_SUFFIX
    if not os.path.isdir(backup):
        return directory
    with _held_guard:
        if target in _held_locks:
            return directory
    try:
        fd, _ = _try_lock(target)
    except OSError:  # a read-only location: no lock file possible
        fd = None
    if fd is not None:
        try:
            _recover_interrupted_write(target, clean_temp=fd >= 0)
        finally:
            _unlock(fd)
        return directory
    deadline = time.monotonic() + 10.0  # a live writer is between its two renames (microseconds) or deleting the backup
    while time.monotonic() < deadline:
        if os.path.isfile(os.path.join(target, INDEX_CONFIG_NAME)):
            return directory
        time.sleep(0.05)
    if os.path.isfile(os.path.join(backup, INDEX_CONFIG_NAME)):
        logger.warning("entity index %s is being replaced; reading the previous index from %s", directory, backup)
        return backup
    return directory


#: Counts ``index_config.json`` records as integers (``int()`` of a list or a string would be a TypeError).
_CONFIG_INTEGERS = ("format_version", "num_entities", "size", "faiss_ntotal", "dim")


def _check_config_integers(config: dict, directory: str) -> None:
    """``ValueError`` naming the field when a count of ``index_config.json`` is not an integer (an edited file)."""
    for name in _CONFIG_INTEGERS:
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(
                f"{INDEX_CONFIG_NAME} in {directory!r}: {name} must be an integer, got {json.dumps(value)[:40]} (the "
                f"file was edited after `mel index` wrote it); restore it, or {_REBUILD}"
            )


def _verify_index_files(
    directory: str, config: dict, mmap: bool = False
) -> tuple[list[dict], np.ndarray | None, Any]:
    """Entities, vectors and FAISS index of an index folder, checked against ``index_config.json``: entity count,
    sha256 of every file, vector shape, FAISS ``ntotal`` and dimension, and the index kind (no vectors in a BM25-only
    folder). ``ValueError`` naming the file and what differs. Folders of format 1 (no checksums) get the structural
    checks only, with a warning. The FAISS index is ``None`` when ``faiss.index`` is absent (the caller rebuilds it).
    """
    version = int(config.get("format_version", 0))
    files = config.get("files") if isinstance(config.get("files"), dict) else {}
    checksummed = version >= 2
    if not checksummed:
        logger.warning(
            "entity index %s has no checksums (format %s, written by an older modeling-mel); it is loaded unchecked: "
            "%s to get integrity checks", directory, version, _REBUILD,
        )
    modified = f"the folder was modified after `mel index` wrote it; {_REBUILD}"

    def recorded(name: str) -> dict:
        entry = files.get(name)
        if not isinstance(entry, dict) or not entry.get("sha256"):
            raise ValueError(f"{INDEX_CONFIG_NAME} in {directory!r} records no checksum of {name}: {modified}")
        return entry

    def check_sha(name: str) -> None:
        if checksummed and _sha256_file(os.path.join(directory, name)) != recorded(name)["sha256"]:
            raise ValueError(f"{name} checksum differs from {INDEX_CONFIG_NAME} in {directory!r}: {modified}")

    def corrupt(name: str, err: BaseException) -> ValueError:
        size = os.path.getsize(os.path.join(directory, name))
        want = files.get(name, {}).get("bytes") if isinstance(files.get(name), dict) else None
        sizes = f"{size} bytes" + (f", {INDEX_CONFIG_NAME} records {want}" if want is not None else "")
        return ValueError(f"{name} in {directory!r} is truncated or corrupt ({sizes}): {_one_line(err)}; {_REBUILD}")

    if not os.path.isfile(os.path.join(directory, ENTITIES_NAME)):
        raise ValueError(f"{ENTITIES_NAME} is missing from the entity index {directory!r}; {_REBUILD}")
    entities = kb_records(directory)  # ValueError naming the file and line for a bad line
    count = config.get("num_entities", config.get("size"))
    if count is not None and int(count) != len(entities):
        raise ValueError(
            f"{ENTITIES_NAME} in {directory!r} holds {len(entities)} entities, {INDEX_CONFIG_NAME} records {count}: {modified}"
        )
    check_sha(ENTITIES_NAME)

    vec_path, faiss_path = os.path.join(directory, VECTORS_NAME), os.path.join(directory, FAISS_NAME)
    kind = config.get("kind") or ("bm25" if config.get("index_type") == "bm25" else "dense")
    if kind == "bm25":
        stale = [name for name in (VECTORS_NAME, FAISS_NAME) if os.path.exists(os.path.join(directory, name))]
        if stale:
            raise ValueError(
                f"{INDEX_CONFIG_NAME} in {directory!r} describes a BM25-only index (no vectors), but the folder holds "
                f"{' and '.join(stale)}, left from an earlier dense index of another KB; {_REBUILD}"
            )
        return entities, None, None
    if config.get("vectors_stored", True) is False:
        return entities, None, _read_codes_only(directory, config, entities, mmap, check_sha, corrupt, modified)
    if not os.path.isfile(vec_path):
        raise ValueError(f"{VECTORS_NAME} is missing from the dense entity index {directory!r}; {_REBUILD}")
    from safetensors.numpy import load_file

    try:
        vectors = load_file(vec_path)["vectors"]
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise corrupt(VECTORS_NAME, err) from err
    dim = config.get("dim")
    if vectors.ndim != 2 or len(vectors) != len(entities) or (dim is not None and vectors.shape[1] != int(dim)):
        raise ValueError(
            f"{VECTORS_NAME} in {directory!r} holds vectors of shape {tuple(vectors.shape)}, but there are "
            f"{len(entities)} entities in {ENTITIES_NAME} (dim {dim} in {INDEX_CONFIG_NAME}): {modified}"
        )
    check_sha(VECTORS_NAME)

    if not os.path.isfile(faiss_path):
        logger.warning("%s is missing from the entity index %s; rebuilding it from the vectors", FAISS_NAME, directory)
        return entities, vectors, None
    faiss = _faiss()
    try:
        searcher = faiss.read_index(faiss_path, faiss.IO_FLAG_MMAP if mmap else 0)
    except Exception as err:  # noqa: BLE001 - faiss raises RuntimeError with the C++ message
        raise corrupt(FAISS_NAME, err) from err
    ntotal = config.get("faiss_ntotal")
    if searcher.ntotal != len(entities) or (ntotal is not None and int(ntotal) != searcher.ntotal):
        raise ValueError(
            f"{FAISS_NAME} in {directory!r} holds {searcher.ntotal} vectors, but there are {len(entities)} entities in "
            f"{ENTITIES_NAME}" + (f" ({INDEX_CONFIG_NAME} records ntotal {ntotal})" if ntotal is not None else "")
            + f": it belongs to another index; {_REBUILD}"
        )
    if searcher.d != vectors.shape[1]:
        raise ValueError(
            f"{FAISS_NAME} in {directory!r} holds vectors of dim {searcher.d}, {VECTORS_NAME} of dim {vectors.shape[1]}: {modified}"
        )
    check_sha(FAISS_NAME)
    return entities, vectors, searcher


# -- compressed indexes: choice by size and memory budget, FAISS construction from vector chunks, build-time recall ----
#: Index types that keep compressed codes instead of float32 vectors (their exact vectors may or may not be stored).
COMPRESSED_TYPES = ("ivfpq", "ivfsq8", "hnswsq8")
#: The k of the recall measured at build time and recorded in ``index_config.json``.
RECALL_K = 64
#: recall@k that the nprobe tuning aims for on its sample of mention-like queries: above the 0.95 wanted on real
#: mentions, because the sample is small (at 10M entities, nprobe tuned to 0.95 on it gave 0.944 on other mention
#: queries, tuned to 0.97 gave 0.977: benchmarks/scale.py)
NPROBE_TARGET_RECALL = 0.97
_MEMORY_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
                 "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_memory(value: Any) -> int | None:
    """Bytes of a memory size: an int, or a string such as ``"4GB"``, ``"512MiB"``, ``"1.5g"`` (binary units);
    ``None`` stays ``None`` (no budget). ``ValueError`` naming the value otherwise."""
    if value is None or isinstance(value, bool):
        if value is None:
            return None
        raise ValueError(f"memory size {value!r} is not a size; give bytes or a string like '4GB'")
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        if unit not in _MEMORY_UNITS or not number:
            raise ValueError(f"memory size {value!r} is not understood; give bytes or a number with a unit, e.g. '4GB', '512MB'")
        size = float(number) * _MEMORY_UNITS[unit]
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"memory size {value!r} must be positive")
    return int(size)


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: ``4 sqrt(n)``, at most ``n / 39`` (FAISS wants >= 39 training points a list)."""
    return max(1, min(int(n) // 39, int(4 * math.sqrt(max(1, int(n))))))


def default_pq_m(dim: int) -> int:
    """PQ sub-quantizers for vectors of ``dim``: the largest divisor of ``dim`` at most ``dim / 4`` (one byte per
    four dimensions: 96 bytes for MiniLM's 384, 1/16 of float32)."""
    return max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)


def estimate_index_bytes(
    index_type: str, n: int, dim: int, hnsw_m: int = 32, pq_m: int | None = None, ivf_nlist: int | None = None,
    direct_map: bool = False,
) -> int:
    """Estimated bytes of a FAISS index of ``n`` vectors of ``dim`` (codes, ids, centroids, graph links), without
    the float32 vectors an :class:`EntityIndex` may keep beside it for the exact rerank."""
    n, dim = int(n), int(dim)
    nlist = int(ivf_nlist or default_nlist(n))
    links = n * (2 * int(hnsw_m) * 4 + 12)  # level-0 links (2M ints) + levels, offsets, upper levels (approx.)
    ids = n * 8 + (n * 8 if direct_map else 0)
    if index_type == "flat":
        return n * dim * 4
    if index_type == "hnsw":
        return n * dim * 4 + links
    if index_type == "hnswsq8":
        return n * dim + links + 8 * dim
    if index_type == "ivf":
        return n * dim * 4 + ids + nlist * dim * 4
    if index_type == "ivfsq8":
        return n * dim + ids + nlist * dim * 4 + 8 * dim
    if index_type == "ivfpq":
        m = int(pq_m or default_pq_m(dim))
        return n * m + ids + nlist * dim * 4 + 256 * dim * 4
    raise ValueError(f"unknown index_type {index_type!r}; expected one of {INDEX_TYPES[1:]}")


def choose_index_type(
    n: int,
    dim: int,
    memory_budget: Any = None,
    hnsw_threshold: int = 100_000,
    hnsw_m: int = 32,
    pq_m: int | None = None,
) -> tuple[str, bool]:
    """``(index_type, store_vectors)`` that ``index_type="auto"`` picks for ``n`` vectors of ``dim``.

    Without a budget: exact ``flat`` below ``hnsw_threshold`` entities, ``hnsw`` at or above it, exact vectors
    stored. With ``memory_budget`` (bytes or ``"4GB"``), the first that fits, from the most to the least exact:
    ``flat`` (below the threshold) or ``hnsw``, each with its float32 vectors; ``ivfsq8`` codes plus the float32
    vectors for an exact rerank; then codes only, the rerank running on vectors decoded from the codes: ``hnswsq8``,
    ``ivfsq8``, ``ivfpq``. ``ValueError`` naming the budget and the smallest size when nothing fits.
    """
    budget = parse_memory(memory_budget)
    n, dim = int(n), int(dim)
    first = "flat" if n < int(hnsw_threshold) else "hnsw"
    if budget is None:
        return first, True
    exact = n * dim * 4
    ladder = [(first, True), ("ivfsq8", True), ("hnswsq8", False), ("ivfsq8", False), ("ivfpq", False)]
    for kind, store in ladder:
        need = estimate_index_bytes(kind, n, dim, hnsw_m=hnsw_m, pq_m=pq_m, direct_map=not store and kind != "hnswsq8")
        need += exact if store and kind != "flat" else 0
        if kind == "flat":
            need += exact  # the FAISS copy plus the EntityIndex copy
        if need <= budget:
            return kind, store
    smallest = estimate_index_bytes("ivfpq", n, dim, pq_m=pq_m, direct_map=True)
    raise ValueError(
        f"memory_budget {memory_budget!r} ({budget / 2**20:.1f} MiB) is too small for {n} vectors of dim {dim}: the "
        f"smallest index (ivfpq, {pq_m or default_pq_m(dim)} bytes a vector) needs about {smallest / 2**20:.1f} MiB; "
        "raise --memory_budget or pass a smaller --pq_m"
    )


def faiss_index_bytes(index: Any) -> int:
    """Bytes a built FAISS index holds in memory (codes, ids, direct map, centroids, quantizer tables, graph)."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    d = int(index.d)
    if isinstance(index, faiss.IndexIVF):
        total = index.ntotal * (int(index.code_size) + 8) + faiss_index_bytes(index.quantizer)
        if index.direct_map.type != 0:
            total += index.ntotal * 8
        if isinstance(index, faiss.IndexIVFPQ):
            total += int(index.pq.M) * int(index.pq.ksub) * int(index.pq.dsub) * 4
        elif isinstance(index, faiss.IndexIVFScalarQuantizer):
            total += 2 * d * 4
        return int(total)
    if isinstance(index, faiss.IndexHNSW):
        hnsw = index.hnsw
        graph = hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
        return int(graph + faiss_index_bytes(index.storage))
    if isinstance(index, faiss.IndexScalarQuantizer):
        return int(index.ntotal * index.code_size + 2 * d * 4)
    if isinstance(index, faiss.IndexFlatCodes):
        return int(index.ntotal * index.code_size)
    return int(faiss.serialize_index(index).nbytes)


def _read_codes_only(directory: str, config: dict, entities: list, mmap: bool, check_sha: Any, corrupt: Any,
                     modified: str) -> Any:
    """The FAISS index of a folder written without its exact vectors (``vectors_stored: false``), checked like
    :func:`_verify_index_files` checks a full folder; it cannot be rebuilt, so a missing ``faiss.index`` is an error."""
    vec_path, faiss_path = os.path.join(directory, VECTORS_NAME), os.path.join(directory, FAISS_NAME)
    if os.path.exists(vec_path):
        raise ValueError(
            f"{INDEX_CONFIG_NAME} in {directory!r} describes a compressed index without stored vectors, but the folder "
            f"holds {VECTORS_NAME}: {modified}"
        )
    if not os.path.isfile(faiss_path):
        raise ValueError(
            f"{FAISS_NAME} is missing from the compressed entity index {directory!r}; its exact vectors were not "
            f"stored, so it cannot be rebuilt from them: {_REBUILD}"
        )
    faiss = _faiss()
    try:
        searcher = faiss.read_index(faiss_path, faiss.IO_FLAG_MMAP if mmap else 0)
    except Exception as err:  # noqa: BLE001 - faiss raises RuntimeError with the C++ message
        raise corrupt(FAISS_NAME, err) from err
    ntotal, dim = config.get("faiss_ntotal"), config.get("dim")
    if searcher.ntotal != len(entities) or (ntotal is not None and int(ntotal) != searcher.ntotal):
        raise ValueError(
            f"{FAISS_NAME} in {directory!r} holds {searcher.ntotal} vectors, but there are {len(entities)} entities in "
            f"{ENTITIES_NAME}: it belongs to another index; {_REBUILD}"
        )
    if dim is not None and searcher.d != int(dim):
        raise ValueError(f"{FAISS_NAME} in {directory!r} holds vectors of dim {searcher.d}, {INDEX_CONFIG_NAME} records {dim}: {modified}")
    check_sha(FAISS_NAME)
    return searcher


class CodeVectors:
    """Read-only ``(N, H)`` float32 rows decoded from a compressed FAISS index (``reconstruct_batch``): what an
    :class:`EntityIndex` built without its exact vectors reranks with. Indexing with a position, a list or an array
    of positions decodes those rows only; ``np.asarray`` decodes all of them."""

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, faiss_index: Any):
        faiss = _faiss()
        index = faiss.downcast_index(faiss_index)
        if isinstance(index, faiss.IndexIVF) and index.direct_map.type == 0:
            index.make_direct_map()  # id -> (list, offset), needed to decode rows by position
        self.faiss_index = faiss_index
        self.shape = (int(faiss_index.ntotal), int(faiss_index.d))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            key = range(*key.indices(len(self)))
        positions = np.asarray(key, dtype=np.int64)
        flat = positions.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"positions out of range for {len(self)} vectors")
        rows = self.faiss_index.reconstruct_batch(flat) if flat.size else np.zeros((0, self.shape[1]), np.float32)
        return rows.reshape(*positions.shape, self.shape[1])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.faiss_index.reconstruct_n(0, len(self)) if len(self) else np.zeros(self.shape, np.float32)
        return out.astype(dtype) if dtype is not None else out

    def __repr__(self) -> str:
        return f"CodeVectors(shape={self.shape})"


def _chunks_of(vectors: np.ndarray, size: int = 50_000):
    """A chunk source over an in-memory array: a function returning an iterator of row blocks."""
    return lambda: (vectors[s : s + size] for s in range(0, len(vectors), size))


def _gather_rows(chunks: Any, positions: np.ndarray, dim: int) -> np.ndarray:
    """Rows ``positions`` (sorted or not) of the vectors that ``chunks()`` yields in order."""
    order = np.argsort(positions)
    want = positions[order]
    out = np.empty((len(positions), dim), dtype=np.float32)
    offset = j = 0
    for block in chunks():
        end = offset + len(block)
        k = np.searchsorted(want, end)
        if k > j:
            out[order[j:k]] = block[want[j:k] - offset]
            j = k
        offset = end
        if j == len(want):
            break
    return out


def _exact_topk(queries: np.ndarray, chunks: Any, k: int) -> np.ndarray:
    """Exact top-``k`` positions by inner product over the vectors that ``chunks()`` yields (one pass, chunk by
    chunk: the vectors never need to be in memory together)."""
    faiss = _faiss()
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    offset = 0
    for block in chunks():
        block = np.ascontiguousarray(block, dtype=np.float32)
        s, i = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        best_s = np.concatenate([best_s, s], axis=1)
        best_i = np.concatenate([best_i, i + offset], axis=1)
        if best_s.shape[1] > k:
            keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
        offset += len(block)
    return best_i


def build_faiss_from_chunks(
    index_type: str,
    n: int,
    dim: int,
    chunks: Any,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 512,
    ivf_nlist: int | None = None,
    ivf_nprobe: int | None = None,
    pq_m: int | None = None,
    seed: int = 0,
    recall_queries: int = 200,
    progress: bool = False,
) -> tuple[Any, dict, dict]:
    """A filled FAISS index of type ``index_type`` over ``n`` vectors of ``dim`` that ``chunks()`` yields in order
    (called up to three times: training sample, adding, exact recall), plus its parameters and its build-time recall.

    Recall: ``recall_queries`` KB vectors held out of the quantizer training, each perturbed by Gaussian noise of
    10% of its norm, searched in the new index; the report is the mean overlap of its top-``k`` with the exact
    top-``k`` (``k = min(64, n)``). Exact indexes record 1.0 without measuring.
    """
    if index_type not in INDEX_TYPES[1:]:
        raise ValueError(f"unknown index_type {index_type!r}; expected one of {INDEX_TYPES[1:]}")
    faiss = _faiss()
    n, dim = int(n), int(dim)
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(n, size=min(n, int(recall_queries)), replace=False)) if n else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(n), held) if n - len(held) >= 256 else np.arange(n)
    params: dict[str, Any] = {}
    needs_training = index_type not in ("flat", "hnsw")
    nlist = int(ivf_nlist or default_nlist(n)) if index_type.startswith("ivf") else 0
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type in ("hnsw", "hnswsq8"):
        if index_type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        index.hnsw.efSearch = int(ef_search)
        params = {"hnsw_m": int(hnsw_m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
    else:
        quantizer = faiss.IndexFlatIP(dim)
        if index_type == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        elif index_type == "ivfsq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        else:
            m = int(pq_m or default_pq_m(dim))
            if dim % m:
                raise ValueError(f"pq_m {m} does not divide the vector dimension {dim}; pick a divisor of {dim}")
            n_train = min(len(rest), 64 * nlist) if nlist > 1 else len(rest)
            nbits = 8 if n_train >= 256 else max(1, int(math.log2(max(2, n_train))))
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            params.update(pq_m=m, pq_nbits=nbits)
        nprobe = int(ivf_nprobe or max(1, nlist // 8))
        index.nprobe = min(nprobe, nlist)
        params.update(ivf_nlist=nlist, ivf_nprobe=int(index.nprobe))
    if needs_training:
        size = min(len(rest), max(64 * nlist, 10_000) if nlist else 100_000)
        sample = _gather_rows(chunks, np.sort(rng.choice(rest, size=size, replace=False)), dim)
        index.train(sample)
        del sample
    bar = None
    if progress:
        from transformers.utils.logging import tqdm

        bar = tqdm(total=n, desc=f"filling the {index_type} index", unit="vector")
    added = 0
    for block in chunks():
        block = np.ascontiguousarray(block, dtype=np.float32)
        index.add(block)
        added += len(block)
        if bar is not None:
            bar.update(len(block))
    if bar is not None:
        bar.close()
    if added != n:
        raise ValueError(f"the vector chunks held {added} vectors, expected {n}")
    k = min(RECALL_K, n)
    if index_type == "flat":
        recall = {"k": k, "recall": 1.0, "queries": 0, "method": "exact index"}
    elif not len(held):
        recall = {"k": k, "recall": None, "queries": 0, "method": "not measured (recall_queries=0)"}
    else:
        queries = _gather_rows(chunks, held, dim)
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = queries + 0.1 * norms * rng.standard_normal(queries.shape).astype(np.float32) / math.sqrt(dim)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        gold = _exact_topk(queries, chunks, k)
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = max(int(ef_search), k)
        found = index.search(queries, k)[1]
        recall = {"k": k, "recall": exact_recall(found, gold), "queries": int(len(held)),
                  "method": "held KB vectors + 10% Gaussian noise, top-k vs exact inner product"}
    return index, params, recall


def attach_index(
    index: "EntityIndex",
    n: int,
    dim: int,
    chunks: Any,
    index_type: str = "auto",
    store_vectors: bool | None = None,
    memory_budget: Any = None,
    hnsw_threshold: int = 100_000,
    hnsw_m: int = 32,
    pq_m: int | None = None,
    **params: Any,
) -> None:
    """Build the FAISS index of ``index`` from ``n`` vectors of ``dim`` that ``chunks()`` yields in KB order
    (:func:`build_faiss_from_chunks`), and set its :attr:`~EntityIndex.vectors`: the exact vectors when
    ``store_vectors`` (``index.vectors`` must already hold them, or ``chunks`` is concatenated), else
    :class:`CodeVectors` decoding the codes. Records type, parameters, recall, memory and budget in the config."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index_type {index_type!r}; expected one of {INDEX_TYPES}")
    budget = parse_memory(memory_budget)
    if index_type == "auto":
        chosen, fits = choose_index_type(n, dim, budget, hnsw_threshold=hnsw_threshold, hnsw_m=hnsw_m, pq_m=pq_m)
    else:
        chosen = index_type
        need = estimate_index_bytes(chosen, n, dim, hnsw_m=hnsw_m, pq_m=pq_m) + n * dim * 4
        fits = budget is None or need <= budget
        if budget is not None and not fits and chosen in ("flat", "hnsw", "ivf"):
            logger.warning("a %s index of %d vectors needs about %.1f MiB, over the memory budget of %.1f MiB; "
                           "use a compressed --index_type (ivfpq, ivfsq8, hnswsq8) or auto", chosen, n, need / 2**20,
                           budget / 2**20)
    store = fits if store_vectors is None else bool(store_vectors)
    searcher, used, recall = build_faiss_from_chunks(chosen, n, dim, chunks, hnsw_m=hnsw_m, pq_m=pq_m, **params)
    if store:
        if not isinstance(index.vectors, np.ndarray):
            index.vectors = np.ascontiguousarray(np.concatenate(list(chunks()), axis=0), dtype=np.float32)
    else:
        index.vectors = CodeVectors(searcher)
    index.faiss_index = searcher
    faiss_bytes = faiss_index_bytes(searcher)
    vector_bytes = n * dim * 4 if store else 0
    index.config.update(
        index_type=chosen, dim=int(dim), size=int(n), index_params=used, vectors_stored=bool(store),
        recall=recall, memory={"faiss_bytes": faiss_bytes, "vectors_bytes": vector_bytes,
                               "total_bytes": faiss_bytes + vector_bytes, "budget_bytes": budget},
    )
    if index_type == "auto":
        index.config["index_type_requested"] = "auto"
    logger.info(
        "indexed %d vectors of dim %d (%s %s): recall@%d %s vs exact, %.1f MiB (%s)", n, dim, chosen, used,
        recall["k"], "n/a" if recall["recall"] is None else f"{recall['recall']:.3f}", (faiss_bytes + vector_bytes) / 2**20,
        "exact vectors kept for the rerank" if store else "rerank on vectors decoded from the codes",
    )


class EntityIndex:
    """Entity vectors in a FAISS index plus entity metadata.

    Args:
        entities: normalised entity records (KB order; position ``i`` is row ``i`` of ``vectors``).
        vectors: ``(N, H)`` float32 candidate vectors, or ``None`` for a metadata-only (BM25) index.
        config: the ``index_config.json`` content (hashes, index type, parameters).
        model, processor: optional ZEMEL model and processor, attached for :meth:`retrieve` (query encoding).
    """

    def __init__(
        self,
        entities: list[dict],
        vectors: np.ndarray | None = None,
        config: dict | None = None,
        model: Any = None,
        processor: Any = None,
    ):
        self.entities = entities
        if vectors is None or isinstance(vectors, CodeVectors):
            self.vectors = vectors
        else:
            self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.config = dict(config or {})
        self.model = model
        self.processor = processor
        self.faiss_index = None
        if self.vectors is not None and len(self.vectors) != len(entities):
            raise ValueError(f"{len(self.vectors)} vectors for {len(entities)} entities")

    # -- basics --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entities)

    @property
    def has_vectors(self) -> bool:
        """Whether the index holds candidate vectors (else it is metadata-only); exact or decoded from codes."""
        return self.vectors is not None

    @property
    def vectors_stored(self) -> bool:
        """Whether :attr:`vectors` are the exact float32 vectors (``False``: decoded from compressed codes)."""
        return isinstance(self.vectors, np.ndarray)

    @property
    def entity_ids(self) -> list[str]:
        return [e["entity_id"] for e in self.entities]

    def __repr__(self) -> str:
        return (
            f"EntityIndex(size={len(self)}, dim={self.config.get('dim')}, index_type={self.config.get('index_type')!r}, "
            f"config_hash={self.config.get('config_hash')!r})"
        )

    # -- building ------------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: Any,
        processor: Any,
        kb: Any,
        batch_size: int = 64,
        index_type: str = "auto",
        hnsw_threshold: int = 100_000,
        image_extractor: Any = None,
        max_length: int = 64,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 512,
        ivf_nlist: int | None = None,
        ivf_nprobe: int | None = None,
        progress: bool = True,
        bf16: bool = False,
        memory_budget: Any = None,
        store_vectors: bool | None = None,
        pq_m: int | None = None,
    ) -> "EntityIndex":
        """Encode a KB once with the model's candidate encoder and index the vectors.

        ``kb``: a ``kb.jsonl`` path, a ``datasets.Dataset`` or a list of entity rows. ``model=None`` builds a
        metadata-only index (BM25 / name-rule candidates, no vectors). ``index_type``: ``"flat"`` (exact),
        ``"hnsw"``, ``"ivf"``, the compressed ``"ivfpq"``, ``"ivfsq8"``, ``"hnswsq8"``, or ``"auto"``
        (:func:`choose_index_type`: by KB size, and by ``memory_budget`` when given). ``store_vectors``: keep the
        exact float32 vectors for the rerank (``None``: when they fit the budget; ``False``: rerank on vectors decoded
        from the compressed codes).
        ``image_extractor``: encodes entity images as regions (text-only without one). ``bf16``: encode under bf16
        autocast (``mel index`` does where :func:`~modeling_mel.hardware.bf16_is_fast`; ``--fp32`` turns it off).
        """
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index_type {index_type!r}; expected one of {INDEX_TYPES}")
        entities = kb_records(kb)
        if not entities:
            raise ValueError(f"the knowledge base {kb!r:.80} is empty (0 entities); nothing to index")
        seen: dict[str, int] = {}
        for i, e in enumerate(entities):
            if e["entity_id"] in seen:
                raise ValueError(f"entity_id {e['entity_id']!r} occurs twice in the KB (rows {seen[e['entity_id']]} and {i})")
            seen[e["entity_id"]] = i
        config: dict[str, Any] = {"format_version": FORMAT_VERSION, "size": len(entities), "metric": "inner_product"}
        if model is None:
            config.update(index_type="bm25", config_hash=None)
            logger.info("metadata-only (BM25) index of %d entities", len(entities))
            return cls(entities, None, config)
        if linking_method(model) != "dense":
            raise ValueError(
                f"{type(model).__name__} has no candidate encoder; build a dense index with a ZemelPolyEncoder, "
                "or pass model=None for a metadata-only (BM25) index"
            )
        if processor is None:
            raise ValueError("processor is required to encode the KB (a ZemelProcessor)")
        # the weights fingerprint (SHA-1 over the candidate encoder, about 3% of a 2,000-entity build) is hashed
        # beside the encoding: hashlib releases the GIL, the weights are only read
        with ThreadPoolExecutor(max_workers=1) as pool:
            fingerprint = pool.submit(model_fingerprint, model)
            vectors = encode_entities(
                model, processor, entities, batch_size=batch_size, image_extractor=image_extractor,
                max_length=max_length, progress=progress, bf16=bf16,
            ).numpy()
            weights_fingerprint = fingerprint.result()
        config.update(
            config_hash=model_config_hash(model),
            weights_fingerprint=weights_fingerprint,
            model_type=getattr(model.config, "model_type", None),
            model_name_or_path=str(getattr(model, "name_or_path", "") or ""),
            scoring=getattr(model.config, "scoring", None),
            image_model=getattr(image_extractor, "model_key", None),
            max_length=int(max_length),
            bf16=bool(bf16),
        )
        index = cls(entities, vectors, config, model=model, processor=processor)
        index.index_data(
            index_type, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search,
            ivf_nlist=ivf_nlist, ivf_nprobe=ivf_nprobe, pq_m=pq_m, store_vectors=store_vectors,
            memory_budget=memory_budget, hnsw_threshold=hnsw_threshold,
        )
        if ivf_nprobe is None and str(index.config.get("index_type", "")).startswith("ivf"):
            queries = mention_like_queries(model, processor, entities, max_length=max_length)
            index.tune_nprobe(vectors, queries)
        return index

    @classmethod
    def from_vectors(
        cls, vectors: np.ndarray, entities: Sequence[dict] | None = None, index_type: str = "flat", **params: Any
    ) -> "EntityIndex":
        """An index over given vectors (benchmarks, custom encoders); entities default to ``{"entity_id": str(i)}``."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if entities is None:
            entities = [{"entity_id": str(i), "name": str(i)} for i in range(len(vectors))]
        index = cls(list(entities), vectors, {"format_version": FORMAT_VERSION, "size": len(vectors), "config_hash": None})
        index.index_data(index_type, **params)
        return index

    def index_data(
        self,
        index_type: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 512,
        ivf_nlist: int | None = None,
        ivf_nprobe: int | None = None,
        add_batch_size: int = 50_000,
        seed: int = 0,
        pq_m: int | None = None,
        pq_nbits: int | None = None,
        store_vectors: bool | None = None,
        memory_budget: Any = None,
        hnsw_threshold: int = 100_000,
        progress: bool = False,
    ) -> None:
        """(Re)build the FAISS index over :attr:`vectors` (added in batches of ``add_batch_size``) and record its
        type, parameters, build-time recall@64 and memory in :attr:`config`.

        ``index_type="auto"`` picks by size and ``memory_budget`` (:func:`choose_index_type`). ``store_vectors=False``
        drops the exact vectors after indexing: :attr:`vectors` then decodes rows from the compressed codes
        (:class:`CodeVectors`), and the poly rerank runs on those. ``pq_nbits`` is derived from the training size.
        """
        if self.vectors is None:
            raise ValueError("this index holds no vectors (metadata-only); build it with a ZEMEL model")
        if not isinstance(self.vectors, np.ndarray):
            raise ValueError(
                "this index holds compressed codes only (built with store_vectors=False): its exact vectors are gone, "
                "so it cannot be re-indexed; rebuild it from the KB with `mel index`"
            )
        n, dim = self.vectors.shape
        attach_index(
            self, n, dim, _chunks_of(self.vectors, int(add_batch_size)), index_type=index_type, hnsw_m=hnsw_m,
            ef_construction=ef_construction, ef_search=ef_search, ivf_nlist=ivf_nlist, ivf_nprobe=ivf_nprobe,
            pq_m=pq_m, store_vectors=store_vectors, memory_budget=memory_budget, hnsw_threshold=hnsw_threshold,
            seed=seed, progress=progress,
        )

    # -- search --------------------------------------------------------------------------------------------------
    def search(self, query_vectors: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` entities by inner product: ``(scores (Q, k'), positions (Q, k'))`` with ``k' = min(k, len)``.

        Positions index :attr:`entities`; ``-1`` marks a missing hit (approximate indexes only).
        """
        if self.faiss_index is None:
            raise ValueError("this index holds no vectors (metadata-only); dense search needs an index built with a ZEMEL model")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        if hasattr(query_vectors, "detach"):  # a torch tensor
            query_vectors = query_vectors.detach().float().cpu().numpy()
        queries = np.asarray(query_vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"query vectors of shape {tuple(queries.shape)}; expected (n, {self.vectors.shape[1]})")
        k = min(int(k), len(self))
        if hasattr(self.faiss_index, "hnsw"):
            self.faiss_index.hnsw.efSearch = max(int(self.config.get("index_params", {}).get("ef_search", 16)), k)
        scores, positions = self.faiss_index.search(np.ascontiguousarray(queries), k)
        return scores, positions

    def search_ids(self, query_vectors: Any, k: int) -> list[list[tuple[str, float]]]:
        """Like :meth:`search`, as ``(entity_id, score)`` lists."""
        scores, positions = self.search(query_vectors, k)
        return [
            [(self.entities[p]["entity_id"], float(s)) for s, p in zip(srow, prow) if p >= 0]
            for srow, prow in zip(scores, positions)
        ]

    def check_model(self, model: Any) -> None:
        """``ValueError`` naming both hashes when this index was built by another model than ``model``."""
        check_index_compatible(self.config, model)

    def retrieve(self, texts: Sequence[str], mentions: Sequence[Any], k: int) -> list[list[str]]:
        """Top-``k`` entity ids for mentions in texts, encoded with the attached ZEMEL model (text only).

        ``mentions[i]``: the mention string, a ``(start, end)`` span or a dict with ``mention``/``mention_start``.
        In poly mode each of the ``m`` poly codes searches the index and the union is reranked by the poly score.
        """
        return [[e for e, _ in row[: int(k)]] for row in self.retrieve_scored(texts, mentions, k)]

    def retrieve_scored(
        self,
        texts: Sequence[str],
        mentions: Sequence[Any],
        k: int,
        extra: Sequence[Sequence[str]] | None = None,
        batch_size: int = 64,
    ) -> list[list[tuple[str, float]]]:
        """Dense top-``k`` of each mention plus its ``extra`` entity ids (e.g. name-rule candidates), each with the
        model's score (poly or bi, the score the index ranks by), sorted by descending score (ties by KB order).

        This is the first stage of retrieve-then-rerank: the reranker sees the candidates and their retriever
        scores. Unknown ``extra`` ids are ignored.
        """
        import torch

        if self.model is None or self.processor is None:
            raise ValueError("retrieval needs a ZEMEL model and processor: EntityIndex.load(dir, model=..., processor=...)")
        if self.vectors is None:
            raise ValueError("this index has no vectors (a BM25-only index); build it with a ZEMEL model (`mel index --model`)")
        if extra is not None and len(extra) != len(texts):
            raise ValueError(f"extra has {len(extra)} candidate lists for {len(texts)} texts")
        model, k = self.model, max(1, int(k))
        device = next(model.parameters()).device
        position = self._positions()
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(texts), int(batch_size)):
            b_texts = list(texts[start : start + int(batch_size)])
            with torch.inference_mode():
                enc = self.processor.encode_contexts(
                    b_texts, list(mentions[start : start + len(b_texts)]), max_length=int(self.config.get("max_length", 64))
                )
                context = model.encode_context(**{key: v.to(device) for key, v in enc.items()})
                poly = getattr(model.config, "scoring", "poly") == "poly"
                found = dense_candidates(context, k, lambda x, n: self.search(x.float().cpu().numpy(), n)[1].tolist(), poly)
                for b in range(len(b_texts)):
                    dense = found[b]
                    added = [position[e] for e in (extra[start + b] if extra is not None else []) if e in position]
                    union = list(dict.fromkeys(dense + added))
                    if not union:
                        out.append([])
                        continue
                    cand = torch.from_numpy(self.vectors[union]).to(device)[None]  # (1, K, H)
                    ctx_b = type(context)(**{f: (v[b : b + 1] if v is not None else None) for f, v in context.items()})
                    scores = dict(zip(union, model.score(ctx_b, cand)[0].float().cpu().tolist()))
                    # the dense top k by the model's score (poly: the union over codes, rescored), plus the extras
                    keep = sorted(dense, key=lambda p: (-scores[p], p))[:k]
                    keep = list(dict.fromkeys(keep + added))
                    keep.sort(key=lambda p: (-scores[p], p))
                    out.append([(self.entities[p]["entity_id"], float(scores[p])) for p in keep])
        return out

    def tune_nprobe(self, exact_vectors: np.ndarray | Callable[[], Iterable[np.ndarray]], queries: np.ndarray,
                    target: float = NPROBE_TARGET_RECALL, k: int = RECALL_K) -> dict:
        """Set the smallest IVF ``nprobe`` (1, 2, 4, ... up to nlist) whose recall@``k`` on ``queries`` against exact
        search over ``exact_vectors`` (an array, or a callable returning an iterable of row chunks in index order, as
        the sharded build streams them) reaches ``target``, and record it in the config (``index_params.ivf_nprobe``,
        ``query_recall``). ``mel index`` passes the model's own mention-like query vectors
        (:func:`mention_like_queries`): the held-out KB vectors of the build-time recall sit near their own list
        centroids, mention contexts often do not, so an nprobe chosen on KB vectors can miss most of a mention's
        neighbours."""
        faiss = _faiss()
        ivf = faiss.extract_index_ivf(self.faiss_index)
        if isinstance(self.config.get("recall"), dict):  # the build-time recall was measured at the former nprobe
            self.config["recall"] = dict(self.config["recall"], measured_at_nprobe=int(ivf.nprobe))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), len(self))
        if callable(exact_vectors):
            chunks = exact_vectors
        else:
            exact = np.asarray(exact_vectors, dtype=np.float32)
            chunks = lambda: (exact[i : i + 1_000_000] for i in range(0, len(exact), 1_000_000))  # noqa: E731
        gold = _exact_topk(queries, chunks, k)
        chosen, recall, tried = int(ivf.nlist), None, {}
        nprobe = 1
        while True:
            ivf.nprobe = min(nprobe, int(ivf.nlist))
            found = self.faiss_index.search(queries, k)[1]
            recall = exact_recall(found, gold)
            tried[int(ivf.nprobe)] = round(recall, 4)
            if recall >= target or ivf.nprobe >= ivf.nlist:
                chosen = int(ivf.nprobe)
                break
            nprobe *= 2
        ivf.nprobe = chosen
        params = dict(self.config.get("index_params") or {}, ivf_nprobe=chosen)
        result = {"k": k, "recall": recall, "target": float(target), "queries": int(len(queries)), "nprobe": chosen,
                  "sweep": tried, "method": "the model's context vectors of mention-like contexts from KB entities"}
        self.config.update(index_params=params, query_recall=result)
        logger.info("nprobe %d: recall@%d %.3f on %d mention-like queries (sweep %s)", chosen, k, recall, len(queries),
                    tried)
        return result

    def without(self, entity_ids: Iterable[str]) -> "EntityIndex":
        """A copy without ``entity_ids`` (unknown ids are ignored): the remaining entities and their stored vectors,
        re-indexed with the same index type and parameters, the model and processor still attached. ``mel calibrate
        --index`` simulates out-of-KB mentions with it, without re-encoding the KB."""
        drop = {str(e) for e in entity_ids}
        keep = [i for i, e in enumerate(self.entities) if e["entity_id"] not in drop]
        if not keep:
            raise ValueError(f"removing {len(drop)} entities leaves the index of {len(self)} entities empty")
        config = dict(self.config, size=len(keep))
        vectors = None if self.vectors is None else self.vectors[keep]
        reduced = type(self)([self.entities[i] for i in keep], vectors, config, model=self.model, processor=self.processor)
        if vectors is not None and self.faiss_index is not None:
            kind = str(self.config.get("index_type") or "flat")
            params = dict(self.config.get("index_params") or {})
            if kind.startswith("ivf"):  # nlist is capped for the new size
                params["ivf_nlist"] = min(int(params.get("ivf_nlist") or 1), max(1, len(keep) // 39))
            reduced.index_data(kind, **params)
        return reduced

    def _positions(self) -> dict[str, int]:
        cached = self.__dict__.get("_position_cache")
        if cached is None or len(cached) != len(self.entities):
            cached = {e["entity_id"]: i for i, e in enumerate(self.entities)}
            self.__dict__["_position_cache"] = cached
        return cached

    # -- persistence ---------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``entities.jsonl``, ``vectors.safetensors``, ``faiss.index`` and, last, ``index_config.json``.

        Atomic: the files go to a temp folder beside ``directory``, which then replaces ``directory`` whole (a
        BM25-only index written over a dense one leaves no vectors behind; a writer killed midway leaves the previous
        index as it was). ``index_config.json`` records the entity count, the sha256 and size of every file, the FAISS
        ``ntotal`` and the index kind, which :meth:`load` verifies. ``ValueError`` while another writer holds the
        folder's lock (``<directory>.lock``), or when ``directory`` holds files that are not index files. A failed
        write (a full disk) leaves the previous index: ``OSError`` (safetensors' and FAISS' write errors become one
        naming the folder).
        """
        with index_write_lock(directory) as target:
            check_index_destination(target)
            if self.vectors is not None and self.faiss_index is None:
                self.index_data(self.config.get("index_type", "flat"), **self.config.get("index_params", {}))
            parent, base = os.path.dirname(target), os.path.basename(target)
            os.makedirs(parent, exist_ok=True)
            while True:
                tmp = os.path.join(parent, f"{base}{TMP_INFIX}{os.getpid()}-{secrets.token_hex(4)}")
                try:
                    os.mkdir(tmp)
                    break
                except FileExistsError:
                    continue
            try:
                try:
                    config = self._write_files(tmp)
                except Exception as err:  # noqa: BLE001 - a full disk: SafetensorError, FAISS RuntimeError -> OSError
                    if isinstance(err, OSError) or not (
                        isinstance(err, RuntimeError) or type(err).__name__ == "SafetensorError"
                    ):
                        raise
                    raise OSError(
                        f"writing the entity index {target!r} failed ({type(err).__name__}: {_one_line(err)}); "
                        "the previous index is unchanged: free disk space or write to another folder"
                    ) from err
                aside = _carry_calibration(target, tmp, config)
                try:
                    _swap_in(tmp, target)
                except BaseException:
                    if aside:
                        with contextlib.suppress(OSError):
                            os.unlink(aside)  # the previous index keeps its calibration
                    raise
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        logger.info("saved %r to %s (%s index, %d entities)", self, target, config["kind"], len(self))

    def _write_files(self, directory: str) -> dict:
        """The index files in ``directory`` (a fresh temp folder), ``index_config.json`` last; returns the config."""
        files: dict[str, dict] = {}

        def record(name: str, sha256: str | None = None) -> None:
            path = os.path.join(directory, name)
            _fsync(path)
            files[name] = {"sha256": sha256 or _sha256_file(path), "bytes": os.path.getsize(path)}

        dropped = 0
        h = hashlib.sha256()
        with open(os.path.join(directory, ENTITIES_NAME), "wb") as f:
            for e in self.entities:
                safe = _json_safe(e)
                dropped += sum(1 for im in e.get("images") or [] if not isinstance(im, (str, os.PathLike)))
                safe["images"] = [im for im in safe.get("images") or [] if im is not None]
                line = (json.dumps(safe, ensure_ascii=False) + "\n").encode("utf-8")
                h.update(line)
                f.write(line)
        record(ENTITIES_NAME, h.hexdigest())
        if dropped:
            logger.warning(
                "%d in-memory entity images (not file paths) are not saved in %s; the vectors already include them",
                dropped, directory,
            )
        stale = ("files", "faiss_ntotal", "kind", "num_entities", "images_not_saved")
        config = {k: v for k, v in self.config.items() if k not in stale}
        config.update(format_version=FORMAT_VERSION, num_entities=len(self.entities), images_not_saved=dropped)
        if self.vectors is not None:
            from safetensors.numpy import save_file

            if self.faiss_index.ntotal != len(self.vectors):
                raise ValueError(f"the FAISS index holds {self.faiss_index.ntotal} vectors for {len(self.vectors)} entities")
            if self.vectors_stored:
                save_file({"vectors": self.vectors}, os.path.join(directory, VECTORS_NAME))
                record(VECTORS_NAME)
            _faiss().write_index(self.faiss_index, os.path.join(directory, FAISS_NAME))
            record(FAISS_NAME)
            config.update(kind="dense", faiss_ntotal=int(self.faiss_index.ntotal), dim=int(self.vectors.shape[1]),
                          vectors_stored=self.vectors_stored)
        else:
            config.update(kind="bm25")
        config["files"] = files
        with open(os.path.join(directory, INDEX_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        _fsync(os.path.join(directory, INDEX_CONFIG_NAME))
        _fsync(directory)
        return config

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Any = None, processor: Any = None, mmap: bool = False) -> "EntityIndex":
        """Load a saved index; with ``model`` check that it was built by that model (``ValueError`` naming both
        config hashes, or both weights fingerprints, otherwise).

        Every file is checked against ``index_config.json`` (entity count, checksums, vector shape, FAISS ``ntotal``,
        index kind): ``ValueError`` naming the file and what differs when the folder was modified, truncated or
        mixed with another index's files. Folders written before checksums existed (format 1) load with a warning.
        A folder left mid-swap by a killed writer is restored from its backup first.
        """
        directory = os.fspath(directory)
        for attempt in range(3):
            source = _recover_for_load(directory)
            try:
                before = os.stat(source)
            except OSError:
                before = None
            try:
                return cls._load_verified(source, model, processor, mmap)
            except (ValueError, OSError):
                try:
                    after = os.stat(source)
                except OSError:
                    after = None
                same = (before is None) == (after is None) and (
                    before is None or (before.st_ino, before.st_dev) == (after.st_ino, after.st_dev)
                )
                if same or attempt == 2:
                    raise
                logger.info("entity index %s was replaced while it was being read; reading it again", directory)
        raise AssertionError("unreachable")

    @classmethod
    def _load_verified(cls, directory: str, model: Any, processor: Any, mmap: bool) -> "EntityIndex":
        path = os.path.join(directory, INDEX_CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{directory!r} is not an entity index directory (no {INDEX_CONFIG_NAME}); build one with `mel index`")
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{INDEX_CONFIG_NAME} in {directory!r} is not valid JSON ({_one_line(err)}); {_REBUILD}") from err
        if not isinstance(config, dict):
            raise ValueError(f"{INDEX_CONFIG_NAME} in {directory!r} is not a JSON object; {_REBUILD}")
        _check_config_integers(config, directory)
        if int(config.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"index format {config.get('format_version')} is newer than this modeling-mel ({FORMAT_VERSION}); upgrade")
        if model is not None and config.get("config_hash") is not None:
            check_index_compatible(config, model, where=f"entity index {directory!r}")
        entities, vectors, searcher = _verify_index_files(directory, config, mmap=mmap)
        index = cls(entities, vectors, config, model=model, processor=processor)
        if vectors is None and searcher is not None:  # compressed codes only: rerank on decoded vectors
            index.faiss_index = searcher
            index.vectors = CodeVectors(searcher)
        elif vectors is not None:
            if searcher is not None:
                index.faiss_index = searcher
            else:
                index.index_data(config.get("index_type", "flat"), **config.get("index_params", {}))
        return index

    # BLINK indexer interface names.
    search_knn = search
    serialize = save
    deserialize_from = load


def mention_like_queries(
    model: Any, processor: Any, entities: Sequence[dict], n_contexts: int = 32, max_queries: int = 128,
    max_length: int = 64, seed: int = 0,
) -> np.ndarray:
    """Query vectors as linking searches with them: ``n_contexts`` seeded KB entities written as mention contexts
    (``"<name>. <description>"``, the name as the mention), encoded by the model's context encoder; its poly codes
    (poly scoring: each code searches the index) or pooled vector (bi), at most ``max_queries`` of them."""
    import torch

    rng = np.random.default_rng(seed)
    picked = rng.choice(len(entities), size=min(int(n_contexts), len(entities)), replace=False)
    texts, spans = [], []
    for i in picked.tolist():
        name = str(entities[i]["name"])
        texts.append(f"{name}. {entities[i].get('description') or ''}".strip())
        spans.append((0, len(name)))
    device = next(model.parameters()).device
    with torch.inference_mode():
        enc = processor.encode_contexts(texts, spans, max_length=int(max_length))
        context = model.encode_context(**{key: v.to(device) for key, v in enc.items()})
    poly = getattr(model.config, "scoring", "poly") == "poly" and context.poly_codes is not None
    queries = (context.poly_codes if poly else context.pooled_output[:, None, :]).float().cpu().numpy()
    queries = queries.reshape(-1, queries.shape[-1])
    if len(queries) > int(max_queries):
        queries = queries[np.sort(rng.choice(len(queries), size=int(max_queries), replace=False))]
    return np.ascontiguousarray(queries, dtype=np.float32)


def exact_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean overlap |approx_i ∩ exact_i| / |exact_i| of two ``(Q, k)`` position arrays (recall@k vs exact search)."""
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"{approx.shape[0]} vs {exact.shape[0]} queries")
    hits = [len(set(a.tolist()) & set(e.tolist())) / max(1, len(e)) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else 0.0


def synthetic_recall(
    n: int = 100_000,
    dim: int = 64,
    k: int = 100,
    n_queries: int = 200,
    index_type: str = "hnsw",
    seed: int = 0,
    **params: Any,
) -> dict[str, float]:
    """Recall@k of an approximate index against exact search on ``n`` random unit vectors (worst case: no structure).

    Returns ``{"recall": ..., "build_s": ..., "search_ms_per_query": ..., "exact_ms_per_query": ...}``.
    """
    import time

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    t0 = time.perf_counter()
    exact = EntityIndex.from_vectors(vectors, index_type="flat")
    t1 = time.perf_counter()
    _, gold = exact.search(queries, k)
    t2 = time.perf_counter()
    approx = EntityIndex.from_vectors(vectors, index_type=index_type, **params)
    t3 = time.perf_counter()
    _, found = approx.search(queries, k)
    t4 = time.perf_counter()
    return {
        "n": float(n),
        "recall": exact_recall(found, gold),
        "build_s": t3 - t2,
        "search_ms_per_query": 1000 * (t4 - t3) / n_queries,
        "exact_ms_per_query": 1000 * (t2 - t1) / n_queries,
        "exact_build_s": t1 - t0,
    }


def load_retriever(index_dir: str, model_dir: str | None = None, device: Any = None):
    """An :class:`~modeling_mel.entity_index.EntityIndex` with its ZEMEL model and processor attached (the model
    recorded in the index config unless ``model_dir`` is given), the model on ``device`` (default CPU; the FAISS
    search stays on the CPU); ``ValueError`` when neither can be loaded."""
    from transformers import AutoModel, AutoProcessor

    config_path = os.path.join(index_dir, "index_config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{index_dir!r} is not an entity index directory (no index_config.json); build one with `mel index`")
    with open(config_path, encoding="utf-8") as f:
        recorded = json.load(f).get("model_name_or_path")
    path = model_dir or recorded
    if not path or not os.path.isdir(path):
        raise ValueError(
            f"the ZEMEL model of index {index_dir!r} ({path!r}) is not a directory; pass its folder "
            "(--retriever_model / retriever_model=)"
        )
    from .model_files import load_pretrained

    model = load_pretrained(AutoModel, path).eval()  # a damaged folder: ValueError naming the file and the fix
    if device is not None:
        model = model.to(device)
    processor = AutoProcessor.from_pretrained(path)
    return EntityIndex.load(index_dir, model=model, processor=processor)


__all__ = [
    "EntityIndex",
    "CodeVectors",
    "exact_recall",
    "mention_like_queries",
    "synthetic_recall",
    "load_retriever",
    "INDEX_TYPES",
    "COMPRESSED_TYPES",
    "parse_memory",
    "choose_index_type",
    "estimate_index_bytes",
    "faiss_index_bytes",
    "build_faiss_from_chunks",
    "attach_index",
]
