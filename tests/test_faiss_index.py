"""The FAISS side of an entity index (``modeling_mel.faiss_index``): the index type chosen by KB size and memory
budget, every setting carried by one ``FaissIndexConfig`` (the plain build, the sharded build and ``mel index`` get
the same index from it), the build over vector chunks, and ``nprobe`` tuned on mention-like queries."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from inference_fixtures import register_all, tiny_zemel, write_kb
from modeling_mel.entity_index import EntityIndex
from modeling_mel.faiss_index import (
    NPROBE_TARGET_RECALL,
    CodeVectors,
    FaissIndexConfig,
    _chunks_of,
    build_faiss_from_chunks,
    choose_index_type,
    estimate_index_bytes,
    exact_recall,
    mention_like_queries,
    parse_memory,
    synthetic_recall,
)

register_all()
WORDS = ["river", "city", "band", "club", "novel", "museum", "bridge", "singer", "island", "park"]


def word_kb(n: int) -> list[dict]:
    return [{"entity_id": f"e{i}", "name": f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} {i}",
             "description": f"a {WORDS[(i * 7) % 10]} near the {WORDS[(i * 3) % 10]} number {i}"} for i in range(n)]


@pytest.fixture(scope="module")
def kb_path(tmp_path_factory) -> str:
    return write_kb(str(tmp_path_factory.mktemp("kb")))


@pytest.fixture(scope="module")
def zemel():
    return tiny_zemel()


# -- the choice of an index type --------------------------------------------------------------------------------------


def test_memory_sizes_and_auto_choice():
    assert parse_memory("4GB") == 4 * 2**30 and parse_memory("512 MiB") == 512 * 2**20 and parse_memory(1000) == 1000
    assert parse_memory("1.5g") == int(1.5 * 2**30) and parse_memory(None) is None
    for bad in ("lots", "4XB", "-1GB", "0"):
        with pytest.raises(ValueError, match="memory size"):
            parse_memory(bad)
    # no budget: flat below the threshold, HNSW above (the former rule), exact vectors kept
    assert choose_index_type(1000, 384) == ("flat", True)
    assert choose_index_type(200_000, 384) == ("hnsw", True)
    # 10M MiniLM vectors: float32 alone is 14.3 GiB
    assert choose_index_type(10_000_000, 384, "64GB") == ("hnsw", True)
    assert choose_index_type(10_000_000, 384, "24GB") == ("ivfsq8", True)  # SQ8 codes + exact rerank vectors
    assert choose_index_type(10_000_000, 384, "8GB") == ("hnswsq8", False)
    assert choose_index_type(10_000_000, 384, "4GB") == ("ivfsq8", False)  # 3.7 GiB of codes and ids
    assert choose_index_type(10_000_000, 384, "2GB") == ("ivfpq", False)  # 96 bytes a vector
    assert estimate_index_bytes("ivfsq8", 10_000_000, 384, direct_map=True) <= 4 * 2**30
    with pytest.raises(ValueError, match=r"memory_budget '100MB' \(100.0 MiB\) is too small for 10000000 vectors"):
        choose_index_type(10_000_000, 384, "100MB")


def test_index_types_and_threshold(zemel, kb_path):
    model, processor = zemel
    auto = EntityIndex.build(model, processor, kb_path, hnsw_threshold=4, progress=False)
    assert auto.config["index_type"] == "hnsw"
    vectors = np.random.default_rng(1).standard_normal((2000, 16)).astype(np.float32)
    flat = EntityIndex.from_vectors(vectors, index_type="flat")
    for kind in ("hnsw", "ivf"):
        approx = EntityIndex.from_vectors(vectors, index_type=kind)
        _, gold = flat.search(vectors[:20], 10)
        _, found = approx.search(vectors[:20], 10)
        assert exact_recall(found, gold) > 0.5, kind
    with pytest.raises(ValueError, match="unknown index_type 'annoy'"):
        EntityIndex.build(model, processor, kb_path, index_type="annoy")


# -- one settings object ----------------------------------------------------------------------------------------------


def test_settings_are_one_checked_object():
    assert FaissIndexConfig.merged(None, index_type="hnsw", ef_search=64) == FaissIndexConfig(index_type="hnsw", ef_search=64)
    base = FaissIndexConfig(memory_budget="1GB", pq_m=8)
    assert FaissIndexConfig.merged(base) is base
    assert FaissIndexConfig.merged(base, pq_m=4) == FaissIndexConfig(memory_budget="1GB", pq_m=4)
    assert base.budget_bytes == 2**30
    with pytest.raises(TypeError, match=r"unknown FAISS setting\(s\) \['hnsw_treshold'\]"):
        FaissIndexConfig.merged(base, hnsw_treshold=5)
    with pytest.raises(ValueError, match="unknown index_type 'annoy'"):
        FaissIndexConfig(index_type="annoy")
    with pytest.raises(ValueError, match="memory size 'lots' is not understood"):
        FaissIndexConfig(memory_budget="lots")
    # `mel index` options -> the same object the library calls take
    options = argparse.Namespace(index_type="ivfpq", hnsw_threshold=5, memory_budget="1GB", store_vectors="no",
                                 ef_search=64, ivf_nlist=8, ivf_nprobe=None, pq_m=4)
    assert FaissIndexConfig.from_options(options) == FaissIndexConfig(
        index_type="ivfpq", hnsw_threshold=5, memory_budget="1GB", store_vectors=False, ef_search=64, ivf_nlist=8,
        pq_m=4)
    # resolve: the threshold and the budget decide, as choose_index_type does
    assert FaissIndexConfig(hnsw_threshold=10).resolve(9, 32) == ("flat", True)
    assert FaissIndexConfig(hnsw_threshold=10).resolve(10, 32) == ("hnsw", True)
    assert FaissIndexConfig(memory_budget="4GB").resolve(10_000_000, 384) == ("ivfsq8", False)
    assert FaissIndexConfig(index_type="ivf", store_vectors=False).resolve(100, 8) == ("ivf", False)
    assert FaissIndexConfig(ivf_nprobe=None).tunes_nprobe("ivfsq8") and not FaissIndexConfig(ivf_nprobe=3).tunes_nprobe("ivf")
    assert not FaissIndexConfig().tunes_nprobe("hnsw")


def test_recorded_settings_rebuild_the_same_index():
    vectors = np.random.default_rng(2).standard_normal((1500, 16)).astype(np.float32)
    settings = FaissIndexConfig(index_type="ivfpq", ivf_nlist=12, ivf_nprobe=5, pq_m=4, seed=3)
    index = EntityIndex.from_vectors(vectors, faiss=settings)
    recorded = FaissIndexConfig.from_record(index.config)
    assert recorded == FaissIndexConfig(index_type="ivfpq", ivf_nlist=12, ivf_nprobe=5, pq_m=4)  # pq_nbits is derived
    again = EntityIndex.from_vectors(vectors, faiss=FaissIndexConfig.merged(recorded, seed=3))
    assert again.config["index_params"] == index.config["index_params"] == {
        "ivf_nlist": 12, "ivf_nprobe": 5, "pq_m": 4, "pq_nbits": 8}
    queries = vectors[:10] + 0.01
    np.testing.assert_array_equal(again.search(queries, 5)[1], index.search(queries, 5)[1])


def test_one_config_gives_the_same_index_for_the_plain_and_the_sharded_build(zemel, tmp_path):
    from modeling_mel.sharded_index import encode_shards, merge_shards

    model, processor = zemel
    n, dim = 60, 32
    kb = str(tmp_path / "kb.jsonl")
    with open(kb, "w", encoding="utf-8") as f:
        for row in word_kb(n):
            f.write(json.dumps(row) + "\n")
    shard_dir = str(tmp_path / "shards")
    encode_shards(model, processor, kb, shard_dir, 16, batch_size=8, progress=False)
    codes_budget = estimate_index_bytes("ivfsq8", n, dim, direct_map=True)  # SQ8 codes fit, float32 vectors do not
    cases = [(FaissIndexConfig(hnsw_threshold=20), ("hnsw", True)),
             (FaissIndexConfig(memory_budget=codes_budget, ivf_nlist=4), ("ivfsq8", False))]
    for settings, expected in cases:
        assert settings.resolve(n, dim) == expected  # chosen once, from the settings alone
        plain = EntityIndex.build(model, processor, kb, batch_size=8, progress=False, faiss=settings)
        sharded = merge_shards(model, kb, shard_dir, 16, faiss=settings, processor=processor)
        for index in (plain, sharded):
            assert (index.config["index_type"], index.config["vectors_stored"]) == expected
            assert index.config["index_type_requested"] == "auto"
            assert index.config["memory"]["budget_bytes"] == settings.budget_bytes
        assert sharded.config["index_params"] == plain.config["index_params"]
        if expected[1]:
            np.testing.assert_allclose(sharded.vectors, plain.vectors, atol=1e-5)
        else:  # codes only: both rerank on rows decoded from the codes, and both tuned nprobe the same way
            assert isinstance(plain.vectors, CodeVectors) and isinstance(sharded.vectors, CodeVectors)
            np.testing.assert_allclose(np.asarray(sharded.vectors), np.asarray(plain.vectors), atol=0.05)
            assert sharded.config["query_recall"]["sweep"] == plain.config["query_recall"]["sweep"]
            assert sharded.config["query_recall"]["nprobe"] == plain.config["index_params"]["ivf_nprobe"]


# -- building over chunks ---------------------------------------------------------------------------------------------


def test_build_over_chunks_equals_the_build_over_one_array():
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    settings = FaissIndexConfig(index_type="ivf", ivf_nlist=20, ivf_nprobe=4, recall_queries=100)
    whole, params, recall = build_faiss_from_chunks(3000, 16, _chunks_of(vectors, 3000), settings)
    chunked, params_c, recall_c = build_faiss_from_chunks(3000, 16, _chunks_of(vectors, 7), settings)
    assert params == params_c == {"ivf_nlist": 20, "ivf_nprobe": 4}
    assert recall == recall_c and recall["queries"] == 100 and recall["k"] == 64 and 0 < recall["recall"] <= 1
    queries = vectors[::300] + 0.05
    np.testing.assert_array_equal(chunked.search(queries, 10)[1], whole.search(queries, 10)[1])
    # the recall it records is the overlap with the exact top-64 (exact search: recall 1, not measured)
    flat, _, exact = build_faiss_from_chunks(3000, 16, _chunks_of(vectors, 500), FaissIndexConfig(index_type="flat"))
    assert exact == {"k": 64, "recall": 1.0, "queries": 0, "method": "exact index"}
    assert exact_recall(whole.search(queries, 64)[1], flat.search(queries, 64)[1]) > 0.5
    with pytest.raises(ValueError, match="the vector chunks held 2999 vectors, expected 3000"):
        build_faiss_from_chunks(3000, 16, _chunks_of(vectors[:2999], 500), FaissIndexConfig(index_type="flat"))


# -- nprobe tuning and recall -----------------------------------------------------------------------------------------


def test_build_tunes_nprobe_on_mention_like_queries(zemel, tmp_path):
    """`mel index` (EntityIndex.build) of an IVF type without --ivf_nprobe picks the smallest nprobe (1, 2, 4, ...)
    whose recall@64 on the model's own mention-like context vectors reaches NPROBE_TARGET_RECALL (0.97), records it,
    and the saved index
    searches with it; an explicit nprobe is kept as given."""
    model, processor = zemel
    kb = word_kb(800)
    index = EntityIndex.build(model, processor, kb, index_type="ivfsq8", ivf_nlist=16, progress=False)
    tuned = index.config["query_recall"]
    nprobe = index.config["index_params"]["ivf_nprobe"]
    assert tuned["nprobe"] == nprobe and tuned["queries"] > 0
    assert tuned["target"] == NPROBE_TARGET_RECALL == 0.97
    assert tuned["recall"] >= NPROBE_TARGET_RECALL or nprobe == 16
    sweep = {int(p): r for p, r in tuned["sweep"].items()}
    assert all(r < NPROBE_TARGET_RECALL for p, r in sweep.items() if p < nprobe)  # the smallest reaching the target
    # the recorded recall is what a search with the saved index gives on the same queries
    queries = mention_like_queries(model, processor, index.entities)
    exact = EntityIndex.from_vectors(np.asarray(index.vectors), index_type="flat").search(queries, 64)[1]
    index.save(tmp_path / "idx")
    loaded = EntityIndex.load(tmp_path / "idx", model=model)
    assert exact_recall(loaded.search(queries, 64)[1], exact) == pytest.approx(tuned["recall"], abs=1e-9)
    given = EntityIndex.build(model, processor, kb, index_type="ivfsq8", ivf_nlist=16, ivf_nprobe=3, progress=False)
    assert given.config["index_params"]["ivf_nprobe"] == 3 and "query_recall" not in given.config


def test_hnsw_recall_at_100_on_20k_entities():
    report = synthetic_recall(n=20_000, dim=64, k=100, n_queries=100, index_type="hnsw")
    print(f"HNSW recall@100 vs exact on 20k random entities: {report['recall']:.4f}")
    assert report["recall"] >= 0.95


@pytest.mark.slow
def test_hnsw_recall_at_100_on_100k_entities():
    report = synthetic_recall(n=100_000, dim=64, k=100, n_queries=200, index_type="hnsw")
    print(f"HNSW recall@100 vs exact on 100k random entities: {report['recall']:.4f}")
    assert report["recall"] >= 0.95
