"""The ``mimic_mel`` builder on fixtures of the layout MIMIC released (``../shared/formats/MIMIC_LAYOUT.md``) for
WikiMEL, RichpediaMEL and WikiDiverse (MIMIC's ``wiki_diverse_`` files and the ``WikiDiverse_`` replacements of M3EL /
MMoE), every quirk planted once per dataset; the field's protocol (H@1/3/5/10/20, MR, MRR) on known ranks."""

from __future__ import annotations

import json
import os
import sys

import datasets
import pytest
from PIL import Image

from modeling_mel.corpus import DATASET_BUILDERS, KB_FEATURES, MENTION_FEATURES, load_mel_corpus
from modeling_mel.nil import NIL_ENTITY_ID

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -- the fixture writer --------------------------------------------------------------------------------------------

#: dataset folder -> (split file prefix, mention image folder, description key of kb_entity.json)
VARIANTS = {
    "WikiMEL": ("WIKIMEL_", "mention_image", "attr"),
    "RichpediaMEL": ("RichpediaMEL_", "mention_images", "attr"),  # the plural folder, as shipped
    "WikiDiverse": ("wiki_diverse_", "mention_image", "attr"),  # MIMIC's WikiDiverse files
    "WikiDiverse_M3EL": ("WikiDiverse_", "mention_image", "desc"),  # M3EL / MMoE: replacement splits, `desc`
}

#: kb_entity.json in FILE order (the id order differs; one record is not an entity; the id-40 one has no `qid`)
KB_RECORDS = [
    {"id": 30, "qid": "Q3", "type": "entity", "entity_name": "Ada%20Lovelace", "text": "English mathematician",
     "image_list": ["Q3_0.jpg", "Q3_1.jpg"]},  # Q3_1.jpg is corrupt
    {"id": 10, "qid": "Q1", "type": "entity", "entity_name": "Alan Turing", "text": "British computer scientist",
     "image_list": ["Q1_0.jpg", "Q1_1.jpg"]},  # Q1_1.jpg is missing
    {"id": 25, "qid": "P31", "type": "relation", "entity_name": "instance of", "text": "", "image_list": []},
    {"id": 20, "qid": "Q2", "type": "entity", "entity_name": "Grace Hopper", "text": "American computer scientist",
     "image_list": []},
    {"id": 40, "type": "entity", "entity_name": "Charles Babbage", "text": "English polymath", "image_list": [""]},
]
#: positions in the KB sorted by `id` (the relation record is not in the KB); Q77's position is out of range
QID2ID = {"Q1": 0, "Q2": 1, "Q3": 2, "Q4": 3, "Q77": 9}
KB_ORDER = ["Q1", "Q2", "Q3", "Q4"]

SPLIT_RECORDS = {
    "train": [
        {"id": "Q1", "sentence": "Alan Turing at Bletchley Park.", "mentions": "Alan%20Turing", "entities": "Alan Turing",
         "answer": "Q1", "imgPath": "imgs/m100.png"},  # URL-quoted; image m100.jpg (path and extension dropped)
        {"id": "Q2", "sentence": "Grace Hopper in 1984.", "mentions": "Grace Hopper", "entities": "Grace Hopper",
         "answer": "Q2", "imgPath": ""},  # '' = no image
        {"id": "x", "sentence": "Ada Lovelace, a portrait.", "mentions": "Ada Lovelace", "entities": "nil",
         "answer": "nil", "imgPath": "m102.v2.jpg"},  # NIL answer; image m102.jpg (cut at the FIRST dot)
    ],
    "dev": [
        {"id": "Q3", "sentence": "Ada Lovelace and Babbage.", "mentions": "Ada Lovelace", "entities": "Ada Lovelace",
         "answer": "Q3", "imgPath": "m103.jpg"},  # m103.jpg missing
        {"id": "Q1", "mentions": "Nobody", "entities": "Alan Turing", "answer": "Q1", "imgPath": ""},  # no sentence
        "not a record",
    ],
    "test": [
        {"id": "Q3", "sentence": "Countess Lovelace in 1840.", "mentions": "Lovelace", "entities": "Ada Lovelace",
         "answer": "Q3", "imgPath": "m104.jpg"},  # m104.jpg corrupt
        {"id": "Q99", "sentence": "A crowd in the street.", "mentions": "Unknown Person", "entities": "?",
         "answer": "Q99", "imgPath": ""},  # gold not in the KB; aligns nowhere; '' image
    ],
}

#: what the fixture planted, per dataset folder
EXPECTED_MENTIONS = {
    "kept": {"train": 3, "dev": 1, "test": 2},
    "skipped": {"malformed record": 1, "sample without sentence": 1},
    "notes": {
        "NIL answer (kept as a NIL mention)": 1,
        "entity not in KB": 1,
        "mention URL-unquoted": 1,
        "missing image file": 1,
        "no image (imgPath '')": 2,
        "offsets located": 5,
        "unaligned": 1,
        "unreadable image": 1,
    },
}
EXPECTED_KB = {
    "kept": {"entities": 4},
    "skipped": {"type is not 'entity'": 1},
    "notes": {
        "KB image '' (no image)": 1,
        "entity name URL-unquoted": 1,
        "entity without image": 2,
        "missing KB image file": 1,
        "qid2id: position out of range": 1,
        "unreadable KB image": 1,
    },
}


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def _image(path: str, ok: bool = True) -> None:
    if ok:
        Image.new("RGB", (8, 8), (10, 120, 200)).save(path, format="JPEG")
    else:
        with open(path, "wb") as f:
            f.write(b"not a jpeg")


def write_mimic(d: str, variant: str = "WikiMEL") -> str:
    """One dataset folder of the MIMIC layout with every quirk (see the constants above); returns ``d``."""
    prefix, mention_dir, desc_key = VARIANTS[variant]
    os.makedirs(os.path.join(d, "kb_image"), exist_ok=True)
    os.makedirs(os.path.join(d, mention_dir), exist_ok=True)
    records = []
    for rec in KB_RECORDS:
        rec = dict(rec)
        rec[desc_key] = rec.pop("text")
        records.append(rec)
    _write_json(os.path.join(d, "kb_entity.json"), records)
    with open(os.path.join(d, "qid2id.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(QID2ID))  # one line
    for split, rows in SPLIT_RECORDS.items():
        _write_json(os.path.join(d, f"{prefix}{split}.json"), rows)
    for name, ok in (("Q1_0.jpg", True), ("Q3_0.jpg", True), ("Q3_1.jpg", False)):
        _image(os.path.join(d, "kb_image", name), ok)
    for name, ok in (("m100.jpg", True), ("m102.jpg", True), ("m104.jpg", False)):
        _image(os.path.join(d, mention_dir, name), ok)
    return d


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("mimic"))
    for variant in VARIANTS:
        write_mimic(os.path.join(root, variant), variant)
    return root


def _report(cache_dir: str, config: str) -> dict:
    """``skipped.json`` of a build (written next to the Arrow cache, not into the release folder)."""
    found = []
    for dirpath, _, files in os.walk(os.path.join(cache_dir, "mel_reports", "mimic_mel")):
        if "skipped.json" in files:
            with open(os.path.join(dirpath, "skipped.json"), encoding="utf-8") as f:
                data = json.load(f)
            if config in data:
                found.append(data[config])
    assert len(found) == 1, found
    return found[0]


# -- the builder ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_counts_and_report_equal_what_the_fixture_planted(mimic_root, variant, tmp_path):
    d = os.path.join(mimic_root, variant)
    cache = str(tmp_path / "c")
    dd = load_mel_corpus("mimic_mel", d, cache_dir=cache)
    assert list(dd) == ["train", "dev", "test"] and dd["train"].features == MENTION_FEATURES
    report = _report(cache, "mentions")
    assert report["kept"] == EXPECTED_MENTIONS["kept"] == {s: len(dd[s]) for s in dd}
    assert report["skipped"] == EXPECTED_MENTIONS["skipped"]
    assert report["notes"] == EXPECTED_MENTIONS["notes"]
    assert "kept train 3, dev 1, test 2; skipped 2" in dd["train"].info.description

    kb = load_mel_corpus("mimic_mel", d, config="kb", cache_dir=cache)
    assert kb.features == KB_FEATURES
    notes = dict(EXPECTED_KB["notes"])
    if variant == "WikiDiverse_M3EL":
        notes["description from desc (M3EL / MMoE files)"] = 4
    kb_report = _report(cache, "kb")
    assert (kb_report["kept"], kb_report["skipped"], kb_report["notes"]) == (
        EXPECTED_KB["kept"], EXPECTED_KB["skipped"], notes)
    assert sorted(os.listdir(d)) == sorted(os.listdir(os.path.join(mimic_root, variant)))
    assert "skipped.json" not in os.listdir(d)  # the release folder is left alone


def test_rows_follow_every_rule(mimic_root, tmp_path):
    d = os.path.join(mimic_root, "RichpediaMEL")  # the plural mention_images/ folder
    dd = load_mel_corpus("mimic_mel", d, cache_dir=str(tmp_path / "c"))
    rows = {r["id"]: r for s in dd for r in dd[s]}
    assert sorted(rows) == ["dev-0", "test-0", "test-1", "train-0", "train-1", "train-2"]  # <split>-<position>
    t0 = rows["train-0"]
    assert t0["mention"] == "Alan Turing" and t0["text"][t0["mention_start"] : t0["mention_end"]] == "Alan Turing"
    assert t0["image"].size == (8, 8) and t0["entity_id"] == "Q1"  # imgs/m100.png -> mention_images/m100.jpg
    assert rows["train-1"]["image"] is None  # imgPath ''
    nil = rows["train-2"]
    assert nil["entity_id"] == NIL_ENTITY_ID and nil["image"] is not None  # m102.v2.jpg -> m102.jpg
    assert rows["dev-0"]["image"] is None and rows["test-0"]["image"] is None  # missing / corrupt file
    assert rows["test-1"]["entity_id"] == "Q99" and rows["test-1"]["mention_start"] is None


@pytest.mark.parametrize("variant", ["WikiMEL", "WikiDiverse_M3EL"])
def test_kb_in_qid2id_position_order(mimic_root, variant, tmp_path):
    d = os.path.join(mimic_root, variant)
    kb = load_mel_corpus("mimic_mel", d, config="kb", cache_dir=str(tmp_path / "c"))
    # sorted by `id` (10, 20, 30, 40), not in file order (30, 10, 20, 40); the id-40 record has no `qid`: qid2id names it
    assert kb["entity_id"] == KB_ORDER
    assert [kb["entity_id"].index(q) for q in KB_ORDER] == [QID2ID[q] for q in KB_ORDER]
    assert kb["name"] == ["Alan Turing", "Grace Hopper", "Ada Lovelace", "Charles Babbage"]  # URL-unquoted
    assert kb["description"] == ["British computer scientist", "American computer scientist", "English mathematician",
                                 "English polymath"]  # `attr`, or `desc` in the M3EL files
    images = kb.cast_column("images", datasets.List(datasets.Image(decode=False)))["images"]
    assert [[os.path.basename(i["path"]) for i in im] for im in images] == [["Q1_0.jpg"], [], ["Q3_0.jpg"], []]
    # a mention's gold is the entity at its QID's position
    dd = load_mel_corpus("mimic_mel", d, cache_dir=str(tmp_path / "c"))
    dev = dd["dev"][0]
    assert kb["name"][QID2ID[dev["entity_id"]]] == "Ada Lovelace"


def test_split_prefix_choice_and_errors(mimic_root, tmp_path):
    import shutil

    both = str(tmp_path / "both")
    shutil.copytree(os.path.join(mimic_root, "WikiDiverse"), both)
    for split in ("train", "dev", "test"):
        shutil.copy(os.path.join(mimic_root, "WikiDiverse_M3EL", f"WikiDiverse_{split}.json"), both)
    with pytest.raises(ValueError, match="split_prefix"):
        load_mel_corpus("mimic_mel", both, cache_dir=str(tmp_path / "c"))
    dd = load_mel_corpus("mimic_mel", both, cache_dir=str(tmp_path / "c"), split_prefix="WikiDiverse_")
    assert {s: len(dd[s]) for s in dd} == EXPECTED_MENTIONS["kept"]
    with pytest.raises(ValueError, match="split_prefix='x_' is not one of"):
        load_mel_corpus("mimic_mel", both, cache_dir=str(tmp_path / "c"), split_prefix="x_")
    with pytest.raises(FileNotFoundError, match="pass one of them"):  # the release root, not a dataset folder
        load_mel_corpus("mimic_mel", mimic_root, cache_dir=str(tmp_path / "c"))
    os.remove(os.path.join(both, "qid2id.json"))
    with pytest.raises(FileNotFoundError, match="qid2id.json"):
        load_mel_corpus("mimic_mel", both, cache_dir=str(tmp_path / "c2"), split_prefix="wiki_diverse_")


def test_require_image_skips_and_counts(mimic_root, tmp_path):
    cache = str(tmp_path / "c")
    dd = load_mel_corpus("mimic_mel", os.path.join(mimic_root, "WikiMEL"), cache_dir=cache, require_image=True)
    assert {s: len(dd[s]) for s in dd} == {"train": 2}  # only the two mentions with a readable image
    report = _report(cache, "mentions")
    assert report["skipped"] == {"malformed record": 1, "sample without sentence": 1, "missing image file": 1,
                                 "no image (imgPath '')": 2, "unreadable image": 1}


def test_build_dataset_command(mimic_root, tmp_path):
    from modeling_mel.cli import main

    out = str(tmp_path / "built")
    assert main(["build-dataset", "--dataset", "mimic_mel", "--data_dir", os.path.join(mimic_root, "RichpediaMEL"),
                 "--out", out, "--cache_dir", str(tmp_path / "c")]) == 0
    assert datasets.load_from_disk(os.path.join(out, "kb"))["entity_id"] == KB_ORDER
    mentions = datasets.load_from_disk(os.path.join(out, "mentions"))
    assert {s: len(mentions[s]) for s in mentions} == EXPECTED_MENTIONS["kept"]
    assert "mimic_mel" in DATASET_BUILDERS


# -- the field's protocol ------------------------------------------------------------------------------------------


def test_ranking_metrics_on_known_ranks():
    from modeling_mel.metrics import HIT_KS, gold_ranks, load_metric, ranking_metrics

    ranks = [1, 2, 4, 7, 15, 30, None]  # the last: a NIL mention (no rank)
    m = ranking_metrics(ranks, kb_size=50)
    assert HIT_KS == (1, 3, 5, 10, 20)
    assert (m["H@1"], m["H@3"], m["H@5"], m["H@10"], m["H@20"]) == (1 / 7, 2 / 7, 3 / 7, 4 / 7, 5 / 7)
    assert m["MR"] == pytest.approx((1 + 2 + 4 + 7 + 15 + 30 + 51) / 7)  # no rank: kb_size + 1
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 7 + 1 / 15 + 1 / 30) / 7)
    assert (m["n"], m["n_unranked"]) == (7, 1)
    ranked = [["a", "b", "c"], ["b", "a"], ["x"], []]
    golds = ["a", "a", "a", NIL_ENTITY_ID]
    assert gold_ranks(ranked, golds) == [1, 2, None, None]
    out = load_metric("ranking").compute(predictions=ranked, references=golds, kb_size=3)
    assert out == ranking_metrics([1, 2, None, None], 3)
    assert out["MR"] == (1 + 2 + 4 + 4) / 4 and out["MRR"] == (1 + 1 / 2) / 4 and out["H@1"] == 1 / 4
    with pytest.raises(ValueError, match="not in 1..3"):
        ranking_metrics([4], 3)


def test_nil_labelled_mentions_are_nil_mentions_of_the_nil_metrics():
    from modeling_mel.nil import nil_evaluation

    kb_ids = ["a", "b", "c", "d"]
    golds = ["a", "b", "c", "d", NIL_ENTITY_ID]
    ranked = [[(g, 1.0), ("z", 0.5)] for g in golds[:4]] + [[("a", 0.4)]]
    out = nil_evaluation(ranked, golds, kb_ids, 0.75, 0.5, 3)
    assert out["nil_n_labelled"] == 1 and out["nil_n_mentions"] == 3  # 2 simulated + the labelled one
    assert out["nil_recall"] == 1.0 and out["nil_accuracy"] == 1.0  # its best score 0.4 < 0.75: predicted NIL


def test_pfmel_linking_metrics_give_the_protocol():
    from modeling_mel.pfmel_training import LinkingPrediction, linking_metrics

    preds = [LinkingPrediction("1", "m", "a", [("a", 0.9), ("b", 0.1)]),
             LinkingPrediction("2", "m", "b", [("a", 0.9), ("b", 0.1)]),
             LinkingPrediction("3", "m", NIL_ENTITY_ID, [("a", 0.9)])]
    m = linking_metrics(preds, kb_size=10)
    assert m["accuracy"] == 1 / 3 and m["mrr"] == pytest.approx(0.5) and m["MRR"] == pytest.approx(0.5)
    assert (m["H@1"], m["H@3"], m["MR"], m["n_unranked"]) == (1 / 3, 2 / 3, (1 + 2 + 11) / 3, 1)


def test_zemel_evaluation_ranks_the_whole_kb(mimic_root, tmp_path):
    import torch
    from inference_fixtures import tiny_zemel

    from modeling_mel.zemel_evaluation import encode_kb, evaluate_split, load_zemel_data, score_contexts

    data = load_zemel_data("mimic_mel", os.path.join(mimic_root, "WikiMEL"), cache_dir=str(tmp_path / "c"))
    rows = data.split("train") + data.split("test")
    kb = data.kb_for("test")
    assert list(kb) == KB_ORDER
    model, processor = tiny_zemel()
    res = evaluate_split(model, processor, rows, kb, ns=(5,), vt_kg=False)
    assert res["n"] == 5 and res["n_nil"] == 1 and res["n_unranked"] == 2  # the NIL mention and Q99
    # brute force: every row against every entity, rank = 1 + entities scored strictly higher
    cache = encode_kb(model, processor, kb)
    scores = score_contexts(model, processor, rows, [list(kb)] * len(rows), cache)
    ranks = []
    for r, s in zip(rows, scores):
        if r["entity_id"] in kb:
            g = s[list(kb).index(r["entity_id"])]
            ranks.append(1 + sum(x > g + 1e-6 for x in s))
        else:
            ranks.append(None)
    from modeling_mel.metrics import ranking_metrics

    expected = ranking_metrics(ranks, len(kb))
    for key in ("H@1", "H@3", "H@5", "H@10", "H@20", "MR", "MRR"):
        assert res[key] == pytest.approx(expected[key]), key
    assert torch.is_tensor(cache.vectors)


def _quality():
    """``benchmarks/quality.py`` as a module (its ``common`` import needs the benchmarks folder on the path)."""
    import importlib.util

    bench = os.path.join(REPO_ROOT, "benchmarks")
    sys.path.insert(0, bench)
    try:
        spec = importlib.util.spec_from_file_location("mel_quality_benchmark", os.path.join(bench, "quality.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(bench)
    return module


def test_quality_help_lists_mimic_mel_and_prepare_reads_the_layout(mimic_root, tmp_path, capsys):
    quality = _quality()
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "mimic_mel" in help_text and "--image_model" in help_text
    result = quality.main(["--dataset", "mimic_mel", "--data_dir", os.path.join(mimic_root, "WikiMEL"), "--split",
                           "test", "--stages", "candidates", "--image_model", "tiny", "--work_dir", str(tmp_path / "w"),
                           "--out_dir", str(tmp_path), "--name", "q"])
    assert (result["n"], result["kb_size"], result["use_images"]) == (2, 4, True)
    assert json.load(open(tmp_path / "q.json"))["n"] == 2
    bm25 = result["stages"]["candidates"]["bm25_rules"]
    assert {"H@1", "H@3", "H@5", "H@10", "H@20", "MR", "MRR"} <= set(bm25) and bm25["n"] == 2
    kb = [json.loads(line) for line in open(tmp_path / "w" / "kb.jsonl")]
    assert [len(e["images"]) for e in kb] == [1, 0, 1, 0]  # the KB images travel to mel index
    dev = [json.loads(line) for line in open(tmp_path / "w" / "dev.jsonl")]
    assert ["image" in r for r in dev] == [False, False]  # test-0's image is corrupt, test-1 has none
    train = quality.image_options(quality.argparse.Namespace(image_model="M"), {"use_images": True}, "train_zemel")
    assert train[0] == "--image_features" and train[1] != "none" and train[2:] == ["--image_model", "M"]
    assert quality.image_options(quality.argparse.Namespace(image_model=None), {}) == ["--no_images"]
    assert "| H@1 | H@3 | H@5 | H@10 | H@20 | MR | MRR |" in (tmp_path / "q.md").read_text()
