"""Entity index folders are written atomically and checked when loaded (issue 15, point 2).

A folder whose files do not belong together (shuffled, truncated, copied from another index, stale vectors) is refused
by ``EntityIndex.load``, by the pipeline (``kb=<folder>``) and by the package-free loading path, with a ``ValueError``
naming the file; a writer that fails or is killed midway leaves the previous index loading and linking as before; a
second writer is refused; ``mel index`` reports all of this in one line with exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
from transformers import pipeline

from inference_fixtures import KB_ROWS, mentions, register_all, tiny_zemel, write_kb
from modeling_mel import entity_index as ei
from modeling_mel.cli_inference import index_main
from modeling_mel.entity_index import EntityIndex
from modeling_mel.pipeline_entity_linking import TASK, _load_index_dir

register_all()

EXTRA_ROWS = [
    {"entity_id": "taylormade", "name": "TaylorMade Golf", "description": "golf equipment maker"},
    {"entity_id": "nasajpl", "name": "NASA JPL", "description": "jet propulsion laboratory"},
    {"entity_id": "yorkshire", "name": "Yorkshire", "description": "county of England"},
    {"entity_id": "justintrudeau", "name": "Justin Trudeau", "description": "prime minister of Canada"},
]


@pytest.fixture(scope="module")
def kbs(tmp_path_factory) -> dict:
    root = str(tmp_path_factory.mktemp("kb"))
    kb8 = write_kb(root)
    kb12 = os.path.join(root, "kb12.jsonl")
    with open(kb12, "w", encoding="utf-8") as f:
        for row in KB_ROWS + EXTRA_ROWS:
            f.write(json.dumps(row) + "\n")
    return {"root": root, "kb8": kb8, "kb12": kb12}


@pytest.fixture(scope="module")
def zemel():
    return tiny_zemel()


@pytest.fixture(scope="module")
def indexes(zemel, kbs) -> dict:
    model, processor = zemel
    return {n: EntityIndex.build(model, processor, kbs[f"kb{n}"], batch_size=4, progress=False) for n in (8, 12)}


def _queries() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)


def _snapshot(directory, zemel, kbs) -> dict:
    """Everything a user sees of an index folder: ids, dense search, and pipeline links."""
    model, processor = zemel
    loaded = EntityIndex.load(directory, model=model)
    scores, positions = loaded.search(_queries(), 4)
    pipe = pipeline(TASK, model=model, processor=processor, kb=str(directory), use_images=False)
    items = mentions(kbs["root"])
    return {
        "ids": loaded.entity_ids,
        "positions": positions.tolist(),
        "scores": scores.tolist(),
        "links": [pipe(items, top_k=3, candidates=mode) for mode in ("dense", "all")],
    }


# ----------------------------------------------------------------------------------------------------------------------
# Folders whose files do not belong together
# ----------------------------------------------------------------------------------------------------------------------


def _shuffle_entities(d, other):
    path = os.path.join(d, "entities.jsonl")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[::-1])


def _drop_last_entity(d, other):
    path = os.path.join(d, "entities.jsonl")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[:-1])


def _faiss_from_8_entity_index(d, other):
    shutil.copyfile(os.path.join(other, "faiss.index"), os.path.join(d, "faiss.index"))


def _truncate(name):
    def corrupt(d, other):
        path = os.path.join(d, name)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])

    return corrupt


def _flip_last_vector_byte(d, other):
    path = os.path.join(d, "vectors.safetensors")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[-1] ^= 0x40
    with open(path, "wb") as f:
        f.write(bytes(data))


def _stale_vectors_in_bm25_folder(d, other):
    # the state `mel index --bm25_only` used to leave over a dense folder: new entities, old vectors and FAISS file
    dense = os.path.join(os.path.dirname(d), "dense-source")
    for name in ("vectors.safetensors", "faiss.index"):
        shutil.copyfile(os.path.join(dense, name), os.path.join(d, name))


# (id, build the folder as dense?, corruption, EntityIndex.load / pipeline message, package-free loader message)
CORRUPTIONS = [
    ("shuffled_entities", True, _shuffle_entities,
     r"entities\.jsonl checksum differs from index_config\.json in .*modified after `mel index` wrote it",
     r"entities\.jsonl checksum differs from index_config\.json"),
    ("entity_line_removed", True, _drop_last_entity,
     r"entities\.jsonl in .* holds 11 entities, index_config\.json records 12", r"holds 11 entities"),
    ("faiss_from_8_entity_index", True, _faiss_from_8_entity_index,
     r"faiss\.index in .* holds 8 vectors, but there are 12 entities .*ntotal 12.*belongs to another index", None),
    ("truncated_vectors", True, _truncate("vectors.safetensors"),
     r"vectors\.safetensors in .* is truncated or corrupt \(\d+ bytes, index_config\.json records \d+\)",
     r"vectors\.safetensors in .* is truncated or corrupt"),
    ("truncated_faiss", True, _truncate("faiss.index"),
     r"faiss\.index in .* is truncated or corrupt \(\d+ bytes, index_config\.json records \d+\)", None),
    ("edited_vectors", True, _flip_last_vector_byte,
     r"vectors\.safetensors checksum differs from index_config\.json", r"vectors\.safetensors checksum differs"),
    ("stale_vectors_in_bm25_folder", False, _stale_vectors_in_bm25_folder,
     r"BM25-only index .* holds vectors\.safetensors and faiss\.index", r"BM25-only index .* vectors\.safetensors"),
]


@pytest.mark.parametrize("dense, corrupt, message, fallback_message", [c[1:] for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_mismatched_folder_is_refused_naming_the_file(dense, corrupt, message, fallback_message, indexes, zemel, tmp_path,
                                                     monkeypatch):
    model, processor = zemel
    indexes[8].save(tmp_path / "other")
    indexes[12].save(tmp_path / "dense-source")
    directory = str(tmp_path / "index")
    (indexes[12] if dense else EntityIndex.build(None, None, indexes[12].entities)).save(directory)
    EntityIndex.load(directory, model=model)  # intact: loads
    corrupt(directory, str(tmp_path / "other"))
    with pytest.raises(ValueError, match=message):
        EntityIndex.load(directory, model=model)
    with pytest.raises(ValueError, match=message):
        pipeline(TASK, model=model, processor=processor, kb=directory, use_images=False)
    if fallback_message is not None:  # the pipeline file shipped with a model, without the package (no FAISS)
        monkeypatch.setitem(sys.modules, "modeling_mel.entity_index", None)
        with pytest.raises(ValueError, match=fallback_message):
            _load_index_dir(directory, model)


def test_bm25_only_over_a_dense_folder_leaves_no_vectors(indexes, zemel, kbs, tmp_path):
    model, processor = zemel
    directory = str(tmp_path / "index")
    indexes[8].save(directory)
    assert index_main(["--kb", kbs["kb12"], "--out", directory, "--bm25_only"]) == 0
    assert sorted(os.listdir(directory)) == ["entities.jsonl", "index_config.json"]
    with open(os.path.join(directory, "index_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["kind"] == "bm25" and config["num_entities"] == 12 and "faiss_ntotal" not in config
    loaded = EntityIndex.load(directory, model=model)
    assert not loaded.has_vectors and len(loaded) == 12
    # the ZEMEL pipeline encodes the new KB itself: the same links as from the kb.jsonl
    items = mentions(kbs["root"])
    from_dir = pipeline(TASK, model=model, processor=processor, kb=directory, use_images=False)
    from_kb = pipeline(TASK, model=model, processor=processor, kb=kbs["kb12"], use_images=False)
    assert from_dir(items, top_k=3, candidates="dense") == from_kb(items, top_k=3, candidates="dense")


def test_old_format_without_checksums_loads_with_a_warning(indexes, zemel, tmp_path, caplog):
    model, processor = zemel
    directory = str(tmp_path / "index")
    indexes[8].save(directory)
    path = os.path.join(directory, "index_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    for key in ("files", "kind", "num_entities", "faiss_ntotal"):
        config.pop(key)
    config["format_version"] = 1
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    with caplog.at_level("WARNING", logger="modeling_mel.entity_index"):
        loaded = EntityIndex.load(directory, model=model)
    assert loaded.entity_ids == indexes[8].entity_ids
    warnings = [r.getMessage() for r in caplog.records if "no checksums" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "format 1" in warnings[0]
    pipe = pipeline(TASK, model=model, processor=processor, kb=directory, use_images=False)
    assert pipe({"text": "launch day at NASA", "mention": "NASA"}, top_k=1, candidates="dense")


# ----------------------------------------------------------------------------------------------------------------------
# Writers: one at a time, never into a folder with other files
# ----------------------------------------------------------------------------------------------------------------------


def test_second_writer_is_refused_while_the_lock_is_held(indexes, kbs, tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    directory = os.path.realpath(tmp_path / "index")
    indexes[8].save(directory)
    before = {n: (tmp_path / "index" / n).read_bytes() for n in os.listdir(directory)}
    fd = os.open(directory + ".lock", os.O_RDWR | os.O_CREAT)  # another writer (a separate open file description)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match=f"entity index folder {directory!r} is being written by another"):
            indexes[12].save(directory)
        capsys.readouterr()
        assert index_main(["--kb", kbs["kb12"], "--out", directory, "--bm25_only"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mel index: ") and directory in err and "Traceback" not in err
        assert {n: (tmp_path / "index" / n).read_bytes() for n in os.listdir(directory)} == before
    finally:
        os.close(fd)
    indexes[12].save(directory)  # the lock is free again
    assert len(EntityIndex.load(directory)) == 12


def test_folder_with_other_files_is_not_replaced(kbs, tmp_path, capsys):
    notes = tmp_path / "work" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    assert index_main(["--kb", kbs["kb8"], "--out", str(notes.parent), "--bm25_only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to write an entity index" in err and "notes.txt" in err
    assert sorted(os.listdir(notes.parent)) == ["notes.txt"] and notes.read_text() == "mine"


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic_exchange", "two_renames"])
def test_both_swap_paths_replace_the_folder(exchange, indexes, tmp_path, monkeypatch):
    if not exchange:
        monkeypatch.setattr(ei, "_exchange_dirs", lambda a, b: False, raising=False)
    directory = str(tmp_path / "index")
    indexes[8].save(directory)
    indexes[12].save(directory)
    assert EntityIndex.load(directory).entity_ids == indexes[12].entity_ids
    assert sorted(os.listdir(tmp_path)) == ["index", "index.lock"]  # no temp or backup folder left


# ----------------------------------------------------------------------------------------------------------------------
# A write that fails or is killed midway leaves the previous index as it was
# ----------------------------------------------------------------------------------------------------------------------


def _raise(*args, **kwargs):
    raise OSError(28, "No space left on device (injected)")


def _fail_vectors(monkeypatch):
    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", _raise)


def _fail_faiss(monkeypatch):
    import faiss

    monkeypatch.setattr(faiss, "write_index", _raise)


def _fail_config(monkeypatch):
    monkeypatch.setattr(json, "dump", _raise)


def _fail_final_rename(monkeypatch):
    real = os.rename
    monkeypatch.setattr(ei, "_exchange_dirs", lambda a, b: False, raising=False)
    monkeypatch.setattr(os, "rename", lambda a, b: _raise() if ".tmp-" in os.fspath(a) else real(a, b))


def _fail_exchange(monkeypatch):
    monkeypatch.setattr(ei, "_exchange_dirs", _raise, raising=False)


def _exit(*args, **kwargs):
    os._exit(9)


def _kill_between_renames(monkeypatch):
    real = os.rename
    monkeypatch.setattr(ei, "_exchange_dirs", lambda a, b: False, raising=False)
    monkeypatch.setattr(os, "rename", lambda a, b: _exit() if ".tmp-" in os.fspath(a) else real(a, b))


def _kill_while_writing_faiss(monkeypatch):
    import faiss

    monkeypatch.setattr(faiss, "write_index", _exit)


# (id, injection, killed: the writer process dies instead of raising)
FAILURES = [
    ("vectors_write_raises", _fail_vectors, False),
    ("faiss_write_raises", _fail_faiss, False),
    ("config_write_raises", _fail_config, False),
    ("final_rename_raises", _fail_final_rename, False),
    ("atomic_exchange_raises", _fail_exchange, False),
    ("killed_between_renames", _kill_between_renames, True),
    ("killed_while_writing_faiss", _kill_while_writing_faiss, True),
]


@pytest.mark.parametrize("inject, killed", [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_failed_or_killed_write_keeps_the_previous_index(inject, killed, indexes, zemel, kbs, tmp_path, monkeypatch):
    directory = str(tmp_path / "index")
    indexes[8].save(directory)
    before = _snapshot(directory, zemel, kbs)
    if killed:
        if not hasattr(os, "fork"):
            pytest.skip("needs os.fork")
        pid = os.fork()
        if pid == 0:  # the writer: dies inside save
            code = 1
            try:
                inject(monkeypatch)
                indexes[12].save(directory)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 9
    else:
        with monkeypatch.context() as patch:
            inject(patch)
            with pytest.raises(OSError, match="injected"):
                indexes[12].save(directory)
    assert _snapshot(directory, zemel, kbs) == before  # loads and links exactly as before
    if not killed:
        assert sorted(os.listdir(tmp_path)) == ["index", "index.lock"]  # the temp folder is gone
    indexes[12].save(directory)  # the next write cleans up what a killed writer left
    assert sorted(os.listdir(tmp_path)) == ["index", "index.lock"]
    assert EntityIndex.load(directory).entity_ids == indexes[12].entity_ids
