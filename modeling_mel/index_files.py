"""The entity index folder format: what ``mel index`` writes and every reader checks.

A folder ``D`` holds ``entities.jsonl`` (the entity metadata, JSON-serialisable fields only), ``vectors.safetensors``
(``(N, H)`` float32, absent from a BM25-only folder and from a compressed one written without its exact vectors),
``faiss.index`` and, written last, ``index_config.json``: the model identity, the index type and parameters, and
(format 2) the entity count, the sha256 and size of every file, FAISS ``ntotal``, the dimension and the index kind.

* Writing (:func:`write_index_folder`): under the writer lock ``D.lock`` (:func:`index_write_lock`), the files go
  to a temp folder ``D.tmp-<pid>-<hex>`` that then replaces ``D`` whole (an atomic exchange where the kernel has
  one, else two renames through ``D.backup``); a NIL calibration in ``D`` is kept or moved aside. A writer killed
  midway leaves the previous index, which the next writer or reader restores.
* Reading (:func:`read_index_folder`): the one verified reader, used by ``EntityIndex.load`` and by the linking
  pipeline (``kb=<folder>``; this file ships with saved models beside the pipeline and imports only
  ``knowledge_base.py``, numpy, safetensors and, lazily, faiss). Every file is checked against
  ``index_config.json``; a folder that was modified, truncated or mixed with another index's files is a
  ``ValueError`` naming the file and what differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np

from .knowledge_base import ENTITIES_NAME, INDEX_CONFIG_NAME, VECTORS_NAME, check_index_compatible, kb_records

logger = logging.getLogger(__name__)

FAISS_NAME = "faiss.index"
#: 2: index_config.json records the entity count, file checksums and sizes, FAISS ntotal and the index kind.
FORMAT_VERSION = 2


def import_faiss():
    """The ``faiss`` module; ``ImportError`` naming the extra to install."""
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


# -- locks, atomic replacement and recovery of index folders ---------------------------------------------------------
#: Entries an index folder may hold; :func:`write_index_folder` refuses to replace a folder holding anything else.
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



# -- writing a folder -------------------------------------------------------------------------------------------------
def _new_temp_folder(target: str) -> str:
    """A fresh, empty ``<target>.tmp-<pid>-<hex>`` beside ``target``."""
    parent, base = os.path.dirname(target), os.path.basename(target)
    os.makedirs(parent, exist_ok=True)
    while True:
        tmp = os.path.join(parent, f"{base}{TMP_INFIX}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp)
            return tmp
        except FileExistsError:
            continue


def _write_files(directory: str, entities: Sequence[dict], config: dict, vectors: np.ndarray | None,
                 faiss_index: Any) -> dict:
    """The index files in ``directory`` (a fresh temp folder), ``index_config.json`` last; returns the config."""
    files: dict[str, dict] = {}

    def record(name: str, sha256: str | None = None) -> None:
        path = os.path.join(directory, name)
        _fsync(path)
        files[name] = {"sha256": sha256 or _sha256_file(path), "bytes": os.path.getsize(path)}

    dropped = 0
    h = hashlib.sha256()
    with open(os.path.join(directory, ENTITIES_NAME), "wb") as f:
        for e in entities:
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
    config = {k: v for k, v in config.items() if k not in stale}
    config.update(format_version=FORMAT_VERSION, num_entities=len(entities), images_not_saved=dropped)
    if faiss_index is not None:
        from safetensors.numpy import save_file

        if faiss_index.ntotal != len(entities):
            raise ValueError(f"the FAISS index holds {faiss_index.ntotal} vectors for {len(entities)} entities")
        if vectors is not None:
            save_file({"vectors": vectors}, os.path.join(directory, VECTORS_NAME))
            record(VECTORS_NAME)
        import_faiss().write_index(faiss_index, os.path.join(directory, FAISS_NAME))
        record(FAISS_NAME)
        config.update(kind="dense", faiss_ntotal=int(faiss_index.ntotal), dim=int(faiss_index.d),
                      vectors_stored=vectors is not None)
    else:
        config.update(kind="bm25")
    config["files"] = files
    with open(os.path.join(directory, INDEX_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    _fsync(os.path.join(directory, INDEX_CONFIG_NAME))
    _fsync(directory)
    return config


def write_index_folder(directory: str | os.PathLike, entities: Sequence[dict], config: dict,
                       vectors: np.ndarray | None = None, faiss_index: Any = None) -> tuple[str, dict]:
    """Write an index folder: ``entities.jsonl``, the exact ``vectors`` (when given), ``faiss_index`` (``None``: a
    BM25-only folder) and, last, ``index_config.json`` (``config`` plus the entity count, file checksums and sizes,
    FAISS ``ntotal``, dimension and kind). Returns the folder's absolute path and the config written.

    Atomic: the files go to a temp folder beside ``directory``, which then replaces ``directory`` whole (a BM25-only
    index written over a dense one leaves no vectors behind; a writer killed midway leaves the previous index as it
    was). ``ValueError`` while another writer holds the folder's lock (``<directory>.lock``), or when ``directory``
    holds files that are not index files. A failed write (a full disk) leaves the previous index: ``OSError``
    (safetensors' and FAISS' write errors become one naming the folder).
    """
    with index_write_lock(directory) as target:
        check_index_destination(target)
        tmp = _new_temp_folder(target)
        try:
            try:
                written = _write_files(tmp, entities, config, vectors, faiss_index)
            except Exception as err:  # noqa: BLE001 - a full disk: SafetensorError, FAISS RuntimeError -> OSError
                if isinstance(err, OSError) or not (
                    isinstance(err, RuntimeError) or type(err).__name__ == "SafetensorError"
                ):
                    raise
                raise OSError(
                    f"writing the entity index {target!r} failed ({type(err).__name__}: {_one_line(err)}); "
                    "the previous index is unchanged: free disk space or write to another folder"
                ) from err
            aside = _carry_calibration(target, tmp, written)
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
    return target, written


# -- reading a folder: the one verified reader ------------------------------------------------------------------------
#: Counts ``index_config.json`` records as integers (``int()`` of a list or a string would be a TypeError).
_CONFIG_INTEGERS = ("format_version", "num_entities", "size", "faiss_ntotal", "dim")


@dataclasses.dataclass
class IndexFolder:
    """What :func:`read_index_folder` read and checked: the folder read (``D``, or ``D.backup`` while a writer
    replaces ``D``), its config, entities, exact vectors (``None``: BM25-only or codes only) and FAISS index (``None``:
    BM25-only, not read, or ``faiss.index`` missing beside stored vectors: rebuild it from them)."""

    directory: str
    config: dict
    entities: list[dict]
    vectors: np.ndarray | None = None
    faiss_index: Any = None


def read_index_config(directory: str | os.PathLike) -> dict:
    """The ``index_config.json`` of an index folder; ``ValueError`` when there is none, when it is not a JSON object,
    when a count is not an integer or when its format is newer than this modeling-mel."""
    directory = os.fspath(directory)
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
    for name in _CONFIG_INTEGERS:
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(
                f"{INDEX_CONFIG_NAME} in {directory!r}: {name} must be an integer, got {json.dumps(value)[:40]} (the "
                f"file was edited after `mel index` wrote it); restore it, or {_REBUILD}"
            )
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"index format {config.get('format_version')} is newer than this modeling-mel ({FORMAT_VERSION}); upgrade")
    return config


class _FolderCheck:
    """The checks of one folder against its ``index_config.json`` and the messages naming what differs."""

    def __init__(self, directory: str, config: dict):
        self.directory, self.config = directory, config
        version = int(config.get("format_version", 0))
        self.files = config.get("files") if isinstance(config.get("files"), dict) else {}
        self.checksummed = version >= 2
        if not self.checksummed:
            logger.warning(
                "entity index %s has no checksums (format %s, written by an older modeling-mel); it is loaded "
                "unchecked: %s to get integrity checks", directory, version, _REBUILD,
            )
        self.modified = f"the folder was modified after `mel index` wrote it; {_REBUILD}"

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def check_sha(self, name: str) -> None:
        if not self.checksummed:
            return
        entry = self.files.get(name)
        if not isinstance(entry, dict) or not entry.get("sha256"):
            raise ValueError(f"{INDEX_CONFIG_NAME} in {self.directory!r} records no checksum of {name}: {self.modified}")
        if _sha256_file(self.path(name)) != entry["sha256"]:
            raise ValueError(f"{name} checksum differs from {INDEX_CONFIG_NAME} in {self.directory!r}: {self.modified}")

    def corrupt(self, name: str, err: BaseException) -> ValueError:
        size = os.path.getsize(self.path(name))
        want = self.files.get(name, {}).get("bytes") if isinstance(self.files.get(name), dict) else None
        sizes = f"{size} bytes" + (f", {INDEX_CONFIG_NAME} records {want}" if want is not None else "")
        return ValueError(f"{name} in {self.directory!r} is truncated or corrupt ({sizes}): {_one_line(err)}; {_REBUILD}")

    def entities(self) -> list[dict]:
        if not os.path.isfile(self.path(ENTITIES_NAME)):
            raise ValueError(f"{ENTITIES_NAME} is missing from the entity index {self.directory!r}; {_REBUILD}")
        entities = kb_records(self.directory)  # ValueError naming the file and line for a bad line
        count = self.config.get("num_entities", self.config.get("size"))
        if count is not None and int(count) != len(entities):
            raise ValueError(
                f"{ENTITIES_NAME} in {self.directory!r} holds {len(entities)} entities, {INDEX_CONFIG_NAME} records "
                f"{count}: {self.modified}"
            )
        self.check_sha(ENTITIES_NAME)
        return entities

    def vectors(self, n: int) -> np.ndarray:
        if not os.path.isfile(self.path(VECTORS_NAME)):
            raise ValueError(f"{VECTORS_NAME} is missing from the dense entity index {self.directory!r}; {_REBUILD}")
        from safetensors.numpy import load_file

        try:
            vectors = load_file(self.path(VECTORS_NAME))["vectors"]
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise self.corrupt(VECTORS_NAME, err) from err
        dim = self.config.get("dim")
        if vectors.ndim != 2 or len(vectors) != n or (dim is not None and vectors.shape[1] != int(dim)):
            raise ValueError(
                f"{VECTORS_NAME} in {self.directory!r} holds vectors of shape {tuple(vectors.shape)}, but there are "
                f"{n} entities in {ENTITIES_NAME} (dim {dim} in {INDEX_CONFIG_NAME}): {self.modified}"
            )
        self.check_sha(VECTORS_NAME)
        return vectors

    def faiss_index(self, n: int, mmap: bool, dim: int | None, dim_of: str) -> Any:
        """``faiss.index`` of ``n`` vectors of ``dim`` (``dim_of`` says where that dimension comes from)."""
        faiss = import_faiss()
        try:
            searcher = faiss.read_index(self.path(FAISS_NAME), faiss.IO_FLAG_MMAP if mmap else 0)
        except Exception as err:  # noqa: BLE001 - faiss raises RuntimeError with the C++ message
            raise self.corrupt(FAISS_NAME, err) from err
        ntotal = self.config.get("faiss_ntotal")
        if searcher.ntotal != n or (ntotal is not None and int(ntotal) != searcher.ntotal):
            raise ValueError(
                f"{FAISS_NAME} in {self.directory!r} holds {searcher.ntotal} vectors, but there are {n} entities in "
                f"{ENTITIES_NAME}" + (f" ({INDEX_CONFIG_NAME} records ntotal {ntotal})" if ntotal is not None else "")
                + f": it belongs to another index; {_REBUILD}"
            )
        if dim is not None and searcher.d != int(dim):
            raise ValueError(
                f"{FAISS_NAME} in {self.directory!r} holds vectors of dim {searcher.d}, {dim_of} {dim}: {self.modified}"
            )
        self.check_sha(FAISS_NAME)
        return searcher


def _verify_index_files(directory: str, config: dict, mmap: bool = False, read_faiss: bool = True) -> IndexFolder:
    """Entities, vectors and FAISS index of an index folder, checked against ``index_config.json``: entity count,
    sha256 of every file, vector shape, FAISS ``ntotal`` and dimension, and the index kind (no vectors in a BM25-only
    folder). ``ValueError`` naming the file and what differs. Folders of format 1 (no checksums) get the structural
    checks only, with a warning. ``read_faiss=False`` leaves ``faiss.index`` unread (exact search over the vectors)."""
    check = _FolderCheck(directory, config)
    entities = check.entities()
    folder = IndexFolder(directory, config, entities)
    kind = config.get("kind") or ("bm25" if config.get("index_type") == "bm25" else "dense")
    if kind == "bm25":
        stale = [name for name in (VECTORS_NAME, FAISS_NAME) if os.path.exists(check.path(name))]
        if stale:
            raise ValueError(
                f"{INDEX_CONFIG_NAME} in {directory!r} describes a BM25-only index (no vectors), but the folder holds "
                f"{' and '.join(stale)}, left from an earlier dense index of another KB; {_REBUILD}"
            )
        return folder
    if config.get("vectors_stored", True) is False:  # compressed codes only: they cannot be rebuilt
        if os.path.exists(check.path(VECTORS_NAME)):
            raise ValueError(
                f"{INDEX_CONFIG_NAME} in {directory!r} describes a compressed index without stored vectors, but the "
                f"folder holds {VECTORS_NAME}: {check.modified}"
            )
        if not read_faiss:
            raise ValueError(
                f"entity index {directory!r} holds compressed FAISS codes only (built with --store_vectors no): reading "
                "it needs the modeling-mel package with faiss (pip install 'modeling-mel[faiss]'), or rebuild it with "
                "its vectors"
            )
        if not os.path.isfile(check.path(FAISS_NAME)):
            raise ValueError(
                f"{FAISS_NAME} is missing from the compressed entity index {directory!r}; its exact vectors were not "
                f"stored, so it cannot be rebuilt from them: {_REBUILD}"
            )
        folder.faiss_index = check.faiss_index(len(entities), mmap, config.get("dim"), f"{INDEX_CONFIG_NAME} records")
        return folder
    folder.vectors = check.vectors(len(entities))
    if not read_faiss:
        return folder
    if not os.path.isfile(check.path(FAISS_NAME)):
        logger.warning("%s is missing from the entity index %s; rebuilding it from the vectors", FAISS_NAME, directory)
        return folder
    folder.faiss_index = check.faiss_index(len(entities), mmap, folder.vectors.shape[1], f"{VECTORS_NAME} of dim")
    return folder


def read_index_folder(directory: str | os.PathLike, model: Any = None, mmap: bool = False,
                      read_faiss: bool = True) -> IndexFolder:
    """Read and verify an index folder (``EntityIndex.load`` and the linking pipeline's ``kb=<folder>``).

    With ``model``, ``ValueError`` naming both config hashes (or weights fingerprints) when the index was built by
    another model. Every file is checked against ``index_config.json`` (entity count, checksums, vector shape, FAISS
    ``ntotal``, index kind): ``ValueError`` naming the file and what differs when the folder was modified, truncated
    or mixed with another index's files. Folders written before checksums existed (format 1) load with a warning. A
    folder left mid-swap by a killed writer is restored from its backup first; one replaced while it is being read is
    read again. ``mmap``: map ``faiss.index`` instead of reading it. ``read_faiss=False`` (the pipeline without the
    package): ``faiss.index`` is not read; a folder of compressed codes only is then a ``ValueError``.
    """
    directory = os.fspath(directory)
    for attempt in range(3):
        source = _recover_for_load(directory)
        try:
            before = os.stat(source)
        except OSError:
            before = None
        try:
            config = read_index_config(source)
            if model is not None and config.get("config_hash") is not None:
                check_index_compatible(config, model, where=f"entity index {source!r}")
            return _verify_index_files(source, config, mmap=mmap, read_faiss=read_faiss)
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


__all__ = [
    "CALIBRATION_NAME",
    "FAISS_NAME",
    "FORMAT_VERSION",
    "INDEX_FILES",
    "IndexFolder",
    "STALE_CALIBRATION_SUFFIX",
    "check_index_destination",
    "import_faiss",
    "index_write_lock",
    "output_write_lock",
    "read_index_config",
    "read_index_folder",
    "write_index_folder",
]
