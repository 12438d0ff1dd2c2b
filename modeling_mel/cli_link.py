"""``mel link``: link the mentions of a JSONL file against a KB or an entity index, one output line per input line,
in order (a bad line gets an ``error`` field instead of stopping the run).

Lines go to ``<output>.partial`` as they finish (flushed) and the file is renamed onto the output at the end, so a
killed run leaves no half-written output; ``--resume`` keeps the complete lines of a killed run's partial file, after
checking that it was started with the same input file and options (``<output>.partial.meta.json``).

    mel link --model M --index kb_index --input mentions.jsonl --output links.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

from .cli_inference import (
    _check_boxes,
    _check_offset,
    _os_error_text,
    add_pipeline_args,
    build_pipeline,
    pipeline_argument_error,
)

logger = logging.getLogger(__name__)

#: ``mel link``'s mentions per pipeline batch: the reranker's pairs of a batch are scored together, and bf16 CPU
#: forward passes are filled to 512 token rows (``linking_cross.MIN_BF16_CPU_ROWS``), so small batches waste work:
#: token rows computed per real token 1.435 at 8 mentions, 1.137 at 32, 1.076 at 128 (WikiMEL dev, docs/results.md)
DEFAULT_LINK_BATCH_SIZE = 64

#: ``mel link`` writes ``<output>.partial`` line by line and renames it onto ``<output>`` when every line is done.
PARTIAL_SUFFIX = ".partial"
_UTF8_BOM = b"\xef\xbb\xbf"
_PIPELINE_KEYS = ("text", "mention", "mention_start", "mention_end", "image", "boxes")


# ----------------------------------------------------------------------------------------------------------------------
# Reading the input lines
# ----------------------------------------------------------------------------------------------------------------------


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


def _resolve_image(row: dict, base_dir: str) -> dict:
    image = row.get("image")
    if isinstance(image, str) and image and not os.path.isabs(image):
        row = dict(row, image=os.path.join(base_dir, image))
    return row


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


# ----------------------------------------------------------------------------------------------------------------------
# Resuming a killed run: the complete lines of its partial output, the input and options it was started with
# ----------------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------------
# Linking a file
# ----------------------------------------------------------------------------------------------------------------------


def link_file(
    pipe: Any, input_path: str, output_path: str, batch_size: int = DEFAULT_LINK_BATCH_SIZE, resume: bool = False,
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
    try:
        if fingerprint is not None and not done:
            _write_meta(meta_path, fingerprint)
        _link_lines(pipe, raw_lines, base_dir, partial_path, done, done_size, counts, batch_size, call_kwargs)
    except OSError as err:  # a full disk, a read-only file: the lines written so far stay for --resume
        target = err.filename if isinstance(err.filename, str) else partial_path
        raise ValueError(
            f"writing {target!r} failed ({_os_error_text(err)}); the complete lines written so far are kept in "
            f"{partial_path!r}: free space or fix the file and rerun with --resume"
        ) from err
    _finish_output(partial_path, output_path, meta_path)
    if resume:
        counts["resumed"] = len(done)
    return counts


def _link_lines(
    pipe: Any, raw_lines: list[bytes], base_dir: str, partial_path: str, done: list[dict], done_size: int,
    counts: dict[str, int], batch_size: int, call_kwargs: dict[str, Any],
) -> None:
    """Link the input lines after the ``done`` ones into ``partial_path`` (cut to the ``done_size`` bytes of the done
    ones), in order: parsed eight batches at a time, and each such chunk written (flushed) as soon as it is linked;
    an error line before any line to link goes out at once."""
    from transformers.utils.logging import tqdm

    chunk = max(1, int(batch_size)) * 8
    records: list[dict] = []  # parsed, not yet written
    pending: list[tuple[int, dict]] = []  # (index in records, pipeline input)

    def write_out(out: Any, progress: Any) -> None:
        _link_pending(pipe, records, pending, batch_size, call_kwargs)
        _write_records(out, records, counts)
        progress.update(len(records))
        records.clear()
        pending.clear()

    quiet = len(raw_lines) - len(done) <= chunk
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


def _link_pending(
    pipe: Any, records: list[dict], pending: list[tuple[int, dict]], batch_size: int, call_kwargs: dict[str, Any]
) -> None:
    """The predictions (or ``error``) of the ``pending`` ``(index in records, pipeline input)`` lines, into their
    records: in length-sorted batches (least padding, fewer distinct shapes); when a batch fails, its lines are run
    one by one to find the bad one(s)."""
    if not pending:
        return
    ordered = sorted(pending, key=lambda p: len(str(p[1].get("text") or "")))
    try:
        outputs = list(pipe([item for _, item in ordered], batch_size=batch_size, **call_kwargs))
        if len(outputs) != len(ordered):
            raise RuntimeError(f"{len(outputs)} outputs for {len(ordered)} inputs")
    except Exception as err:  # noqa: BLE001 - find the bad line(s) one by one
        logger.warning("a batch failed (%s); retrying its %d lines one by one", err, len(pending))
        for idx, item in pending:
            try:
                records[idx]["predictions"] = pipe(item, **call_kwargs)
            except Exception as line_err:  # noqa: BLE001 - one bad line must not stop the run
                records[idx]["error"] = _error_text(line_err)
    else:
        for (idx, _), output in zip(ordered, outputs):
            records[idx]["predictions"] = output


def _write_records(out: Any, records: list[dict], counts: dict[str, int]) -> None:
    """Write (and flush) the output lines of ``records`` and add them to ``counts``."""
    for record in records:
        if "error" in record:
            record.pop("predictions", None)
        _count_record(counts, record)
        out.write(_dump_record(record))
        out.flush()


def _finish_output(partial_path: str, output_path: str, meta_path: str) -> None:
    """Rename the complete partial output onto ``output_path`` and remove its ``.meta.json``."""
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
    parser.add_argument("--batch_size", type=int, default=DEFAULT_LINK_BATCH_SIZE,
                        help="mentions per batch; 8 batches are linked and written at a time (a killed run resumes "
                             "from the last written one)")
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
    from .index_files import output_write_lock

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


__all__ = [
    "META_SUFFIX",
    "PARTIAL_SUFFIX",
    "check_output_writable",
    "check_resume_fingerprint",
    "link_file",
    "link_fingerprint",
    "link_main",
]
