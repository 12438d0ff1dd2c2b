"""ZEMEL corpora (modeling_mel.zemel_data): the evaluation KB of each mode, split and eval_kb names, the zero-shot
check, the errors of bad corpus arguments, a small mel_jsonl corpus loaded into rows, and the re-exports of
modeling_mel.zemel_evaluation. ZEMELD's zero-shot KBs on the builder's sample: tests/test_zemel_eval_kb.py."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from modeling_mel.zemel_data import (
    ZemelData,
    canonical_eval_kb,
    canonical_split,
    check_zero_shot,
    load_zemel_data,
)

KB = {e: {"entity_id": e, "name": e} for e in ("a", "b", "c", "d", "unused")}


def _data(zero_shot: bool) -> ZemelData:
    mentions = {"train": [{"entity_id": "a"}, {"entity_id": "b"}], "dev": [{"entity_id": "c"}],
                "test": [{"entity_id": "d"}, {"entity_id": "d"}]}
    return ZemelData("toy", mentions, kbs={}, full_kb=KB, zero_shot=zero_shot)


def test_evaluation_kb_of_each_mode():
    zs = _data(zero_shot=True)
    assert list(zs.kb_for("test")) == ["c", "d", "unused"]  # unseen: every entity not seen in training, unused too
    assert list(zs.kb_for("validation", "split")) == ["c", "d", "unused"]  # the old name, and dev's other name
    assert list(zs.kb_for("train")) == ["a", "b"]  # training is linked against its own gold entities
    assert list(zs.kb_for("test", "gold_only")) == ["d"] and list(zs.kb_for("test", "full")) == list(KB)
    assert list(_data(zero_shot=False).kb_for("test")) == list(KB)  # no zero-shot split: the whole KB
    assert canonical_split("valid") == "dev" and canonical_eval_kb("split") == "unseen"
    with pytest.raises(ValueError, match=r"unknown eval_kb 'seen'; choose one of \['unseen', 'full', 'gold_only'"):
        zs.kb_for("test", "seen")
    with pytest.raises(ValueError, match=r"split 'holdout' is not in the toy corpus; available splits: \['dev', "):
        zs.split("holdout")


def test_seen_entities_and_gold_kb():
    zs = _data(zero_shot=True)
    assert zs.seen_entities() == frozenset({"a", "b"})  # the gold of the train mentions
    recorded = ZemelData("toy", zs.mentions, {}, KB, zero_shot=True, seen_in_training=frozenset({"a"}))
    assert recorded.seen_entities() == frozenset({"a"})  # the corpus's own flags win
    assert list(recorded.kb_for("test")) == ["b", "c", "d", "unused"]
    assert not zs.has_images
    with pytest.raises(ValueError, match="split 'empty' has no gold entity in the toy KB"):
        ZemelData("toy", {"empty": []}, {}, KB).gold_kb("empty")


def test_zero_shot_check_and_corpus_arguments(tmp_path):
    assert check_zero_shot([{"entity_id": "a"}, {"entity_id": "b"}], [{"entity_id": "b"}, {"entity_id": "c"}],
                           "dev") == ["b"]
    with pytest.raises(ValueError, match=r"unknown dataset 'twitter_mel'; choose one of \['zemeld', 'mel_jsonl'"):
        load_zemel_data("twitter_mel", str(tmp_path))
    with pytest.raises(ValueError, match="data_dir .* is not a directory"):
        load_zemel_data("zemeld", str(tmp_path / "missing"))


def test_mel_jsonl_corpus_becomes_rows_with_one_kb(tmp_path):
    d = tmp_path / "js"
    os.makedirs(d / "img")
    Image.new("RGB", (8, 8), (200, 30, 30)).save(d / "img" / "a.png", format="PNG")
    kb = [{"entity_id": "Q1", "name": "Paris", "description": "capital of France", "images": ["img/a.png"]},
          {"entity_id": "Q2", "name": "Paris Hilton"}, {"entity_id": "Q3", "name": "Lyon"}]
    mentions = [
        {"id": "m1", "text": "I love Paris", "mention": "Paris", "image": "img/a.png", "entity_id": "Q1", "split": "train"},
        {"id": "m2", "text": "Paris Hilton again", "mention": "Paris Hilton", "entity_id": "Q2", "split": "validation"},
        {"id": "m3", "text": "x", "mention": "Paris", "entity_id": "Q1", "split": "test"},  # aligns nowhere: no span
    ]  # fmt: skip
    (d / "kb.jsonl").write_text("\n".join(json.dumps(r) for r in kb) + "\n")
    (d / "mentions.jsonl").write_text("\n".join(json.dumps(r) for r in mentions) + "\n")

    data = load_zemel_data("mel_jsonl", str(d), cache_dir=str(tmp_path / "c"))
    assert sorted(data.mentions) == ["dev", "test", "train"] and not data.zero_shot and not data.has_boxes
    m1 = data.split("train")[0]
    assert (m1["id"], m1["mention_start"], m1["mention_end"], m1["entity_id"], m1["image_key"]) == ("m1", 7, 12, "Q1", "m1")
    assert os.path.samefile(m1["image"], d / "img" / "a.png") and data.has_images
    assert data.split("validation")[0]["mention_start"] == 0 and data.split("dev")[0]["image"] is None
    assert data.split("test")[0]["mention_start"] is None and data.split("test")[0]["mention_end"] is None
    assert list(data.full_kb) == ["Q1", "Q2", "Q3"]
    assert data.full_kb["Q2"] == {"entity_id": "Q2", "name": "Paris Hilton", "description": "", "images": []}
    assert len(data.full_kb["Q1"]["images"]) == 1
    assert data.kb_for("test") == data.full_kb  # one KB for all splits: nothing is unseen by construction
    assert list(data.kb_for("dev", "gold_only")) == ["Q2"]


def test_zemel_evaluation_re_exports_the_data_names():
    from modeling_mel import zemel_data, zemel_evaluation

    for name in zemel_data.__all__:
        assert getattr(zemel_evaluation, name) is getattr(zemel_data, name), name
    assert set(zemel_data.__all__) <= set(zemel_evaluation.__all__)
