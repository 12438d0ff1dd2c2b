"""Compressed entity indexes (issue 17 point 1): IVF-PQ, IVF-SQ8 and HNSW-SQ8 build, save, load and search; the
index config records type, parameters, build-time recall@64 and memory; ``auto`` picks by size and memory budget;
the poly rerank runs on vectors decoded from the codes when the exact vectors are not stored. The choice of a type by
size and budget, and nprobe tuning: ``tests/test_faiss_index.py``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import pipeline

from inference_fixtures import KB_ROWS, mentions, register_all, tiny_zemel, write_kb
from modeling_mel.entity_index import EntityIndex
from modeling_mel.faiss_index import CodeVectors, estimate_index_bytes, exact_recall
from modeling_mel.pipeline_entity_linking import TASK

register_all()
DIM = 32


@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    """3,000 unit vectors around 40 centres (entity embeddings are clustered; uniform random ones are not)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    v = centres[rng.integers(0, 40, 3000)] + 0.35 * rng.standard_normal((3000, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def kb_path(tmp_path_factory) -> str:
    return write_kb(str(tmp_path_factory.mktemp("kb")))


@pytest.mark.parametrize("kind, min_recall", [("ivfpq", 0.6), ("ivfsq8", 0.9), ("hnswsq8", 0.9)])
@pytest.mark.parametrize("store", [True, False])
def test_compressed_types_build_save_load_search(kind, min_recall, store, clustered, tmp_path):
    index = EntityIndex.from_vectors(clustered, index_type=kind, store_vectors=store)
    config = index.config
    assert config["index_type"] == kind and config["vectors_stored"] is store
    # recall recorded at build time, and it is the recall of this index (recomputed here on other queries)
    assert config["recall"]["k"] == 64 and config["recall"]["queries"] == 200
    assert min_recall <= config["recall"]["recall"] <= 1.0
    queries = clustered[::97] + 0.02
    exact = EntityIndex.from_vectors(clustered, index_type="flat").search(queries, 64)[1]
    assert exact_recall(index.search(queries, 64)[1], exact) >= min_recall - 0.1
    flat_bytes = clustered.nbytes
    memory = config["memory"]
    # SQ8 / PQ codes are smaller than the float32 index of the same structure (at dim 32 HNSW links dominate)
    uncompressed = "hnsw" if kind == "hnswsq8" else "ivf"
    reference = EntityIndex.from_vectors(clustered, index_type=uncompressed, store_vectors=False).config["memory"]
    # bytes a dimension saved: 4 -> 1 (SQ8) or 0.25 (PQ, less its 256 centroids a sub-quantizer)
    saved = len(clustered) * DIM * 3.5 - 256 * DIM * 4 if kind == "ivfpq" else len(clustered) * DIM * 2.5
    assert memory["faiss_bytes"] <= reference["faiss_bytes"] - saved
    assert memory["vectors_bytes"] == (flat_bytes if store else 0)
    assert memory["total_bytes"] == memory["faiss_bytes"] + memory["vectors_bytes"]
    if kind == "ivfpq":  # 8 bytes a vector (dim / 4) + 8 of id, vs 128 of float32
        assert config["index_params"]["pq_m"] == 8 and config["index_params"]["pq_nbits"] == 8
        assert memory["faiss_bytes"] <= flat_bytes / 3
    index.save(tmp_path / "index")
    files = sorted(os.listdir(tmp_path / "index"))
    assert ("vectors.safetensors" in files) is store
    saved = json.loads((tmp_path / "index" / "index_config.json").read_text())
    assert saved["recall"] == config["recall"] and saved["memory"] == memory and saved["vectors_stored"] is store
    loaded = EntityIndex.load(tmp_path / "index")
    s1, p1 = index.search(queries, 10)
    s2, p2 = loaded.search(queries, 10)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    assert isinstance(loaded.vectors, np.ndarray if store else CodeVectors) and loaded.vectors_stored is store
    rows = loaded.vectors[[0, 5, 2999]]
    if store:
        np.testing.assert_array_equal(rows, clustered[[0, 5, 2999]])
    else:  # decoded from the codes: close to the exact vectors, not equal
        err = np.abs(rows - clustered[[0, 5, 2999]]).max()
        assert 0 < err < (0.35 if kind == "ivfpq" else 0.05), err
        # the whole decoded matrix is what the search ranks by
        decoded = np.asarray(loaded.vectors)
        assert decoded.shape == clustered.shape
        np.testing.assert_allclose(decoded[[0, 5, 2999]], rows)
        with pytest.raises(ValueError, match="cannot be re-indexed"):
            loaded.index_data(index_type="flat")


def test_auto_with_budget_through_build_and_rerank_on_codes(kb_path, tmp_path):
    """A ZEMEL index built by ``auto`` under a budget too small for float32 vectors keeps codes only; the poly
    rerank (``retrieve_scored`` and the pipeline) then scores the vectors decoded from the codes."""
    model, processor = tiny_zemel()
    exact = EntityIndex.build(model, processor, kb_path, progress=False)
    n = len(KB_ROWS)
    budget = estimate_index_bytes("ivfsq8", n, DIM, direct_map=True)  # room for SQ8 codes, not for float32 vectors
    assert budget < 2 * n * DIM * 4
    small = EntityIndex.build(model, processor, kb_path, progress=False, index_type="auto", memory_budget=budget)
    assert small.config["index_type"] == "ivfsq8" and small.config["vectors_stored"] is False
    assert small.config["index_type_requested"] == "auto" and small.config["memory"]["budget_bytes"] == budget
    small.save(tmp_path / "small")
    loaded = EntityIndex.load(tmp_path / "small", model=model, processor=processor)
    assert isinstance(loaded.vectors, CodeVectors)
    exact.processor = processor
    texts, spans = ["Justin on stage tonight", "I love new york city in winter"], ["Justin", "new york city"]
    got, want = loaded.retrieve_scored(texts, spans, k=n), exact.retrieve_scored(texts, spans, k=n)
    for g, w in zip(got, want):
        assert {e for e, _ in g} == {e for e, _ in w}  # every entity of a tiny KB
        ws = dict(w)
        diffs = [abs(s - ws[e]) for e, s in g]
        assert 0 < max(diffs) < 0.05, diffs  # decoded vectors: close to, not equal to, the exact scores
    # the scores are the poly scores of the decoded rows
    with torch.inference_mode():
        enc = processor.encode_contexts(texts[:1], spans[:1], max_length=64)
        ctx = model.encode_context(**enc)
        ids = [e for e, _ in got[0]]
        pos = [loaded.entity_ids.index(e) for e in ids]
        direct = model.score(ctx, torch.from_numpy(loaded.vectors[pos])[None])[0].tolist()
    np.testing.assert_allclose([s for _, s in got[0]], direct, atol=1e-5)
    # the pipeline over the codes-only folder links with the decoded vectors too
    items = mentions(os.path.dirname(kb_path))
    from_codes = pipeline(TASK, model=model, processor=processor, kb=str(tmp_path / "small"), use_images=False)
    from_exact = pipeline(TASK, model=model, processor=processor, kb=exact, use_images=False)
    for a, b in zip(from_codes(items, top_k=3, candidates="dense"), from_exact(items, top_k=3, candidates="dense")):
        assert len(a) == len(b) == 3
        np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], atol=0.05)
    ann = pipeline(TASK, model=model, processor=processor, kb=str(tmp_path / "small"), use_images=False, exact_threshold=0)
    assert [r["entity_id"] for r in ann(items[1], top_k=3, candidates="dense")] == \
        [r["entity_id"] for r in from_codes(items[1], top_k=3, candidates="dense")]


def test_mel_index_compressed_flags(kb_path, tmp_path):
    from modeling_mel.cli import main

    model, processor = tiny_zemel()
    model.save_pretrained(tmp_path / "zemel")
    processor.save_pretrained(tmp_path / "zemel")
    out = tmp_path / "idx"
    code = main(["index", "--model", str(tmp_path / "zemel"), "--kb", kb_path, "--out", str(out), "--no_images",
                 "--index_type", "ivfpq", "--store_vectors", "no", "--pq_m", "4", "--fp32"])
    assert code == 0
    config = json.loads((out / "index_config.json").read_text())
    assert config["index_type"] == "ivfpq" and config["index_params"]["pq_m"] == 4 and config["vectors_stored"] is False
    assert config["recall"]["k"] == len(KB_ROWS) and 0 < config["recall"]["recall"] <= 1
    assert config["memory"]["faiss_bytes"] > 0 and not (out / "vectors.safetensors").exists()
    with pytest.raises(SystemExit):
        main(["index", "--model", str(tmp_path / "zemel"), "--kb", kb_path, "--out", str(out), "--memory_budget", "lots"])
