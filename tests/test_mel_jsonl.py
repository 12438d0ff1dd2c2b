"""The mel_jsonl builder (modeling_mel.builders.mel_jsonl) on a small hand-written corpus: kept rows, every skip
and note counted, case-insensitive entity ids, the KB config, a missing kb.jsonl."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from modeling_mel.corpus import KB_FEATURES, MENTION_FEATURES, load_mel_corpus


def _png(path, colour=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="PNG")


def _skipped(d: str, config: str) -> dict:
    with open(os.path.join(d, "skipped.json"), encoding="utf-8") as f:
        return json.load(f)[config]


def test_mel_jsonl_small_corpus(tmp_path):
    d = tmp_path / "js"
    _png(str(d / "img" / "a.png"))
    (d / "img" / "bad.png").write_bytes(b"nope")
    kb = [
        {
            "entity_id": "Q1",
            "name": "Paris",
            "description": "capital of France",
            "images": ["img/a.png", "img/missing.png"],
        },
        {"entity_id": "Q2", "name": "Paris Hilton"},
        {"entity_id": "q1", "name": "dup"},  # duplicate entity (case-insensitive)
        {"name": "no id"},  # missing entity_id
    ]
    mentions = [
        {"id": "m1", "text": "I love Paris", "mention": "Paris", "image": "img/a.png", "entity_id": "Q1", "split": "train"},
        {"id": "m2", "text": "Paris Hilton again", "mention": "Paris Hilton", "mention_start": 0, "mention_end": 12,
         "entity_id": "Q2", "split": "validation"},
        {"id": "m3", "text": "x", "mention": "Paris", "entity_id": "Q1", "split": "test"},  # aligns nowhere: kept, no span
        {"id": "m4", "text": "Paris", "mention": "Paris", "entity_id": "Q9", "split": "test"},  # entity not in KB
        {"id": "m5", "text": "Paris", "mention": "Paris", "entity_id": "Q1", "image": "img/bad.png", "split": "test"},
        {"id": "m6", "text": "Paris", "mention": "Paris", "entity_id": "q2", "image": "img/gone.png", "split": "test"},
        {"id": "m7", "text": "Paris", "mention": "Paris", "entity_id": "Q1", "split": "holdout"},  # unknown split value
        {"id": "m1", "text": "Paris", "mention": "Paris", "entity_id": "Q1", "split": "test"},  # duplicate mention
        {"text": "Paris", "mention": "Paris", "entity_id": "Q1"},  # missing or invalid field
    ]  # fmt: skip
    (d / "kb.jsonl").write_text("\n".join(json.dumps(r) for r in kb) + "\n")
    (d / "mentions.jsonl").write_text("\n".join(json.dumps(r) for r in mentions) + "\n{oops\n")
    dd = load_mel_corpus("mel_jsonl", str(d), cache_dir=str(tmp_path / "c"))
    assert dd["train"].features == MENTION_FEATURES
    assert {s: dd[s]["id"] for s in dd} == {"train": ["m1"], "dev": ["m2"], "test": ["m3", "m5", "m6"]}
    rep = _skipped(str(d), "mentions")
    assert rep["skipped"] == {
        "duplicate mention": 1,
        "entity not in KB": 1,
        "malformed JSON line": 1,
        "missing or invalid field": 1,
        "unknown split value": 1,
    }
    assert rep["notes"] == {
        "image file missing": 1, "no image": 2, "offsets located": 3, "unaligned": 1, "unreadable image": 1
    }
    assert dd["test"][0]["mention_start"] is None and dd["test"][0]["mention_end"] is None  # m3
    assert dd["test"][2]["entity_id"] == "Q2"  # matched case-insensitively
    assert dd["train"][0]["mention_start"] == 7 and dd["train"][0]["image"].size == (8, 8)

    kbds = load_mel_corpus("mel_jsonl", str(d), config="kb", cache_dir=str(tmp_path / "c"))
    assert kbds.features == KB_FEATURES and kbds["entity_id"] == ["Q1", "Q2"]
    assert len(kbds[0]["images"]) == 1 and kbds[1]["screen_name"] == "" and kbds[1]["timeline"] == []
    krep = _skipped(str(d), "kb")
    assert krep["skipped"] == {"duplicate entity": 1, "missing entity_id": 1}
    assert krep["notes"] == {"image file missing": 1}

    os.remove(d / "kb.jsonl")
    with pytest.raises(FileNotFoundError, match=r"kb\.jsonl"):
        load_mel_corpus("mel_jsonl", str(d), cache_dir=str(tmp_path / "c2"))
