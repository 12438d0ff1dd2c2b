"""ZEMELD builder on the sample: layout, configs, zero-shot check, bad input (skip/strict). The sample generator:
tests/test_zemeld_sample.py."""

from __future__ import annotations

import json
import os

import pytest


@pytest.fixture(scope="module")
def zemeld_modules(repo_root):
    from modeling_mel.builders import zemeld
    from modeling_mel.builders import zemeld_sample as generate_sample

    return generate_sample, zemeld


@pytest.fixture(scope="module")
def sample(tmp_path_factory, zemeld_modules):
    out = tmp_path_factory.mktemp("zemeld") / "raw"
    counts = zemeld_modules[0].generate(str(out), seed=0)
    assert counts["entities"] == 60 and counts["images"] == 200
    return out


def build(zemeld, config, data_dir, cache, **kw):
    b = zemeld.Zemeld(config_name=config, data_dir=str(data_dir), cache_dir=str(cache), **kw)
    b.download_and_prepare()
    return b, b.as_dataset()


def test_mentions_and_kb(sample, tmp_path, zemeld_modules):
    zemeld = zemeld_modules[1]
    b, ds = build(zemeld, "mentions", sample, tmp_path)
    assert set(ds) == {"train", "validation", "test"}
    assert sum(b.skipped.values()) == 0
    row = ds["train"][0]
    assert row["caption"][row["mention_start"] : row["mention_end"]] == row["mention"]
    assert row["box"] in row["image_boxes"] and row["image_entity_ids"][row["box_index"]] == row["entity_id"]
    assert os.path.isabs(row["image"]) and os.path.isfile(row["image"])
    train_entities = set(ds["train"]["entity_id"])
    assert train_entities and not train_entities & set(ds["test"]["entity_id"])
    assert not train_entities & set(ds["validation"]["entity_id"])
    _, kb = build(zemeld, "kb", sample, tmp_path)
    assert kb["full"].num_rows == 60
    assert set(kb["test"]["entity_id"]) == set(ds["test"]["entity_id"])
    assert all(os.path.isfile(p) for p in kb["full"][0]["images"])


def _copy_with(sample, dest, edit_annotations=None, edit_kb=None):
    import shutil

    shutil.copytree(sample, dest)
    anns = [json.loads(l) for l in (dest / "annotations.jsonl").read_text().splitlines()]
    kb = [json.loads(l) for l in (dest / "kb.jsonl").read_text().splitlines()]
    if edit_annotations:
        edit_annotations(anns)
    if edit_kb:
        kb = edit_kb(kb)
    (dest / "annotations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anns))
    (dest / "kb.jsonl").write_text("".join(json.dumps(k) + "\n" for k in kb))
    return anns


def test_zero_shot_violation_lists_ids(sample, tmp_path, zemeld_modules):
    def leak(anns):
        test_ann = next(a for a in anns if a["split"] == "test")
        train_ann = next(a for a in anns if a["split"] == "train")
        train_ann["entities"].append(dict(test_ann["entities"][0], box=[0, 0, 5, 5],
                                          mention_start=train_ann["caption"].index("Photo"), mention="Photo"))
        leak.eid = test_ann["entities"][0]["entity_id"]

    _copy_with(sample, tmp_path / "raw", leak)
    with pytest.raises(ValueError, match=f"test entities also appear in train.*{leak.eid}"):
        build(zemeld_modules[1], "mentions", tmp_path / "raw", tmp_path / "cache")


def _corrupt(anns):
    a = anns[0]["entities"]
    a.append(dict(a[0], box=[0, 0, 100, 10]))  # outside the 64x64 image
    a.append(dict(a[0], box=[20, 5, 10, 30]))  # x2 <= x1
    a.append(dict(a[0], mention="Nowhere Mentioned", mention_start=None))  # aligns nowhere: kept without a span
    a.append(dict(a[0], entity_id="Q_MISSING"))  # not in the KB


def test_bad_input_is_counted_and_written(sample, tmp_path, zemeld_modules, caplog):
    _copy_with(sample, tmp_path / "raw", _corrupt)
    with caplog.at_level("WARNING"):
        b, ds = build(zemeld_modules[1], "mentions", tmp_path / "raw", tmp_path / "cache")
    assert dict(b.skipped) == {"box_outside_image": 1, "box_empty": 1, "entity_not_in_kb": 1}
    assert "skipped 3 bad annotations" in caplog.text
    assert b.notes["unaligned"] == 1
    unaligned = [r for r in ds["train"] if r["mention"] == "Nowhere Mentioned"]
    assert len(unaligned) == 1 and unaligned[0]["mention_start"] is None and unaligned[0]["mention_end"] is None
    report = json.loads(open(b.skipped_path).read())
    assert report["counts"]["entity_not_in_kb"] == 1
    assert {r["reason"] for r in report["skipped"]} == set(b.skipped)
    assert any(r.get("entity_id") == "Q_MISSING" for r in report["skipped"])
    assert "Q_MISSING" not in set(ds["train"]["entity_id"])


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda a: a[0]["entities"].append(dict(a[0]["entities"][0], box=[0, 0, 100, 10])), r"box_outside_image.*100"),
        (lambda a: a[0]["entities"].append(dict(a[0]["entities"][0], box=[20, 5, 10, 30])), r"box_empty.*\[20, 5, 10, 30\]"),
        (lambda a: a[0]["entities"].append(dict(a[0]["entities"][0], entity_id="Q_MISSING")), "entity_not_in_kb.*Q_MISSING"),
    ],
)
def test_strict_mode_raises(sample, tmp_path, zemeld_modules, edit, pattern):
    _copy_with(sample, tmp_path / "raw", edit)
    with pytest.raises(ValueError, match=pattern):
        build(zemeld_modules[1], "mentions", tmp_path / "raw", tmp_path / "cache", strict=True)


def test_missing_files(tmp_path, zemeld_modules):
    with pytest.raises(ValueError, match="annotations.jsonl"):
        build(zemeld_modules[1], "mentions", tmp_path, tmp_path / "cache")
