"""The twitter_mel builder (modeling_mel.builders.twitter_mel) on a raw fixture with one row of every kind of
problem (exact kept / skipped / note counts), its options, the profile database and Adjali et al.'s file names,
and its errors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3

import datasets
import pytest
from PIL import Image

from modeling_mel.corpus import KB_FEATURES, MENTION_FEATURES, get_builder_class, load_mel_corpus

URL_1003 = "http://pbs.example/media/1003.png"
URL_101 = "http://pbs.example/media/101.png"


def _png(path, colour=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="PNG")


def _sha1(url: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def _gt_line(tweet_id, start, end, mention, gold, text, url="") -> bytes:
    return "\t".join(map(str, [tweet_id, start, end, mention, gold, text, url])).encode("utf-8") + b"\n"


def write_raw_fixture(d: str) -> None:
    """A small raw Twitter MEL folder with one row of every kind of problem (counts asserted below)."""
    os.makedirs(d, exist_ok=True)
    # --- KB: profiles
    profiles = [
        json.dumps(
            {
                "userScreenName": "alice_w",
                "userName": "Alice Wiggins",
                "userLocation": "Paris",
                "userDescription": "cycling",
            }
        ),
        json.dumps(
            {"userScreenName": "@BobWiggins", "userName": "Bob Wiggins", "userLocation": "", "userDescription": "hoops"}
        ),
        json.dumps(
            {"userScreenName": "carol", "userName": "Carol Taylor", "userLocation": None, "userDescription": "songs"}
        ),
        "{not json",  # malformed JSON line
        json.dumps({"userScreenName": "@ALICE_W", "userName": "Alice again"}),  # duplicate entity
        json.dumps({"userScreenName": "", "userName": "nobody"}),  # empty screen name
    ]
    with open(os.path.join(d, "users.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(profiles) + "\n")
    # --- KB: timelines
    timeline = [
        b"@alice_w\t100\tcycling today\thttp://pbs.example/media/100.png\n",  # images/100.png
        b"alice_w\t101\tmore cycling\t" + URL_101.encode() + b"\n",  # image from the URL cache
        b"BobWiggins\t102\tbasketball\t\n",  # no image
        b"bobwiggins\t103\tbad image\thttp://pbs.example/media/103.png\n",  # unreadable image (note)
        b"carol\tabc\ttext\turl\n",  # non-numeric id
        b"carol\t104\n",  # wrong column count
        b"dave\t105\twho is dave\t\n",  # timeline of unknown user
        b"@alice_w\t100\tdup\t\n",  # duplicate timeline tweet
        b"carol\t106\t\t\n",  # tweet not hydrated
        b"carol\t107\t\xff\xfe\t\n",  # non-UTF-8 line
        b"carol\t108\tcarol text\thttp://pbs.example/media/missing.png\n",  # timeline image missing (note)
    ]
    with open(os.path.join(d, "timeline_kb.tsv"), "wb") as f:
        f.writelines(timeline)
    # --- ground truth
    gt = [
        b"tweetId\tstartPos\tendPos\tmention\tscreenName\ttext\tmediaURL\n",  # header (note)
        _gt_line(1000, 3, 10, "wiggins", "@alice_w", "go wiggins go", "http://pbs.example/media/1000.png"),
        # 6 columns (no media URL column), case differs in mention and gold: kept, no image (note)
        b"1001\t0\t7\twiggins\t@BOBWIGGINS\tWiggins wins again\n",
        # two mentions in one tweet: ids 1002-0 and 1002-11; unreadable image (2 notes)
        _gt_line(1002, 0, 6, "taylor", "@carol", "taylor and wiggins", "http://pbs.example/media/1002.png"),
        _gt_line(1002, 11, 18, "wiggins", "@alice_w", "taylor and wiggins", "http://pbs.example/media/1002.png"),
        # wrong offsets, mention present: repaired to 12..19 (note); image from the URL cache
        _gt_line(1003, 0, 7, "wiggins", "BobWiggins", "hello there wiggins", URL_1003),
        _gt_line(1004, 0, 7, "wiggins", "@alice_w", "nothing here"),  # aligns nowhere: kept without a span (note)
        _gt_line(1005, 50, 57, "wiggins", "@alice_w", "wiggins"),  # offsets outside the text: repaired
        _gt_line(1006, 0, 7, "wiggins", "@alice_w", ""),  # tweet not hydrated
        _gt_line(1007, 0, 7, "wiggins", "@dave", "wiggins here"),  # entity not in KB
        _gt_line("abc", 0, 7, "wiggins", "@alice_w", "wiggins"),  # non-numeric id
        _gt_line(1008, "x", 7, "wiggins", "@alice_w", "wiggins"),  # non-numeric offset
        b"1009\t0\t7\twiggins\n",  # wrong column count
        b"1011\t0\t7\twiggins\t@alice_w\twiggins \xe9t\xe9\t\n",  # non-UTF-8 line (latin-1)
        _gt_line(1000, 3, 10, "wiggins", "@alice_w", "go wiggins go"),  # duplicate mention
        _gt_line(1010, 0, 7, "wiggins", "@alice_w", "wiggins rocks"),  # not in any split list
    ]
    with open(os.path.join(d, "ground_truth.tsv"), "wb") as f:
        f.writelines(gt)
    # --- split lists
    lists = {
        "Train_ids.txt": "1000\n1002\n9999\nxyz\n",  # 9999: unknown tweet; xyz: malformed line
        "Dev_ids.txt": "1001\n1005\n",
        "Test_ids.txt": "1003-12\n1001\n1004\n",  # a mention id; 1001 also in dev: kept in dev only (note)
    }
    for name, text in lists.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    # --- images
    _png(os.path.join(d, "images", "1000.png"))
    _png(os.path.join(d, "images", "100.png"))
    with open(os.path.join(d, "images", "1002.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nthis is not a png")
    with open(os.path.join(d, "images", "103.jpg"), "wb") as f:
        f.write(b"garbage")
    _png(os.path.join(d, "image_cache", _sha1(URL_1003) + ".png"), (0, 0, 255))
    _png(os.path.join(d, "image_cache", _sha1(URL_101)), (0, 255, 0))  # no extension


MENTION_SKIPS = {
    "duplicate mention": 1,
    "entity not in KB": 1,
    "id list names unknown tweet": 1,
    "malformed id list line": 1,
    "non-UTF-8 line": 1,
    "non-numeric id": 1,
    "non-numeric offset": 1,
    "not in any split list": 1,
    "tweet not hydrated": 1,
    "wrong column count": 1,
}
MENTION_NOTES = {
    "header line": 1,
    "in several split lists: kept in the first (train, dev, test order)": 1,
    "no image": 3,  # 1001, 1004, 1005 (notes count kept rows only: 1010 has none but is not in any list)
    "offsets repaired": 2,
    "unaligned": 1,  # 1004
    "unreadable image": 2,
}
KB_SKIPS = {
    "duplicate entity": 1,
    "duplicate timeline tweet": 1,
    "empty screen name": 1,
    "malformed JSON line": 1,
    "non-UTF-8 line": 1,
    "non-numeric id": 1,
    "timeline of unknown user": 1,
    "tweet not hydrated": 1,
    "wrong column count": 1,
}
KB_NOTES = {"timeline image missing": 1, "unreadable image": 1}


@pytest.fixture()
def raw_dir(tmp_path):
    d = str(tmp_path / "raw")
    write_raw_fixture(d)
    return d


def _skipped(d: str, config: str) -> dict:
    with open(os.path.join(d, "skipped.json"), encoding="utf-8") as f:
        return json.load(f)[config]



# ------------------------------------------------------------------------------------------------
# raw fixture


def test_raw_fixture_mentions_exact_counts(raw_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="modeling_mel.corpus"):
        dd = load_mel_corpus("twitter_mel", raw_dir, cache_dir=str(tmp_path / "cache"))
    assert list(dd) == ["train", "dev", "test"]  # no Train07/Train05 lists -> no reduced splits
    assert {s: sorted(dd[s]["id"]) for s in dd} == {
        "train": ["1000", "1002-0", "1002-11"],
        "dev": ["1001", "1005"],
        "test": ["1003", "1004"],  # 1001 is in Dev_ids.txt too: dev only, never in two splits
    }
    report = _skipped(raw_dir, "mentions")
    assert report["kept"] == {"train": 3, "dev": 2, "test": 2}
    assert report["skipped"] == MENTION_SKIPS
    assert report["notes"] == MENTION_NOTES
    # the same counts in one log line and in the dataset description
    lines = [r.getMessage() for r in caplog.records if "twitter_mel/mentions: kept" in r.getMessage()]
    assert len(lines) == 1 and "entity not in KB: 1" in lines[0] and "skipped 10 " in lines[0]
    assert "entity not in KB: 1" in dd["train"].info.description

    rows = {r["id"]: r for s in ("train", "dev", "test") for r in dd[s]}
    assert rows["1001"]["entity_id"] == "BobWiggins" and rows["1001"]["image"] is None
    assert rows["1002-11"]["mention_start"] == 11 and rows["1002-11"]["image"] is None  # unreadable
    assert (rows["1003"]["mention_start"], rows["1003"]["mention_end"]) == (12, 19)  # repaired
    assert rows["1003"]["image"].getpixel((0, 0)) == (0, 0, 255)  # from the URL cache
    assert rows["1005"]["mention_start"] == 0 and rows["1005"]["mention_end"] == 7
    assert rows["1000"]["image"].size == (8, 8)
    assert rows["1004"]["mention_start"] is None and rows["1004"]["mention_end"] is None  # kept, no span
    for r in rows.values():
        if r["id"] != "1004":
            assert r["text"][r["mention_start"] : r["mention_end"]].lower() == r["mention"].lower()
    assert dd["train"].features == MENTION_FEATURES


def test_raw_fixture_kb_exact_counts(raw_dir, tmp_path):
    kb = load_mel_corpus("twitter_mel", raw_dir, config="kb", cache_dir=str(tmp_path / "cache"))
    assert isinstance(kb, datasets.Dataset) and kb.features == KB_FEATURES
    assert kb["entity_id"] == ["alice_w", "BobWiggins", "carol"]
    report = _skipped(raw_dir, "kb")
    assert report["kept"] == {"entities": 3}
    assert report["skipped"] == KB_SKIPS
    assert report["notes"] == KB_NOTES
    alice, bob, carol = kb[0], kb[1], kb[2]
    assert [t["tweet_id"] for t in alice["timeline"]] == ["101", "100"]  # most recent first
    assert len(alice["images"]) == 2 and alice["images"][0].getpixel((0, 0)) == (0, 255, 0)
    assert [t["tweet_id"] for t in bob["timeline"]] == ["103", "102"] and bob["images"] == []
    assert bob["timeline"][0]["image"] is None  # unreadable -> None
    assert carol["location"] == "" and carol["name"] == "Carol Taylor"
    assert [t["text"] for t in carol["timeline"]] == ["carol text"]


def test_raw_fixture_options(raw_dir, tmp_path):
    dd = load_mel_corpus("twitter_mel", raw_dir, cache_dir=str(tmp_path / "c1"), require_image=True)
    assert {s: dd[s]["id"] for s in dd} == {"train": ["1000"], "test": ["1003"]}  # empty dev left out
    report = _skipped(raw_dir, "mentions")
    assert report["skipped"]["no image"] == 4 and report["skipped"]["unreadable image"] == 2  # 1004 has no image
    assert "no image" not in report["notes"] and report["notes"]["empty split left out: dev"] == 1

    seeded = load_mel_corpus("twitter_mel", raw_dir, cache_dir=str(tmp_path / "c2"), split_method="seeded", seed=1)
    assert set(seeded) <= {"train", "train07", "train05", "dev", "test"}  # empty splits are left out
    assert sum(len(seeded[s]) for s in ("train", "dev", "test") if s in seeded) == 8  # 1004 and 1010 included
    assert "not in any split list" not in _skipped(raw_dir, "mentions")["skipped"]


def test_profiles_from_sqlite_and_adjali_split_files(raw_dir, tmp_path):
    os.remove(os.path.join(raw_dir, "users.jsonl"))
    con = sqlite3.connect(os.path.join(raw_dir, "users.sqlite"))
    con.execute(
        "CREATE TABLE twitterUsers (userId TEXT, userScreenName TEXT, userName TEXT, userLocation TEXT, userDescription TEXT)"
    )
    con.executemany(
        "INSERT INTO twitterUsers VALUES (?, ?, ?, ?, ?)",
        [("1", "alice_w", "Alice Wiggins", "Paris", "cycling"), ("2", "BobWiggins", "Bob Wiggins", None, "hoops"),
         ("3", "carol", "Carol Taylor", "", "songs"), ("4", "eve", b"\xff\xfe".decode("latin-1"), "", "")],
    )  # fmt: skip
    con.execute("INSERT INTO twitterUsers VALUES ('5', 'zed', CAST(X'FFFE' AS TEXT), '', '')")  # non-UTF-8 text
    con.commit()
    con.close()
    kb = load_mel_corpus("twitter_mel", raw_dir, config="kb", cache_dir=str(tmp_path / "c"))
    assert kb["entity_id"] == ["alice_w", "BobWiggins", "carol", "eve"]
    assert _skipped(raw_dir, "kb")["skipped"]["non-UTF-8 text"] == 1

    # Adjali's Train/Dev/Test files instead of ground_truth.tsv and id lists: the splits of the files
    lines = open(os.path.join(raw_dir, "ground_truth.tsv"), "rb").read().splitlines(keepends=True)
    os.remove(os.path.join(raw_dir, "ground_truth.tsv"))
    for name in ("Train_ids.txt", "Dev_ids.txt", "Test_ids.txt"):
        os.remove(os.path.join(raw_dir, name))
    with open(os.path.join(raw_dir, "Train.txt"), "wb") as f:
        f.writelines(lines[1:5])  # 1000, 1001, 1002 x2
    with open(os.path.join(raw_dir, "Test.txt"), "wb") as f:
        f.writelines(lines[5:6])  # 1003
    dd = load_mel_corpus("twitter_mel", raw_dir, cache_dir=str(tmp_path / "c2"))
    assert {s: dd[s]["id"] for s in dd} == {"train": ["1000", "1001", "1002-0", "1002-11"], "test": ["1003"]}


def test_split_lists_never_leak_a_row_into_two_splits(raw_dir, tmp_path, caplog):
    # issue 13 point 5: 1001 is in Dev_ids.txt and Test_ids.txt; Train07_ids.txt names a train row and a dev row
    with open(os.path.join(raw_dir, "Train07_ids.txt"), "w") as f:
        f.write("1000\n1005\n")
    with caplog.at_level(logging.WARNING):
        dd = load_mel_corpus("twitter_mel", raw_dir, cache_dir=str(tmp_path / "cache"))
    ids = {s: set(dd[s]["id"]) for s in dd}
    assert ids["dev"] & ids["test"] == set() and "1001" in ids["dev"]
    assert ids["train"] & (ids["dev"] | ids["test"]) == set()
    assert ids["train07"] == {"1000"}  # 1005 is a dev row: never trained on through the subset
    notes = _skipped(raw_dir, "mentions")["notes"]
    assert notes["in several split lists: kept in the first (train, dev, test order)"] == 1
    assert notes["in a train subset list but in split dev: left out of the subset"] == 1
    assert any("1001 in dev+test" in r.getMessage() for r in caplog.records)


def test_errors(raw_dir, tmp_path):
    TwitterMel = get_builder_class("twitter_mel")
    with pytest.raises(ValueError, match="mentions"):
        TwitterMel(config_name="bogus", data_dir=raw_dir, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="split_method='nope'"):
        TwitterMel(config_name="mentions", data_dir=raw_dir, cache_dir=str(tmp_path / "c"), split_method="nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"ground_truth\.tsv.*Train\.txt"):
        load_mel_corpus("twitter_mel", str(empty), cache_dir=str(tmp_path / "c"))
    (empty / "ground_truth.tsv").write_text("1\t0\t1\ta\t@x\ta\t\n")
    with pytest.raises(FileNotFoundError, match=r"users\.sqlite or users\.jsonl.*timeline_kb\.tsv"):
        load_mel_corpus("twitter_mel", str(empty), cache_dir=str(tmp_path / "c"))
    (empty / "users.jsonl").write_text(json.dumps({"userScreenName": "y", "userName": "Y"}) + "\n")
    with pytest.raises(ValueError, match=r"No usable mention.*entity not in KB: 1"):
        load_mel_corpus("twitter_mel", str(empty), cache_dir=str(tmp_path / "c"))


def test_twitter_mel_reads_the_release_file_names(tmp_path):
    # issue 30 point 6: Adjali et al.'s release names its files timeline_KB.txt, ambiguousUsers.db, mel_*_ids
    import shutil

    ours, released = str(tmp_path / "ours"), str(tmp_path / "released")
    write_raw_fixture(ours)
    shutil.copytree(ours, released)
    for old, new in (("timeline_kb.tsv", "timeline_KB.txt"), ("Train_ids.txt", "mel_train_ids"),
                     ("Dev_ids.txt", "mel_dev_ids"), ("Test_ids.txt", "mel_test_ids.txt")):
        os.rename(os.path.join(released, old), os.path.join(released, new))
    def rows(ds, root):  # image paths name their folder: compare them relative to it
        return json.loads(json.dumps(ds.to_list(), default=str).replace(root, "ROOT"))

    for config in ("mentions", "kb"):
        a = load_mel_corpus("twitter_mel", ours, config=config, cache_dir=str(tmp_path / "c1"))
        b = load_mel_corpus("twitter_mel", released, config=config, cache_dir=str(tmp_path / "c2"))
        if config == "kb":
            assert rows(a, ours) == rows(b, released) and len(a) > 0
        else:
            assert {s: rows(a[s], ours) for s in a} == {s: rows(b[s], released) for s in b} and len(a["train"]) > 0
    # the profiles database under its release name
    con = sqlite3.connect(os.path.join(released, "ambiguousUsers.db"))
    con.execute("CREATE TABLE twitterUsers (userScreenName TEXT, userName TEXT, userLocation TEXT, userDescription TEXT)")
    con.execute("INSERT INTO twitterUsers VALUES ('alice_w', 'Alice Wiggins', 'Paris', 'cycling')")
    con.commit()
    con.close()
    os.remove(os.path.join(released, "users.jsonl"))
    kb = load_mel_corpus("twitter_mel", released, config="kb", cache_dir=str(tmp_path / "c3"))
    assert kb["entity_id"][0] == "alice_w" and kb["name"][0] == "Alice Wiggins"
