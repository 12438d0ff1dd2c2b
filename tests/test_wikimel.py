"""The wikimel builder (modeling_mel.builders.wikimel) on a small fixture of the WikiMEL release layout: every
released mention kept (aligned, repaired or without a span), the build report, a seeded dev split when the release
has none, and its errors. The fixture (CASES, KB, write_wikimel) is shared with the RichpediaMEL and alignment tests."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from modeling_mel.corpus import KB_FEATURES, MENTION_FEATURES, load_mel_corpus

# (text, mention as released, the span it must get, status); the last one aligns nowhere
CASES = [
    ("Hermann von Beckerath.", "Hermann Beckerath", "Hermann von Beckerath", "aligned"),
    ("The Earl of Aberdeen in the 1850s", "Earl Aberdeen", "Earl of Aberdeen", "aligned"),
    ("Suleiman the Magnificent", "Suleiman Magnificent", "Suleiman the Magnificent", "aligned"),
    ("Karl Robert Eduard Hartmann .", "Karl Robert Eduard von Hartmann", "Karl Robert Eduard Hartmann", "aligned"),
    ("Portrait of Émile de Kératry, 1870", "Emile Keratry", "Émile de Kératry", "aligned"),  # diacritics
    ("Portrait of an unknown sitter", "Xyzzy Plugh", None, "unaligned"),
]
KB = {  # QID -> name, description
    "Q1": ("Hermann von Beckerath", "German banker"),
    "Q2": ("George Hamilton-Gordon, 4th Earl of Aberdeen", "British prime minister"),
    "Q3": ("Suleiman the Magnificent", "Ottoman sultan"),
    "Q4": ("Karl Robert Eduard von Hartmann", "German philosopher"),
    "Q5": ("Émile de Kératry", "French politician"),
    "Q6": ("Noel Harrison", "English singer"),
    "Q7": ("Stefanie Powers", "American actress"),
}


# -- the release layout ------------------------------------------------------------------------------------------------


def _write_json(path, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def _write_kb(d) -> None:
    _write_json(os.path.join(d, "qid2ne.json"), {q: n for q, (n, _) in KB.items()})
    _write_json(os.path.join(d, "qid2abs.json"), {q: a for q, (_, a) in KB.items()})


def write_wikimel(d: str) -> None:
    """WikiMEL: the six cases (one sample each), a sample with two mentions (one gold outside the KB), a split id
    without sample, one image and one corrupt image."""
    answers = ["Q1", "Q2", "Q3", "Q4", "Q5", "Q6"]
    samples = {
        str(100 + i): {"id": str(100 + i), "sentence": t, "mentions": [m], "entities": [KB[a][0]], "answer": [a]}
        for i, ((t, m, _, _), a) in enumerate(zip(CASES, answers))
    }
    samples["200"] = {"id": "200", "sentence": "Powers with Noel Harrison in London", "mentions": ["Noel Harrison", "Powers"],
                      "entities": ["Noel Harrison", "Stefanie Powers"], "answer": ["Q6", "Q99"]}  # Q99: not in the KB
    _write_json(os.path.join(d, "Wikidata-MEL.json"), samples)
    _write_json(os.path.join(d, "splits.json"), {"train": ["100", "101", "102", "999"], "dev": ["103", "104", "105", "200"]})
    _write_kb(d)
    os.makedirs(os.path.join(d, "images"))
    Image.new("RGB", (8, 8), (200, 10, 10)).save(os.path.join(d, "images", "100.png"))
    with open(os.path.join(d, "images", "101.jpg"), "wb") as f:
        f.write(b"not a jpeg")


@pytest.fixture(scope="module")
def wikimel_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("wikimel"))
    write_wikimel(d)
    return d


def _report(dd) -> str:
    return dd[list(dd)[0]].info.description.split("Build report: ")[1]


def test_wikimel_keeps_every_mention(wikimel_dir, tmp_path):
    dd = load_mel_corpus("wikimel", wikimel_dir, cache_dir=str(tmp_path / "c"))
    assert list(dd) == ["train", "dev"] and dd["train"].features == MENTION_FEATURES
    assert dd["train"]["id"] == ["100", "101", "102"] and dd["dev"]["id"] == ["103", "104", "105", "200-0", "200-1"]
    rows = {r["id"]: r for s in dd for r in dd[s]}
    for i, (text, mention, expected, _) in enumerate(CASES):
        r = rows[str(100 + i)]
        assert r["text"] == text and r["mention"] == mention
        got = None if r["mention_start"] is None else text[r["mention_start"] : r["mention_end"]]
        assert got == expected
    assert rows["105"]["mention_end"] is None and rows["200-1"]["entity_id"] == "Q99"
    assert rows["100"]["image"].size == (8, 8) and rows["101"]["image"] is None
    report = _report(dd)
    assert "kept train 3, dev 5; skipped 0" in report
    for note in ("aligned: 5", "unaligned: 1", "offsets located: 2", "entity not in KB: 1", "no image: 6",
                 "unreadable image: 1", "split id without sample (train): 1"):
        assert note in report, note
    assert not os.path.exists(os.path.join(wikimel_dir, "skipped.json"))  # the release folder is left alone

    kb = load_mel_corpus("wikimel", wikimel_dir, config="kb", cache_dir=str(tmp_path / "c"))
    assert kb.features == KB_FEATURES and len(kb) == len(KB)
    assert kb[0] == {"entity_id": "Q1", "name": "Hermann von Beckerath", "screen_name": "", "location": "",
                     "description": "German banker", "images": [], "timeline": []}


def test_wikimel_without_dev_and_errors(tmp_path):
    d = str(tmp_path / "w")
    write_wikimel(d)
    os.remove(os.path.join(d, "splits.json"))
    dd = load_mel_corpus("wikimel", d, cache_dir=str(tmp_path / "c"), dev_fraction=0.3)
    assert sum(len(dd[s]) for s in dd) == 8 and len(dd["dev"]) >= 1  # all samples, a seeded dev cut from train
    with pytest.raises(ValueError, match="dev_fraction must be a number in"):
        load_mel_corpus("wikimel", d, cache_dir=str(tmp_path / "c"), dev_fraction=1.5)
    with pytest.raises(ValueError, match="split_method='seeded'"):
        load_mel_corpus("wikimel", d, cache_dir=str(tmp_path / "c"), split_method="seeded")
    os.remove(os.path.join(d, "qid2ne.json"))
    with pytest.raises(FileNotFoundError, match="qid2ne.json"):
        load_mel_corpus("wikimel", d, cache_dir=str(tmp_path / "c2"))
