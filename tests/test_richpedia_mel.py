"""The richpedia_mel builder (modeling_mel.builders.richpedia_mel) on a small fixture of the RichpediaMEL release
layout (one mention a row): a seeded dev split cut from train, the same at every build, aligned and unaligned
mentions, no dev with dev_fraction 0."""

from __future__ import annotations

import os

import pytest

from modeling_mel.corpus import load_mel_corpus, seeded_holdout
from test_wikimel import CASES, KB, _report, _write_json, _write_kb


def write_richpedia(d: str) -> None:
    """RichpediaMEL: one mention a row (strings), train.json with ten rows, test.json with two."""
    rows = {f"Q{100 + i}": {"id": f"Q{100 + i}", "sentence": f"Person {i} was a painter.", "mentions": f"Person {i}",
                            "entities": f"Person {i}", "answer": "Q1"} for i in range(9)}
    rows["Q4"] = {"id": "Q4", "sentence": CASES[3][0], "mentions": CASES[3][1], "entities": KB["Q4"][0], "answer": "Q4"}
    _write_json(os.path.join(d, "train.json"), rows)
    test = {"Q5": {"id": "Q5", "sentence": CASES[4][0], "mentions": CASES[4][1], "entities": "x", "answer": "Q5"},
            "Q6": {"id": "Q6", "sentence": CASES[5][0], "mentions": CASES[5][1], "entities": "x", "answer": "Q6"}}
    _write_json(os.path.join(d, "test.json"), test)
    _write_kb(d)


@pytest.fixture(scope="module")
def richpedia_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("richpedia"))
    write_richpedia(d)
    return d


def test_richpedia_seeded_dev_and_test(richpedia_dir, tmp_path):
    dd = load_mel_corpus("richpedia_mel", richpedia_dir, cache_dir=str(tmp_path / "c"))
    assert list(dd) == ["train", "dev", "test"] and (len(dd["train"]), len(dd["dev"]), len(dd["test"])) == (9, 1, 2)
    assert dd["dev"]["id"] == sorted(seeded_holdout([f"Q{100 + i}" for i in range(9)] + ["Q4"], 0.1, seed=0))
    again = load_mel_corpus("richpedia_mel", richpedia_dir, cache_dir=str(tmp_path / "c2"))
    assert again["dev"]["id"] == dd["dev"]["id"]  # same seed, same split
    rows = {r["id"]: r for s in dd for r in dd[s]}
    r = rows["Q4"]
    assert r["text"][r["mention_start"] : r["mention_end"]] == "Karl Robert Eduard Hartmann"
    assert rows["Q6"]["mention_start"] is None
    assert "dev split cut from train (seeded): 1" in _report(dd) and "unaligned: 1" in _report(dd)
    whole = load_mel_corpus("richpedia_mel", richpedia_dir, cache_dir=str(tmp_path / "c3"), dev_fraction=0.0)
    assert list(whole) == ["train", "test"] and len(whole["train"]) == 10
