"""NIL prediction (issue 16 point 1): the simulation protocol, the threshold choice, ``mel calibrate`` and the
pipeline's NIL output."""

from __future__ import annotations

import json
import os

import pytest
from transformers import pipeline

from inference_fixtures import KB_ROWS, register_all, tiny_zemel, write_kb
from modeling_mel.cli import main
from modeling_mel.nil import CALIBRATION_NAME, choose_threshold, nil_metrics, simulate_nil
from modeling_mel.pipeline_entity_linking import TASK

register_all()


def test_metrics_and_threshold_by_hand():
    # 4 in-KB mentions (3 right at scores 0.9, 0.8, 0.4; 1 wrong at 0.7), 3 NIL mentions at 0.3, 0.5 and 0.45
    ids = ["a", "b", "c", "x", "y", "z", "w"]
    scores = [0.9, 0.8, 0.4, 0.7, 0.3, 0.5, 0.45]
    golds = ["a", "b", "c", "d", "n1", "n2", "n3"]
    is_nil = [False, False, False, False, True, True, True]
    off = nil_metrics(ids, scores, golds, is_nil, None)
    assert off["in_kb_accuracy"] == 0.75 and off["nil_recall"] == 0.0 and off["accuracy"] == pytest.approx(3 / 7)
    at = nil_metrics(ids, scores, golds, is_nil, 0.6)  # NIL: 0.3, 0.4 (c: an in-KB mention lost), 0.45, 0.5
    assert at["nil_recall"] == 1.0 and at["nil_precision"] == 0.75 and at["in_kb_accuracy"] == 0.5
    assert at["nil_f1"] == pytest.approx(2 * 0.75 / 1.75) and at["accuracy"] == pytest.approx(5 / 7)
    # without an in-KB budget the best overall accuracy is a threshold in (0.5, 0.7): 5 of 7 (ties: the lower one)
    t, m = choose_threshold(ids, scores, golds, is_nil, max_in_kb_drop=1.0)
    assert 0.5 < t < 0.7 and m["accuracy"] == pytest.approx(5 / 7)
    # the default budget (2 points of in-KB accuracy) allows no in-KB loss here: NIL below 0.4 only
    t, m = choose_threshold(ids, scores, golds, is_nil)
    assert 0.3 < t < 0.4 and m["in_kb_accuracy"] == 0.75 and m["nil_recall"] == pytest.approx(1 / 3)
    assert nil_metrics(ids, [None] + scores[1:], golds, is_nil, None)["in_kb_accuracy"] == 0.5  # no candidate: NIL


def test_simulation_is_seeded_and_removes_the_fraction():
    kb = [{"entity_id": f"e{i}", "name": f"n{i}"} for i in range(20)]
    mentions = [{"entity_id": f"e{i % 10}"} for i in range(30)]
    reduced, removed = simulate_nil(kb, mentions, 0.2, seed=1)
    assert len(removed) == 2 and removed <= {f"e{i}" for i in range(10)}
    assert len(reduced) == 18 and not removed & {e["entity_id"] for e in reduced}
    assert simulate_nil(kb, mentions, 0.2, seed=1)[1] == removed
    with pytest.raises(ValueError, match="nil_fraction must be in"):
        simulate_nil(kb, mentions, 1.0)


def test_pipeline_nil_output_and_parameter(tmp_path):
    model, processor = tiny_zemel()
    kb = write_kb(str(tmp_path))
    pipe = pipeline(TASK, model=model, processor=processor, kb=kb, use_images=False)
    item = {"text": "launch day at NASA with friends", "mention": "NASA"}
    plain = pipe(item, top_k=2, candidates="dense")
    assert all("nil" not in r for r in plain)  # no calibration, no threshold: NIL is off
    high = pipe(item, top_k=2, candidates="dense", nil_threshold=1e9)
    assert high[0] == {"entity_id": None, "name": None, "score": plain[0]["score"], "nil": True}
    assert high[1:] == plain  # the candidates follow
    assert pipe(item, top_k=2, candidates="dense", nil_threshold=-1e9) == plain
    with pytest.raises(ValueError, match="nil_threshold must be a number or None"):
        pipe(item, nil_threshold="high")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory, zemeld_raw):
    """The generated ZEMELD sample as kb.jsonl + dev.jsonl, the untrained MiniLM ZEMEL (bi, text only) saved, and a
    `mel calibrate` run on it."""
    from modeling_mel import ZemelPolyEncoder, ZemelProcessor
    from modeling_mel.backbones import load_tokenizer
    from modeling_mel.zemel_evaluation import load_zemel_data

    root = tmp_path_factory.mktemp("nil")
    data = load_zemel_data("zemeld", zemeld_raw, cache_dir=str(root / "cache"))
    with open(root / "kb.jsonl", "w", encoding="utf-8") as f:
        for e, v in data.full_kb.items():
            f.write(json.dumps({"entity_id": e, "name": v.get("name"), "description": v.get("description")}) + "\n")
    dev = [{"text": r["text"], "mention": r["mention"], "mention_start": r.get("mention_start"),
            "mention_end": r.get("mention_end"), "entity_id": r["entity_id"]} for r in data.split("dev")]
    with open(root / "dev.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in dev)
    processor = ZemelProcessor(load_tokenizer("minilm"))
    model = ZemelPolyEncoder.from_text_backbone("minilm", scoring="bi")
    processor.configure_model(model)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    code = main(["calibrate", "--model", str(root / "model"), "--kb", str(root / "kb.jsonl"), "--data",
                 str(root / "dev.jsonl"), "--no_images", "--fp32", "--candidates", "dense"])
    assert code == 0
    with open(root / "model" / CALIBRATION_NAME, encoding="utf-8") as f:
        return root, json.load(f)


def test_calibration_finds_nil_mentions_at_a_small_in_kb_cost(calibration):
    _, result = calibration
    before, after = result["uncalibrated"], result["calibrated"]
    print("NIL calibration on the ZEMELD sample dev split:", json.dumps(result, sort_keys=True))
    assert result["threshold"] is not None
    assert after["n_nil"] > 0 and after["nil_recall"] > 0 and after["nil_f1"] > 0
    assert before["in_kb_accuracy"] - after["in_kb_accuracy"] <= 0.02 + 1e-9
    assert after["accuracy"] > before["accuracy"]  # NIL mentions can only be right with a threshold


def test_pipeline_uses_the_calibrated_threshold_for_a_removed_gold(calibration):
    from modeling_mel.nil import simulate_nil
    from modeling_mel.knowledge_base import kb_records, read_jsonl

    root, result = calibration
    protocol = result["protocol"]
    rows = read_jsonl(str(root / "dev.jsonl"))
    reduced, removed = simulate_nil(kb_records(str(root / "kb.jsonl")), rows, protocol["nil_fraction"], protocol["seed"])
    pipe = pipeline(TASK, model=str(root / "model"), kb=reduced, use_images=False)  # threshold from the folder
    items = [{k: r[k] for k in ("text", "mention", "mention_start", "mention_end") if r.get(k) is not None} for r in rows]
    outputs = pipe(items, top_k=1, candidates="dense")
    nil_gold = [out for out, r in zip(outputs, rows) if r["entity_id"] in removed]
    flagged = [out for out in nil_gold if out[0].get("nil")]
    assert flagged and all(out[0]["score"] < result["threshold"] for out in flagged)
    assert len(flagged) == round(result["calibrated"]["nil_recall"] * len(nil_gold))
    off = pipe(items, top_k=1, candidates="dense", nil_threshold=None)
    assert not any(out[0].get("nil") for out in off)


def test_nil_evaluation_by_hand():
    from modeling_mel.nil import nil_evaluation, removed_entities

    kb_ids = ["a", "b", "c", "d"]
    golds = ["a", "b", "c", "d"]
    removed = removed_entities(kb_ids, golds, 0.5, seed=3)
    assert len(removed) == 2 and removed == removed_entities(kb_ids, golds, 0.5, seed=3)
    # each mention ranks its gold first at score 1.0, then a decoy "z" (never removed) at 0.5
    ranked = [[(g, 1.0), ("z", 0.5)] for g in golds]
    off = nil_evaluation(ranked, golds, kb_ids, None, 0.5, 3)
    # uncalibrated: in-KB mentions right, NIL mentions linked to the decoy
    assert off["nil_in_kb_accuracy"] == 1.0 and off["nil_recall"] == 0.0 and off["nil_accuracy"] == 0.5
    assert off["nil_removed_entities"] == 2 and off["nil_n_mentions"] == 2 and off["nil_threshold"] is None
    at = nil_evaluation(ranked, golds, kb_ids, 0.75, 0.5, 3)  # the decoy's 0.5 < 0.75: every NIL mention found
    assert at["nil_in_kb_accuracy"] == 1.0 and at["nil_recall"] == 1.0 and at["nil_precision"] == 1.0
    assert at["nil_f1"] == 1.0 and at["nil_accuracy"] == 1.0


def test_nil_settings_read_the_calibration(tmp_path):
    from modeling_mel.nil import nil_settings, save_calibration

    assert nil_settings(str(tmp_path)) == (None, 0.2, 0)  # no calibration: off, the default protocol
    save_calibration(str(tmp_path), {"threshold": 0.25, "protocol": {"nil_fraction": 0.3, "seed": 7}})
    assert nil_settings(str(tmp_path)) == (0.25, 0.3, 7)
    assert nil_settings(str(tmp_path), "off") == (None, 0.3, 7)
    assert nil_settings(str(tmp_path), "1.5", 0.1, 2) == (1.5, 0.1, 2)
    with pytest.raises(ValueError, match="'calibrated', 'off' or a number, got 'high'"):
        nil_settings(str(tmp_path), "high")


def test_zemel_evaluation_reports_nil_metrics(zemeld_raw, tmp_path):
    from modeling_mel.nil import removed_entities
    from modeling_mel.zemel_evaluation import evaluate_split, load_zemel_data

    data = load_zemel_data("zemeld", zemeld_raw, cache_dir=str(tmp_path / "cache"))
    rows, kb = data.split("test"), data.kb_for("test")
    model, processor = tiny_zemel()
    res = evaluate_split(model, processor, rows, kb, ns=[5, 20], vt_kg=False, return_predictions=True,
                         nil_threshold=None, nil_fraction=0.25, nil_seed=1)
    lists, scores = res["_predictions"]["candidates"], res["_predictions"]["scores"]
    golds = [r["entity_id"] for r in rows]
    removed = removed_entities(list(kb), golds, 0.25, 1)
    # the best candidate of the top 20 that is still in the reduced KB, by score
    best = []
    for c, s in zip(lists, scores):
        kept = sorted(((sc, e) for e, sc in zip(c[:20], s[:20]) if e not in removed), key=lambda p: -p[0])
        best.append(kept[0][1] if kept else None)
    in_kb = [i for i, g in enumerate(golds) if g not in removed]
    assert res["nil_in_kb_accuracy"] == pytest.approx(sum(best[i] == golds[i] for i in in_kb) / len(in_kb))
    assert res["nil_removed_entities"] == len(removed) > 0 and res["nil_fraction"] == 0.25
    every = evaluate_split(model, processor, rows, kb, ns=[5, 20], vt_kg=False, nil_threshold=1e9, nil_fraction=0.25,
                           nil_seed=1)
    assert every["nil_recall"] == 1.0 and every["nil_in_kb_accuracy"] == 0.0  # everything predicted NIL
    assert every["r@1/5"] == res["r@1/5"]  # the linking metrics do not depend on NIL


def test_calibrate_with_an_index_saves_it_there_and_matches_the_kb_run(calibration, tmp_path):
    """`mel calibrate --index` removes the entities from the index (no re-encoding) and gives the same figures as
    the run over kb.jsonl; the threshold lands in the index folder and pipeline(kb=INDEX) uses it."""
    root, by_kb = calibration
    index_dir = str(tmp_path / "index")
    assert main(["index", "--model", str(root / "model"), "--kb", str(root / "kb.jsonl"), "--out", index_dir,
                 "--no_images", "--fp32"]) == 0
    assert main(["calibrate", "--model", str(root / "model"), "--index", index_dir, "--data", str(root / "dev.jsonl"),
                 "--no_images", "--fp32", "--candidates", "dense"]) == 0
    with open(os.path.join(index_dir, CALIBRATION_NAME), encoding="utf-8") as f:
        by_index = json.load(f)
    for key in ("n", "n_nil", "in_kb_accuracy", "nil_recall", "accuracy"):
        assert by_index["uncalibrated"][key] == pytest.approx(by_kb["uncalibrated"][key], abs=1e-9), key
    assert by_index["threshold"] == pytest.approx(by_kb["threshold"], abs=1e-4)
    assert by_index["protocol"]["index"] == os.path.abspath(index_dir)
    pipe = pipeline(TASK, model=str(root / "model"), kb=index_dir, use_images=False)
    assert pipe._postprocess_params["nil_threshold"] == by_index["threshold"]
    # the index is unchanged and still loads (nil_calibration.json is not one of its checked files)
    from modeling_mel.entity_index import EntityIndex

    assert len(EntityIndex.load(index_dir)) == len(read_kb(root))


def read_kb(root) -> list[str]:
    with open(root / "kb.jsonl", encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def test_entity_index_without_keeps_the_other_entities(tmp_path):
    import numpy as np

    from modeling_mel.entity_index import EntityIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype("float32")
    full = EntityIndex.from_vectors(vectors)
    removed = {"3", "7", "11"}
    reduced = full.without(removed | {"not-an-id"})
    assert len(reduced) == 47 and not removed & set(reduced.entity_ids)
    keep = [i for i in range(50) if str(i) not in removed]
    expected = EntityIndex.from_vectors(vectors[keep], [{"entity_id": str(i), "name": str(i)} for i in keep])
    queries = rng.standard_normal((5, 8)).astype("float32")
    assert reduced.search_ids(queries, 10) == expected.search_ids(queries, 10)
    with pytest.raises(ValueError, match="leaves the index of 50 entities empty"):
        full.without(str(i) for i in range(50))


def test_pfmel_calibration_and_evaluation_read_it(calibration, tmp_path):
    """PFMEL: `mel calibrate` (name rule + BM25 retriever) writes the calibration; the pipeline uses it."""
    from inference_fixtures import tiny_nsp

    root, _ = calibration
    model, processor = tiny_nsp()
    model.save_pretrained(tmp_path / "nsp")
    processor.save_pretrained(tmp_path / "nsp")
    assert main(["calibrate", "--model", str(tmp_path / "nsp"), "--kb", str(root / "kb.jsonl"), "--data",
                 str(root / "dev.jsonl"), "--no_images", "--fp32", "--retriever", "bm25", "--max_in_kb_drop", "1.0"]) == 0
    with open(tmp_path / "nsp" / CALIBRATION_NAME, encoding="utf-8") as f:
        result = json.load(f)
    print("PFMEL (tiny, random) NIL calibration:", json.dumps(result, sort_keys=True))
    assert result["protocol"]["retriever"] == "bm25" and result["uncalibrated"]["n_nil"] > 0
    # with no in-KB budget the threshold maximises overall accuracy: never worse than no threshold
    assert result["calibrated"]["accuracy"] >= result["uncalibrated"]["accuracy"]
    pipe = pipeline(TASK, model=str(tmp_path / "nsp"), kb=str(root / "kb.jsonl"), use_images=False)
    assert pipe._postprocess_params["nil_threshold"] == result["threshold"]


def test_calibrate_reads_a_corpus_split(calibration, zemeld_raw):
    """`mel calibrate --data CORPUS_DIR --dataset zemeld --split dev` calibrates on the same mentions as the JSONL
    export of that split (same counts and metrics)."""
    root, by_file = calibration
    out = root / "from_corpus"
    out.mkdir(exist_ok=True)
    assert main(["calibrate", "--model", str(root / "model"), "--kb", str(root / "kb.jsonl"), "--data", zemeld_raw,
                 "--dataset", "zemeld", "--split", "dev", "--no_images", "--fp32", "--candidates", "dense",
                 "--out", str(out)]) == 0
    with open(out / CALIBRATION_NAME, encoding="utf-8") as f:
        by_corpus = json.load(f)
    assert by_corpus["protocol"]["split"] == "dev" and by_corpus["protocol"]["dataset"] == "zemeld"
    for key in ("n", "n_nil", "in_kb_accuracy", "nil_recall", "accuracy"):
        assert by_corpus["uncalibrated"][key] == pytest.approx(by_file["uncalibrated"][key], abs=1e-9), key
    assert main(["calibrate", "--model", str(root / "model"), "--kb", str(root / "kb.jsonl"), "--data", zemeld_raw,
                 "--no_images"]) == 2  # a folder without --dataset: a one-line error
