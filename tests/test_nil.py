"""NIL prediction (issue 16 point 1): the simulation protocol, the threshold choice, ``mel calibrate`` and the
pipeline's NIL output."""

from __future__ import annotations

import json

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
