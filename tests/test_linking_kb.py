"""linking_kb: the KB as the pipeline sees it (positions, name rule, BM25, candidate cache) and the reading of a saved
entity-index folder, with the modeling_mel package and as the pipeline file shipped without it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from modeling_mel import linking_kb, pipeline_entity_linking
from modeling_mel.knowledge_base import kb_records
from modeling_mel.linking_kb import LinkingKB, _cache_of, _load_index_dir

ROWS = [
    {"entity_id": "taylorswift13", "name": "Taylor Swift"},
    {"entity_id": "taylor", "name": "Taylor"},
    {"entity_id": "swiftlang", "name": "Swift Language"},
    {"entity_id": "nasa", "name": "NASA"},
]


@pytest.fixture()
def entities() -> list[dict]:
    return kb_records(ROWS)


def test_the_pipeline_re_exports_the_kb_layer():
    for name in ("LinkingKB", "_load_index_dir", "_cache_of"):
        assert getattr(pipeline_entity_linking, name) is getattr(linking_kb, name)


def test_positions_and_name_rule(entities):
    kb = LinkingKB(entities)
    assert len(kb) == 4
    assert kb.position == {"taylorswift13": 0, "taylor": 1, "swiftlang": 2, "nasa": 3}
    assert kb.name_rule("taylor") == [1, 0]  # the exact name first, then shorter names, then KB order
    assert kb.name_rule("swift") == [0, 2]
    assert kb.name_rule("taylor", 1) == [1]
    assert kb.name_rule("obama") == []


def test_bm25_returns_positions(entities):
    pytest.importorskip("bm25s")
    kb = LinkingKB(entities)
    assert kb.bm25("NASA", 2)[0] == 3


def test_empty_or_duplicated_kb_is_refused(entities):
    with pytest.raises(ValueError, match="the knowledge base is empty"):
        LinkingKB([])
    with pytest.raises(ValueError, match=r"entity_id 'taylor' occurs twice in the KB \(rows 1 and 4\)"):
        LinkingKB(entities + [dict(entities[1])])


def test_tensor_cache_goes_to_the_device(entities):
    vectors = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    kb = LinkingKB(entities, vectors, device="cpu")
    assert kb.device == torch.device("cpu") and kb.vectors is vectors  # already there: no copy
    assert LinkingKB(entities, vectors).device is None


def test_cache_of_vectors():
    array = np.arange(6, dtype=np.float32).reshape(3, 2)
    cache = _cache_of(array)
    assert isinstance(cache, torch.Tensor) and cache.tolist() == array.tolist()
    array[0, 0] = 42.0
    assert cache[0, 0].item() == 42.0  # a view of the index's vectors, not a copy
    tensor = torch.ones(2, 2)
    assert _cache_of(tensor) is tensor and _cache_of(None) is None
    lazy = object()  # an index's CodeVectors: rows decoded on demand, kept as they are
    assert _cache_of(lazy) is lazy


@pytest.mark.parametrize("with_package", [True, False])
def test_load_index_dir(entities, tmp_path, monkeypatch, with_package):
    from modeling_mel.entity_index import EntityIndex

    vectors = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    EntityIndex.from_vectors(vectors, entities).save(tmp_path / "index")
    if not with_package:  # the pipeline file shipped with a model: no EntityIndex, exact search over the vectors
        monkeypatch.setitem(sys.modules, "modeling_mel.entity_index", None)
    got, cache, searcher, config = _load_index_dir(str(tmp_path / "index"), None)
    assert [e["entity_id"] for e in got] == [r["entity_id"] for r in ROWS]
    np.testing.assert_array_equal(cache.numpy(), vectors)
    assert config["size"] == 4
    if with_package:
        assert isinstance(searcher, EntityIndex) and searcher.entity_ids == [r["entity_id"] for r in ROWS]
    else:
        assert searcher is None
    kb = LinkingKB(got, cache, searcher)
    assert kb.position["nasa"] == 3 and kb.vectors.shape == (4, 8)
