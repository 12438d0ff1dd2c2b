"""ZEMEL evaluation KB and evaluation-mode candidate lists (issue 13, points 1, 2 and 7).

1. The default evaluation KB of a dev/test split is every KB entity not seen in training, KB entities that no mention
   uses included (``eval_kb="unseen"``, alias ``"split"``); ``gold_only`` keeps the old closed pool of answers.
2. An entity gold in both dev and test is in both KBs; the zero-shot check reports dev&test and train&(dev|test).
7. ``ZemelCollator(train=False)`` never pads a short candidate list with other KB entities.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zemeld_builder(repo_root):
    from modeling_mel.builders import zemeld

    return zemeld


@pytest.fixture(scope="module")
def sample(zemeld_raw):
    return zemeld_raw  # the conftest corpus, under this file's name


def _read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _copy(sample, dest):
    shutil.copytree(sample, dest)
    return _read(dest / "annotations.jsonl"), _read(dest / "kb.jsonl")


def _build(zemeld, config, data_dir, cache):
    b = zemeld.Zemeld(config_name=config, data_dir=str(data_dir), cache_dir=str(cache))
    b.download_and_prepare()
    return b, b.as_dataset()


def _tiny_model(processor):
    from modeling_mel.configuration_zemel import ZemelConfig
    from modeling_mel.modeling_zemel import ZemelPolyEncoder

    torch.manual_seed(0)
    config = ZemelConfig(text_config=dict(TEXT, vocab_size=len(processor.tokenizer)), v_feature_dim=16,
                         v_hidden_size=24, v_num_attention_heads=4, v_intermediate_size=30, v_num_hidden_layers=1,
                         bi_hidden_size=32, bi_num_attention_heads=4, poly_m=4, max_regions=2)
    model = ZemelPolyEncoder(config)
    model.resize_for_processor(processor)
    return model.eval()


@pytest.fixture()
def processor(minilm_tokenizer):
    from modeling_mel.processing_zemel import ZemelProcessor

    return ZemelProcessor(minilm_tokenizer, feature_dim=16, max_regions=2)


# ----------------------------------------------------------------------------------------------------------------------
# 1. the default evaluation KB holds every entity not seen in training, unused ones included
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoy_corpus(sample, tmp_path_factory):
    """The sample plus, for every test gold entity, an unused KB entity with the same name placed BEFORE it in the KB
    (BM25 + rules tie on the name, KB order breaks the tie: the decoy is ranked above the gold)."""
    dest = tmp_path_factory.mktemp("decoys") / "raw"
    anns, kb = _copy(sample, dest)
    test_gold = {e["entity_id"] for a in anns if a["split"] == "test" for e in a["entities"]}
    by_id = {k["entity_id"]: k for k in kb}
    decoys = [{"entity_id": f"D{eid}", "name": by_id[eid]["name"], "description": "An unrelated decoy.", "images": []}
              for eid in sorted(test_gold)]
    _write(dest / "kb.jsonl", decoys + kb)
    return {"dir": dest, "decoys": {d["entity_id"] for d in decoys}, "test_gold": test_gold}


def test_builder_keeps_unused_entities_with_flags(decoy_corpus, zemeld_builder, tmp_path):
    _, kb = _build(zemeld_builder, "kb", decoy_corpus["dir"], tmp_path)
    full = {r["entity_id"]: r for r in kb["full"]}
    assert decoy_corpus["decoys"] <= set(full)
    for eid in decoy_corpus["decoys"]:
        assert full[eid]["split"] == "unused" and full[eid]["splits"] == [] and full[eid]["seen_in_training"] is False
    train_ids = set(kb["train"]["entity_id"])
    assert train_ids and all(full[e]["seen_in_training"] for e in train_ids)
    assert {e for e, r in full.items() if r["seen_in_training"]} == train_ids


def test_default_eval_kb_is_every_entity_unseen_in_training(decoy_corpus, tmp_path):
    from modeling_mel.zemel_evaluation import load_zemel_data

    data = load_zemel_data("zemeld", str(decoy_corpus["dir"]), str(tmp_path))
    train_ids = {r["entity_id"] for r in data.split("train")}
    dev_ids = {r["entity_id"] for r in data.split("dev")}
    kb = data.kb_for("test")
    assert set(kb) == set(data.full_kb) - train_ids  # unused decoys and dev entities compete with the test golds
    assert decoy_corpus["decoys"] <= set(kb) and dev_ids <= set(kb)
    assert data.kb_for("test", "split") == kb == data.kb_for("validation", "unseen")  # "split": alias
    assert set(data.kb_for("test", "gold_only")) == decoy_corpus["test_gold"]  # the old closed pool
    assert data.kb_for("test", "full") == data.full_kb
    assert set(data.kb_for("train")) == train_ids  # the training KB itself is unchanged
    with pytest.raises(ValueError, match="unknown eval_kb 'bogus'"):
        data.kb_for("test", "bogus")


def test_default_evaluation_ranks_unused_entities_above_gold(decoy_corpus, tmp_path, processor):
    from modeling_mel.zemel_evaluation import evaluate_splits, load_zemel_data

    data = load_zemel_data("zemeld", str(decoy_corpus["dir"]), str(tmp_path))
    model = _tiny_model(processor)
    kw = dict(ns=(1, 5), vt_kg=False, batch_size=32, context_max_length=24, candidate_max_length=24,
              return_predictions=True)
    default = evaluate_splits(model, processor, data, ["test"], **kw)["test"]
    rows = data.split("test")
    found = 0
    for row, cands in zip(rows, default["_predictions"]["candidates"]):
        if row["entity_id"] in cands:  # the unused decoy, same name and earlier in the KB, is ranked above the gold
            found += 1
            assert cands.index(f"D{row['entity_id']}") < cands.index(row["entity_id"]), (row["mention"], cands)
    assert found >= len(rows) // 2
    gold_only = evaluate_splits(model, processor, data, ["test"], eval_kb="gold_only", **kw)["test"]
    assert default["eval_kb"] == "unseen" and gold_only["eval_kb"] == "gold_only"
    assert default["kb_size"] > gold_only["kb_size"] and default["n_gold_not_in_kb"] == 0
    # with N=1 the prediction is the top BM25 candidate: a decoy for every test mention under the default KB
    assert default["r@1/1"] == 0.0 < gold_only["r@1/1"]
    assert default["candidate_recall@1"] < gold_only["candidate_recall@1"]


def test_scripts_accept_eval_kb_modes(repo_root, sample):
    from modeling_mel.scripts import train_zemel as module

    assert module.ZemelDataArguments(data_dir=str(sample)).eval_kb == "unseen"
    for mode in ("unseen", "split", "full", "gold_only"):
        assert module.ZemelDataArguments(data_dir=str(sample), eval_kb=mode).eval_kb == mode
    with pytest.raises(ValueError, match="unknown --eval_kb"):
        module.ZemelDataArguments(data_dir=str(sample), eval_kb="closed")


# ----------------------------------------------------------------------------------------------------------------------
# 2. an entity gold in both dev and test is in both KBs; overlaps are reported
# ----------------------------------------------------------------------------------------------------------------------
def test_entity_gold_in_dev_and_test_is_in_both_kbs(sample, zemeld_builder, tmp_path, caplog):
    from modeling_mel.zemel_evaluation import load_zemel_data

    anns, _ = _copy(sample, tmp_path / "raw")
    dev_ann = next(a for a in anns if a["split"] == "dev")
    test_ann = next(a for a in anns if a["split"] == "test")
    shared = dev_ann["entities"][0]["entity_id"]
    test_ann["entities"][0]["entity_id"] = shared  # gold of a dev and a test mention
    _write(tmp_path / "raw" / "annotations.jsonl", anns)

    with caplog.at_level("WARNING"):
        b, kb = _build(zemeld_builder, "kb", tmp_path / "raw", tmp_path / "cache")
    assert shared in set(kb["validation"]["entity_id"]) and shared in set(kb["test"]["entity_id"])
    assert b.overlaps["dev&test"] == [shared] and b.overlaps["train&(dev|test)"] == []
    assert "gold in both dev and test" in caplog.text and shared in caplog.text
    full = {r["entity_id"]: r for r in kb["full"]}
    assert full[shared]["splits"] == ["dev", "test"] and not full[shared]["seen_in_training"]
    assert {r["split"] for r in kb["validation"]} == {"dev"} and {r["split"] for r in kb["test"]} == {"test"}
    report = json.load(open(b.skipped_path))
    assert report["overlaps"]["dev&test"] == [shared]

    data = load_zemel_data("zemeld", str(tmp_path / "raw"), str(tmp_path / "cache"))
    assert shared in data.kb_for("dev", "gold_only") and shared in data.kb_for("test", "gold_only")
    assert shared in data.kb_for("dev") and shared in data.kb_for("test")
    n_entities = len(_read(tmp_path / "raw" / "kb.jsonl"))
    assert len(data.full_kb) == n_entities  # no entity lost
    assert set(data.kb_for("train")) | set(data.kb_for("dev")) == set(data.full_kb)


def test_zero_shot_check_reports_train_overlap_with_dev_and_test(sample, zemeld_builder, tmp_path):
    anns, _ = _copy(sample, tmp_path / "raw")
    train_ann = next(a for a in anns if a["split"] == "train")
    dev_eid = next(a for a in anns if a["split"] == "dev")["entities"][0]["entity_id"]
    test_eid = next(a for a in anns if a["split"] == "test")["entities"][0]["entity_id"]
    for j, eid in enumerate((dev_eid, test_eid)):
        train_ann["entities"].append(dict(train_ann["entities"][0], entity_id=eid, box=[0, 0, 5 + j, 5 + j]))
    _write(tmp_path / "raw" / "annotations.jsonl", anns)
    with pytest.raises(ValueError) as err:
        _build(zemeld_builder, "mentions", tmp_path / "raw", tmp_path / "cache")
    message = str(err.value)
    assert "zero-shot split violated" in message
    assert f"1 dev entities also appear in train: ['{dev_eid}']" in message
    assert f"1 test entities also appear in train: ['{test_eid}']" in message


def test_split_overlaps_function(zemeld_builder):
    got = zemeld_builder.split_overlaps({"train": {"a", "b"}, "dev": {"b", "c"}, "test": {"c", "a", "d"}})
    assert got == {"train&dev": ["b"], "train&test": ["a"], "train&(dev|test)": ["a", "b"], "dev&test": ["c"]}


# ----------------------------------------------------------------------------------------------------------------------
# 7. evaluation-mode lists are never padded with other KB entities
# ----------------------------------------------------------------------------------------------------------------------
KB = {
    "G": {"name": "Golden Gate Bridge", "description": "The gold entity."},
    "A": {"name": "Alpha Tower", "description": "A candidate."},
    "B": {"name": "Bravo Palace", "description": "Another entity."},
    "C": {"name": "Charlie Museum", "description": "Yet another entity."},
}
ROW = {"text": "Photo of the bridge in the north.", "mention": "bridge", "mention_start": 13, "mention_end": 19,
       "entity_id": "G"}


def test_eval_collator_never_pads_with_kb_entities(processor):
    from modeling_mel.zemel_training import ZemelCollator

    for seed in range(100):
        collator = ZemelCollator(processor, KB, mode="list", num_candidates=3, train=False, seed=seed,
                                 return_candidate_ids=True, context_max_length=24, candidate_max_length=24)
        ids, label = collator.candidate_list(dict(ROW, candidates=["A"]))
        assert "G" not in ids and label == -100, (seed, ids)  # the missed gold stays missed
        assert ids == ["A"], (seed, ids)  # and no other KB entity is added
        batch = collator([dict(ROW, candidates=["A"]), dict(ROW, candidates=[]), dict(ROW, candidates=["B", "G"])])
        assert batch["labels"].tolist() == [-100, -100, 1]
        assert batch["candidate_ids"] == [["A"], [], ["B", "G"]]
        assert batch["candidate_input_ids"].shape[:2] == (3, 3)
        texts = [[processor.tokenizer.decode(t, skip_special_tokens=True) for t in row]
                 for row in batch["candidate_input_ids"]]
        assert all("golden" not in t and "bravo" not in t and "charlie" not in t for t in texts[0]), (seed, texts[0])
        assert all("alpha" in t for t in texts[0])  # padded by repeating the row's own candidate
        assert not any(t.strip() for t in texts[1])  # empty list: blank placeholders, no entity
        assert texts[2][2] == texts[2][0]


def test_training_collator_still_pads_and_inserts_gold(processor):
    from modeling_mel.zemel_training import ZemelCollator

    collator = ZemelCollator(processor, KB, mode="list", num_candidates=3, train=True, seed=0,
                             return_candidate_ids=True, context_max_length=24, candidate_max_length=24)
    batch = collator([dict(ROW, candidates=["A"])])
    ids = batch["candidate_ids"][0]
    assert len(ids) == 3 == len(set(ids)) and "G" in ids and "A" in ids and ids[batch["labels"][0]] == "G"


def test_rank_candidates_ignores_padding(processor):
    from modeling_mel.zemel_training import ZemelCollator, rank_candidates

    model = _tiny_model(processor)
    collator = ZemelCollator(processor, KB, mode="list", num_candidates=4, train=False, seed=1,
                             context_max_length=24, candidate_max_length=24)
    rows = [dict(ROW, candidates=["A", "C"]), dict(ROW, candidates=[]), dict(ROW, candidates=["C", "B", "A", "G"])]
    ranked = rank_candidates(model, collator, rows)
    assert sorted(ranked[0]) == ["A", "C"] and ranked[1] == [] and sorted(ranked[2]) == ["A", "B", "C", "G"]
    batch = collator(rows[:1])
    batch.pop("labels")
    with torch.no_grad():
        scores = model(**batch).scores[0]
    torch.testing.assert_close(scores[2:], scores[:2], atol=1e-5, rtol=0)  # a repeat scores as its original
