"""EntityIndex: build / save / load round trip and model checks. Index types and approximate-search recall:
``tests/test_faiss_index.py``; the folder format: ``tests/test_index_files.py``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import pipeline

from inference_fixtures import KB_ROWS, mentions, register_all, tiny_extractor, tiny_nsp, tiny_zemel, write_kb
from modeling_mel.entity_index import EntityIndex
from modeling_mel.pipeline_entity_linking import TASK

register_all()


@pytest.fixture(scope="module")
def kb_path(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("kb"))
    return write_kb(root)


@pytest.fixture(scope="module")
def zemel():
    return tiny_zemel()


@pytest.fixture(scope="module")
def built(zemel, kb_path, tmp_path_factory):
    model, processor = zemel
    index = EntityIndex.build(model, processor, kb_path, batch_size=3, image_extractor=tiny_extractor(), progress=False)
    directory = tmp_path_factory.mktemp("index")
    index.save(directory)
    return index, str(directory)


def test_build_encodes_every_entity_like_the_model(built, zemel):
    index, directory = built
    model, processor = zemel
    assert len(index) == len(KB_ROWS) and index.vectors.shape == (len(KB_ROWS), 32)
    assert index.config["index_type"] == "flat"  # small KB: exact search
    assert index.config["config_hash"] == model.config.config_hash()
    from modeling_mel.knowledge_base import model_fingerprint  # hashed beside the encoding, same digest

    assert index.config["weights_fingerprint"] == model_fingerprint(model) and len(index.config["weights_fingerprint"]) == 40
    # length-sorted batches give the same vectors as encoding one entity at a time (text-only entity here)
    row = KB_ROWS.index(next(r for r in KB_ROWS if r["entity_id"] == "nasa"))
    enc = processor.encode_candidates(["NASA"], ["space agency of the United States"], max_length=64)
    with torch.inference_mode():
        alone = model.encode_candidates(**enc)[0]
    np.testing.assert_allclose(index.vectors[row], alone.numpy(), atol=1e-5)
    assert sorted(os.listdir(directory)) == ["entities.jsonl", "faiss.index", "index_config.json", "vectors.safetensors"]


def test_save_load_identical_rankings(built, zemel):
    index, directory = built
    loaded = EntityIndex.load(directory, model=zemel[0])
    queries = np.random.default_rng(0).standard_normal((6, 32)).astype(np.float32)
    s1, p1 = index.search(queries, 5)
    s2, p2 = loaded.search(queries, 5)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_allclose(s1, s2)
    assert loaded.entity_ids == index.entity_ids
    # BLINK names
    assert EntityIndex.deserialize_from(directory).search_knn(queries, 3)[1].tolist() == p1[:, :3].tolist()


def test_pipeline_with_index_dir_equals_pipeline_with_kb(built, zemel, kb_path):
    index, directory = built
    model, processor = zemel
    items = mentions(os.path.dirname(kb_path))
    extractor = tiny_extractor()
    from_kb = pipeline(TASK, model=model, processor=processor, kb=kb_path, image_extractor=extractor)
    from_dir = pipeline(TASK, model=model, processor=processor, kb=directory, image_extractor=extractor)
    from_obj = pipeline(TASK, model=model, processor=processor, kb=EntityIndex.load(directory, model=model), image_extractor=extractor)
    for mode in ("dense", "all"):
        a = from_kb(items, top_k=5, candidates=mode)
        for other in (from_dir, from_obj):
            b = other(items, top_k=5, candidates=mode)
            assert [[r["entity_id"] for r in x] for x in a] == [[r["entity_id"] for r in x] for x in b]
            np.testing.assert_allclose([[r["score"] for r in x] for x in a], [[r["score"] for r in x] for x in b], atol=1e-5)
    # approximate path (search with each poly code, rerank the union) equals the exhaustive path on a tiny KB
    ann = pipeline(TASK, model=model, processor=processor, kb=directory, image_extractor=extractor, exact_threshold=0)
    assert ann(items, top_k=3, candidates="dense", num_candidates=len(KB_ROWS)) == from_dir(items, top_k=3, candidates="dense")


def test_index_from_another_model_is_refused(built, zemel, kb_path):
    _, directory = built
    other_arch, _ = tiny_zemel(poly_m=2)
    with pytest.raises(ValueError) as err:
        EntityIndex.load(directory, model=other_arch)
    built_hash, other_hash = zemel[0].config.config_hash(), other_arch.config.config_hash()
    assert built_hash in str(err.value) and other_hash in str(err.value)
    with pytest.raises(ValueError, match=f"config hash {built_hash}.*config hash {other_hash}"):
        pipeline(TASK, model=other_arch, processor=zemel[1], kb=directory)
    retrained, _ = tiny_zemel(seed=1)  # same architecture, other weights
    with pytest.raises(ValueError, match="weights fingerprint"):
        EntityIndex.load(directory, model=retrained)


def test_metadata_only_index_for_pfmel(kb_path, tmp_path):
    index = EntityIndex.build(None, None, kb_path)
    assert not index.has_vectors and index.config["index_type"] == "bm25"
    index.save(tmp_path / "bm25")
    assert not (tmp_path / "bm25" / "vectors.safetensors").exists()
    loaded = EntityIndex.load(tmp_path / "bm25")
    assert loaded.entity_ids == [r["entity_id"] for r in KB_ROWS]
    with pytest.raises(ValueError, match="metadata-only"):
        loaded.search(np.zeros((1, 32), np.float32), 3)
    model, processor = tiny_nsp()
    pipe = pipeline(TASK, model=model, processor=processor, kb=str(tmp_path / "bm25"), use_images=False, retriever="bm25")
    out = pipe({"text": "Justin on stage", "mention": "Justin"}, top_k=5)
    assert {r["entity_id"] for r in out} == {"jtimberlake", "justinbieber"}
    with pytest.raises(ValueError, match="no candidate encoder"):
        EntityIndex.build(model, processor, kb_path)


def test_index_bad_input(zemel, kb_path, tmp_path, built):
    model, processor = zemel
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        EntityIndex.build(model, processor, str(tmp_path / "empty.jsonl"))
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join(json.dumps(r) for r in (KB_ROWS[0], KB_ROWS[0])))
    with pytest.raises(ValueError, match="entity_id 'taylorswift13' occurs twice"):
        EntityIndex.build(model, processor, str(dup))
    with pytest.raises(ValueError, match="not an entity index directory"):
        EntityIndex.load(tmp_path)
    index, _ = built
    with pytest.raises(ValueError, match=r"query vectors of shape \(2, 7\); expected \(n, 32\)"):
        index.search(np.zeros((2, 7), np.float32), 3)
    # k larger than the index: every entity, no error
    assert index.search(np.zeros((1, 32), np.float32), 1000)[1].shape == (1, len(KB_ROWS))


def test_retrieve_scored_encodes_contexts_in_float32_under_bf16(built, zemel):
    # issue 26: retrieve_scored feeds a reranker's fusion (its score times config.retriever_score_weight, e.g. 64), so
    # its contexts are float32 even with a bf16 selection: the scores equal float32 retrieval's
    index, _ = built
    texts, spans = ["launch day at NASA", "the Apollo program of NASA and ESA"], ["NASA", "Apollo"]
    try:
        index.bf16 = False
        want = index.retrieve_scored(texts, spans, 4)
        index.bf16 = True
        got = index.retrieve_scored(texts, spans, 4)
        linker = index.dense_linker()
        assert linker.bf16 and not linker.context_bf16
    finally:
        index.bf16 = None
    assert [[e for e, _ in row] for row in got] == [[e for e, _ in row] for row in want]
    np.testing.assert_allclose([s for row in got for _, s in row], [s for row in want for _, s in row], atol=1e-5)
    # bf16 contexts (the pipeline's own ZEMEL path) would move the scores
    from modeling_mel.linking_dense import DenseLinker

    bf16_contexts = DenseLinker(zemel[0], zemel[1], torch.as_tensor(index.vectors), bf16=True).link(texts, spans, 4)
    moved = [abs(s - dict(w)[index.entities[p]["entity_id"]]) for row, w in zip(bf16_contexts, want) for p, s in row
             if index.entities[p]["entity_id"] in dict(w)]
    assert moved and max(moved) > 1e-4
