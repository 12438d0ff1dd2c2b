"""The seeded sample generator (modeling_mel.builders.sample): the Twitter MEL layout and the mel_jsonl layout hold
the same rows, with the counts the generator reports, and the same seed gives the same files."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pytest

from modeling_mel.corpus import KB_FEATURES, MENTION_FEATURES, load_mel_corpus


def _skipped(d: str, config: str) -> dict:
    with open(os.path.join(d, "skipped.json"), encoding="utf-8") as f:
        return json.load(f)[config]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from modeling_mel.builders import sample as gen
    root = tmp_path_factory.mktemp("samples")
    tw, js = str(root / "twitter"), str(root / "jsonl")
    counts = gen.generate_twitter_sample(tw, seed=0)
    assert gen.generate_jsonl_sample(js, seed=0) == counts
    return {"twitter": tw, "jsonl": js, "counts": counts, "cache": str(root / "cache")}


def test_sample_twitter_layout(samples):
    counts = samples["counts"]
    assert counts["entities"] == 40 and counts["mentions"] == 300 and counts["tweets_with_two_mentions"] > 0
    dd = load_mel_corpus("twitter_mel", samples["twitter"], cache_dir=samples["cache"])
    assert {s: len(d) for s, d in dd.items()} == {s: counts[s] for s in ("train", "train07", "train05", "dev", "test")}
    report = _skipped(samples["twitter"], "mentions")
    assert report["skipped"] == {}
    assert report["notes"] == {"no image": counts["mentions_without_image"]}
    assert set(dd["train05"]["id"]) <= set(dd["train07"]["id"]) <= set(dd["train"]["id"])
    kb = load_mel_corpus("twitter_mel", samples["twitter"], config="kb", cache_dir=samples["cache"])
    assert len(kb) == 40 and _skipped(samples["twitter"], "kb")["skipped"] == {}
    assert sum(len(t) for t in kb["timeline"]) == counts["timeline_tweets"]
    # ambiguous surnames: 4 entities named "... Wiggins"
    assert sum("wiggins" in n.lower() for n in kb["name"]) == 4
    ids = [i for s in ("train", "dev", "test") for i in dd[s]["id"]]
    assert len(ids) == len(set(ids)) == 300


def _rows(ds: datasets.Dataset) -> list[dict]:
    ds = ds.cast_column("image", datasets.Image(decode=False))
    out = []
    for r in ds:
        img = r["image"]
        out.append(dict(r, image=None if img is None else (img["bytes"] or open(img["path"], "rb").read())))
    return out


def test_sample_jsonl_layout_same_rows(samples):
    tw = load_mel_corpus("twitter_mel", samples["twitter"], cache_dir=samples["cache"])
    js = load_mel_corpus("mel_jsonl", samples["jsonl"], cache_dir=samples["cache"])
    assert list(js) == ["train", "dev", "test"]
    for s in js:
        assert js[s].features == tw[s].features == MENTION_FEATURES
        assert _rows(js[s]) == _rows(tw[s])
    kb_tw = load_mel_corpus("twitter_mel", samples["twitter"], config="kb", cache_dir=samples["cache"])
    kb_js = load_mel_corpus("mel_jsonl", samples["jsonl"], config="kb", cache_dir=samples["cache"])
    assert kb_js.features == kb_tw.features == KB_FEATURES
    for a, b in zip(kb_tw, kb_js):
        assert {k: a[k] for k in a if k not in ("images", "timeline")} == {
            k: b[k] for k in b if k not in ("images", "timeline")
        }
        assert [(t["tweet_id"], t["text"]) for t in a["timeline"]] == [
            (t["tweet_id"], t["text"]) for t in b["timeline"]
        ]
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["images"], b["images"]))
        assert len(a["images"]) == len(b["images"])
    # without split fields, MelJsonl applies the seeded PFMEL split
    seeded = load_mel_corpus("mel_jsonl", samples["jsonl"], cache_dir=samples["cache"], split_method="seeded")
    assert list(seeded) == ["train", "train07", "train05", "dev", "test"]


def test_sample_generation_is_seeded(tmp_path):
    from modeling_mel.builders import sample as gen
    a, b, c = (str(tmp_path / x) for x in "abc")
    gen.generate_twitter_sample(a, seed=0, n_entities=12, n_mentions=40)
    gen.generate_twitter_sample(b, seed=0, n_entities=12, n_mentions=40)
    gen.generate_twitter_sample(c, seed=1, n_entities=12, n_mentions=40)
    read = lambda d, f: open(os.path.join(d, f), "rb").read()  # noqa: E731
    for f in ("ground_truth.tsv", "timeline_kb.tsv", "users.jsonl", "Train_ids.txt", "Test_ids.txt"):
        assert read(a, f) == read(b, f)
    assert read(a, "ground_truth.tsv") != read(c, "ground_truth.tsv")
    assert sorted(os.listdir(os.path.join(a, "images"))) == sorted(os.listdir(os.path.join(b, "images")))
