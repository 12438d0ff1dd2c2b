"""The seeded ZEMELD-layout sample generator (modeling_mel.builders.zemeld_sample): the layout and counts it reports,
entities split disjointly (zero-shot), boxes and mention spans that hold, the same files for the same seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from modeling_mel.builders import zemeld_sample


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_generator_help(repo_root):
    out = subprocess.run([sys.executable, os.path.join(repo_root, "datasets_scripts", "zemeld", "generate_zemeld_sample.py"),
                          "--help"], capture_output=True, text=True, check=True)
    assert "--seed" in out.stdout and "--out" in out.stdout


def test_generator_is_deterministic(tmp_path):
    zemeld_sample.generate(str(tmp_path / "a"), seed=3, n_images=20)
    zemeld_sample.generate(str(tmp_path / "b"), seed=3, n_images=20)
    for name in ("annotations.jsonl", "kb.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    zemeld_sample.generate(str(tmp_path / "c"), seed=4, n_images=20)
    assert (tmp_path / "a" / "annotations.jsonl").read_text() != (tmp_path / "c" / "annotations.jsonl").read_text()


def test_layout_counts_and_zero_shot_splits(tmp_path):
    counts = zemeld_sample.generate(str(tmp_path), seed=0, n_entities=20, n_images=30, kb_images=1)
    kb, scenes = _lines(tmp_path / "kb.jsonl"), _lines(tmp_path / "annotations.jsonl")
    assert counts == {"entities": 20, "images": 30, "mentions": sum(len(s["entities"]) for s in scenes)}
    assert len(kb) == 20 and len({e["entity_id"] for e in kb}) == 20
    assert all(len(e["images"]) == 1 and os.path.isfile(tmp_path / e["images"][0]) for e in kb)
    split_of: dict[str, set[str]] = {}
    for scene in scenes:
        assert os.path.isfile(tmp_path / scene["image"]) and 1 <= len(scene["entities"]) <= 3
        for m in scene["entities"]:
            assert scene["caption"][m["mention_start"]:m["mention_start"] + len(m["mention"])] == m["mention"]
            x1, y1, x2, y2 = m["box"]
            assert 0 <= x1 < x2 <= zemeld_sample.SIZE and 0 <= y1 < y2 <= zemeld_sample.SIZE
            split_of.setdefault(m["entity_id"], set()).add(scene["split"])
    assert all(len(splits) == 1 for splits in split_of.values())  # no entity in two splits: zero-shot
    assert {s for splits in split_of.values() for s in splits} <= {"train", "dev", "test"}
