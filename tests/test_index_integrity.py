"""Entity index folders end to end (issue 15, point 2): ``mel index --bm25_only`` over a dense folder leaves no vectors
behind, and the pipeline links from the new folder as from the KB file.

The folder format itself (the one verified reader shared by ``EntityIndex.load`` and the pipeline, atomic writes,
the writer lock, recovery from killed writers): ``tests/test_index_files.py``.
"""

from __future__ import annotations

import json
import os

import pytest
from transformers import pipeline

from inference_fixtures import KB_ROWS, mentions, register_all, tiny_zemel, write_kb
from modeling_mel.cli_index import index_main
from modeling_mel.entity_index import EntityIndex
from modeling_mel.pipeline_entity_linking import TASK

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
    return {8: EntityIndex.build(model, processor, kbs["kb8"], batch_size=4, progress=False)}


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
