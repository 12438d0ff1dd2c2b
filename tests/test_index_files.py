"""The entity index folder format (``modeling_mel.index_files``): one verified reader, atomic writes, recovery.

``EntityIndex.load``, the pipeline (``kb=<folder>``) and the pipeline file shipped without the package read a folder
through the same reader, ``read_index_folder``: a folder whose files do not belong together (shuffled, truncated,
copied from another index, stale vectors) is refused by all three with the same ``ValueError`` naming the file. A
writer that fails or is killed midway leaves the previous index loading and linking as before; a second writer is
refused; a NIL calibration of the folder is kept when the new index has the same vectors, else moved aside.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys

import numpy as np
import pytest
from transformers import pipeline

from inference_fixtures import KB_ROWS, mentions, register_all, tiny_zemel, write_kb
from modeling_mel import index_files
from modeling_mel.cli_index import index_main
from modeling_mel.entity_index import EntityIndex
from modeling_mel.index_files import (
    CALIBRATION_NAME,
    STALE_CALIBRATION_SUFFIX,
    read_index_config,
    read_index_folder,
    write_index_folder,
)
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
# The one reader
# ----------------------------------------------------------------------------------------------------------------------


def test_reader_returns_what_the_writer_wrote(indexes, tmp_path):
    index = indexes[12]
    directory = str(tmp_path / "index")
    index.save(directory)
    folder = read_index_folder(directory)
    assert folder.directory == directory and [e["entity_id"] for e in folder.entities] == index.entity_ids
    np.testing.assert_array_equal(folder.vectors, index.vectors)
    assert folder.faiss_index.ntotal == 12 and folder.faiss_index.d == 32
    config = read_index_config(directory)
    assert folder.config == config and config["kind"] == "dense" and config["num_entities"] == 12
    for name, entry in config["files"].items():  # every file's checksum and size, as written
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    # the package-free path reads the same entities and vectors, and leaves faiss.index alone
    bare = read_index_folder(directory, read_faiss=False)
    assert bare.faiss_index is None and bare.entities == folder.entities
    np.testing.assert_array_equal(bare.vectors, folder.vectors)


def test_bm25_folder_written_without_an_entity_index(tmp_path):
    rows = [{"entity_id": "a", "name": "Alpha", "images": []}, {"entity_id": "b", "name": "Beta", "images": []}]
    target, written = write_index_folder(tmp_path / "bm25", rows, {"index_type": "bm25", "config_hash": None})
    assert target == os.path.realpath(tmp_path / "bm25")
    assert sorted(os.listdir(target)) == ["entities.jsonl", "index_config.json"]
    assert written["kind"] == "bm25" and written["num_entities"] == 2 and written["format_version"] == 2
    folder = read_index_folder(target)
    assert [e["entity_id"] for e in folder.entities] == ["a", "b"] and folder.vectors is None
    assert folder.faiss_index is None and folder.config == written
    assert EntityIndex.load(target).entity_ids == ["a", "b"]


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


def _format_version_list(d, other):
    path = os.path.join(d, "index_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["format_version"] = [2]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)


# (id, build the folder as dense?, corruption, message, does the package-free reader (no FAISS) see it?)
CORRUPTIONS = [
    ("shuffled_entities", True, _shuffle_entities,
     r"entities\.jsonl checksum differs from index_config\.json in .*modified after `mel index` wrote it", True),
    ("entity_line_removed", True, _drop_last_entity,
     r"entities\.jsonl in .* holds 11 entities, index_config\.json records 12", True),
    ("faiss_from_8_entity_index", True, _faiss_from_8_entity_index,
     r"faiss\.index in .* holds 8 vectors, but there are 12 entities .*ntotal 12.*belongs to another index", False),
    ("truncated_vectors", True, _truncate("vectors.safetensors"),
     r"vectors\.safetensors in .* is truncated or corrupt \(\d+ bytes, index_config\.json records \d+\)", True),
    ("truncated_faiss", True, _truncate("faiss.index"),
     r"faiss\.index in .* is truncated or corrupt \(\d+ bytes, index_config\.json records \d+\)", False),
    ("edited_vectors", True, _flip_last_vector_byte,
     r"vectors\.safetensors checksum differs from index_config\.json", True),
    ("stale_vectors_in_bm25_folder", False, _stale_vectors_in_bm25_folder,
     r"BM25-only index .* holds vectors\.safetensors and faiss\.index", True),
    ("format_version_list", True, _format_version_list, r"format_version must be an integer, got \[2\]", True),
]


@pytest.mark.parametrize("dense, corrupt, message, without_faiss", [c[1:] for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_load_and_pipeline_refuse_a_folder_with_the_same_message(dense, corrupt, message, without_faiss, indexes, zemel,
                                                                 tmp_path, monkeypatch):
    model, processor = zemel
    indexes[8].save(tmp_path / "other")
    indexes[12].save(tmp_path / "dense-source")
    directory = str(tmp_path / "index")
    (indexes[12] if dense else EntityIndex.build(None, None, indexes[12].entities)).save(directory)
    EntityIndex.load(directory, model=model)  # intact: loads
    corrupt(directory, str(tmp_path / "other"))
    with pytest.raises(ValueError, match=message) as by_load:
        EntityIndex.load(directory, model=model)
    with pytest.raises(ValueError) as by_pipeline:
        pipeline(TASK, model=model, processor=processor, kb=directory, use_images=False)
    assert str(by_pipeline.value) == str(by_load.value)  # one reader, one message
    # the pipeline file shipped with a model, without the package: the same reader, without FAISS
    monkeypatch.setitem(sys.modules, "modeling_mel.entity_index", None)
    if without_faiss:
        with pytest.raises(ValueError) as by_fallback:
            _load_index_dir(directory, model)
        assert str(by_fallback.value) == str(by_load.value)
    else:  # faiss.index is not read there: the intact entities and vectors load, searched exactly
        entities, vectors, searcher, _ = _load_index_dir(directory, model)
        assert searcher is None and [e["entity_id"] for e in entities] == indexes[12].entity_ids
        np.testing.assert_array_equal(vectors.numpy(), indexes[12].vectors)


REMOTE_SCRIPT = """
import json, sys
sys.modules["modeling_mel"] = None  # the package is not installed: the pipeline runs on the files shipped with the model
from transformers import pipeline
out = {{}}
pipe = pipeline("multimodal-entity-linking", model={hub!r}, trust_remote_code=True, kb={index!r}, use_images=False)
out["reader"] = [m for m in sys.modules if m.endswith(".index_files")]
out["links"] = pipe({items!r}, top_k=3, candidates="dense")
try:
    pipeline("multimodal-entity-linking", model={hub!r}, trust_remote_code=True, kb={broken!r}, use_images=False)
except ValueError as err:
    out["error"] = str(err)
json.dump(out, open({out!r}, "w"))
"""


def test_pipeline_shipped_with_a_model_reads_folders_with_its_copy_of_the_reader(indexes, zemel, kbs, tmp_path):
    import subprocess

    from modeling_mel.hub import save_for_hub

    model, processor = zemel
    save_for_hub(model, processor, tmp_path / "hub")
    assert (tmp_path / "hub" / "index_files.py").read_text() == open(index_files.__file__, encoding="utf-8").read()
    index, broken = str(tmp_path / "index"), str(tmp_path / "broken")
    indexes[12].save(index)
    indexes[12].save(broken)
    _drop_last_entity(broken, None)
    with pytest.raises(ValueError) as by_load:
        EntityIndex.load(broken, model=model)
    items = mentions(kbs["root"])
    script = REMOTE_SCRIPT.format(hub=str(tmp_path / "hub"), index=index, broken=broken, items=items,
                                  out=str(tmp_path / "out.json"))
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, timeout=300)
    with open(tmp_path / "out.json", encoding="utf-8") as f:
        got = json.load(f)
    assert len(got["reader"]) == 1 and got["reader"][0].startswith("transformers_modules.")
    assert got["error"] == str(by_load.value)  # the same check, the same message
    expected = pipeline(TASK, model=model, processor=processor, kb=index, use_images=False)(items, top_k=3,
                                                                                          candidates="dense")
    assert [[r["entity_id"] for r in row] for row in got["links"]] == [[r["entity_id"] for r in row] for row in expected]
    np.testing.assert_allclose([[r["score"] for r in row] for row in got["links"]],
                               [[r["score"] for r in row] for row in expected], atol=1e-5)


def test_codes_only_folder_is_checked(tmp_path, monkeypatch):
    vectors = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    EntityIndex.from_vectors(vectors, index_type="ivfsq8", store_vectors=False).save(tmp_path / "i")
    folder = read_index_folder(tmp_path / "i")
    assert folder.vectors is None and folder.faiss_index.ntotal == 500
    with pytest.raises(ValueError, match="holds compressed FAISS codes only .* needs the modeling-mel package"):
        read_index_folder(tmp_path / "i", read_faiss=False)
    (tmp_path / "i" / "faiss.index").unlink()
    with pytest.raises(ValueError, match="faiss.index is missing from the compressed entity index.*cannot be rebuilt"):
        EntityIndex.load(tmp_path / "i")


def test_missing_faiss_index_is_rebuilt_from_the_vectors(indexes, tmp_path, caplog):
    directory = str(tmp_path / "index")
    indexes[12].save(directory)
    os.unlink(os.path.join(directory, "faiss.index"))
    with caplog.at_level(logging.WARNING, logger="modeling_mel.index_files"):
        assert read_index_folder(directory).faiss_index is None
    assert any("rebuilding it from the vectors" in r.getMessage() for r in caplog.records)
    loaded = EntityIndex.load(directory)
    np.testing.assert_array_equal(loaded.search(_queries(), 4)[1], indexes[12].search(_queries(), 4)[1])


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
    with caplog.at_level("WARNING", logger="modeling_mel.index_files"):
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
        monkeypatch.setattr(index_files, "_exchange_dirs", lambda a, b: False)
    directory = str(tmp_path / "index")
    indexes[8].save(directory)
    indexes[12].save(directory)
    assert EntityIndex.load(directory).entity_ids == indexes[12].entity_ids
    assert sorted(os.listdir(tmp_path)) == ["index", "index.lock"]  # no temp or backup folder left


def test_calibrated_index_folder_can_be_rebuilt(indexes, zemel, kbs, tmp_path, caplog):
    from modeling_mel.nil import load_calibration, save_calibration

    model, processor = zemel
    index = str(tmp_path / "index")
    indexes[8].save(index)
    save_calibration(index, {"threshold": 0.25, "protocol": {}})  # what `mel calibrate --index` writes
    # the same model, KB and precision: the calibration still applies and is kept
    with caplog.at_level(logging.INFO, logger="modeling_mel.index_files"):
        EntityIndex.build(model, processor, kbs["kb8"], batch_size=4, progress=False).save(index)
    assert load_calibration(index)["threshold"] == 0.25
    assert any("kept the NIL calibration" in r.getMessage() for r in caplog.records)
    # another KB: the index is rebuilt, the calibration of the old vectors is moved aside, with a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeling_mel.index_files"):
        indexes[12].save(index)
    assert not os.path.exists(os.path.join(index, CALIBRATION_NAME))
    with open(index + STALE_CALIBRATION_SUFFIX, encoding="utf-8") as f:
        assert json.load(f)["threshold"] == 0.25
    assert any("mel calibrate --index" in r.getMessage() for r in caplog.records)
    assert read_index_config(index)["num_entities"] == 12


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
    monkeypatch.setattr(index_files, "_exchange_dirs", lambda a, b: False)
    monkeypatch.setattr(os, "rename", lambda a, b: _raise() if ".tmp-" in os.fspath(a) else real(a, b))


def _fail_exchange(monkeypatch):
    monkeypatch.setattr(index_files, "_exchange_dirs", _raise)


def _exit(*args, **kwargs):
    os._exit(9)


def _kill_between_renames(monkeypatch):
    real = os.rename
    monkeypatch.setattr(index_files, "_exchange_dirs", lambda a, b: False)
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


# -- end to end: `mel index --bm25_only` over a dense folder (issue 15, point 2) ------------------------------------


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
