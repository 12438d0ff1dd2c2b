"""Retrieve-then-rerank: a ZEMEL entity index as the first stage, the NSP cross-encoder as the reranker.

Covers the listwise loss, fine-tuning on the retriever's candidates (``finetune_linking.py --retriever``), the
retriever-score weight chosen on held-out mentions, and the product paths (``pipeline(retriever=INDEX_DIR)``,
``mel link --retriever INDEX_DIR``) with the fused score.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import train_script
import torch

from inference_fixtures import register_all, tiny_nsp, tiny_zemel
from pfmel_fixtures import tiny_backbone  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
register_all()


def _script(name: str):
    return train_script(name, "_rerank_test")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict:
    """The Twitter sample corpus, a saved tiny ZEMEL model and its entity index over the sample's KB."""
    from transformers import AutoModel, AutoProcessor

    from modeling_mel.builders import sample
    from modeling_mel.corpus import load_mel_corpus
    from modeling_mel.entity_index import EntityIndex

    root = tmp_path_factory.mktemp("rerank")
    data_dir = str(root / "sample")
    sample.generate_twitter_sample(data_dir, seed=0)
    kb = load_mel_corpus("twitter_mel", data_dir, config="kb")
    model, processor = tiny_zemel(seed=3)
    zdir = str(root / "zemel")
    model.save_pretrained(zdir)
    processor.save_pretrained(zdir)
    loaded = AutoModel.from_pretrained(zdir).eval()
    index_dir = str(root / "index")
    EntityIndex.build(loaded, AutoProcessor.from_pretrained(zdir), kb, progress=False).save(index_dir)
    kb_rows = [{"entity_id": e, "name": n, "description": d or ""} for e, n, d in zip(kb["entity_id"], kb["name"], kb["description"])]
    kb_path = str(root / "kb.jsonl")
    with open(kb_path, "w", encoding="utf-8") as f:
        for row in kb_rows:
            f.write(json.dumps(row) + "\n")
    return {"data_dir": data_dir, "zemel_dir": zdir, "index_dir": index_dir, "kb": kb_path, "root": root}


def test_listwise_loss_is_cross_entropy_per_list():
    from modeling_mel.pfmel_training import listwise_loss

    scores = torch.tensor([2.0, 1.0, 0.0, 0.5, 3.0])
    owner = torch.tensor([0, 0, 0, 1, 1])
    expected = ((torch.logsumexp(torch.tensor([2.0, 1.0, 0.0]), 0) - 2.0) + (torch.logsumexp(torch.tensor([0.5, 3.0]), 0) - 0.5)) / 2
    assert torch.allclose(listwise_loss(scores, owner), expected)
    scores.requires_grad_(True)
    listwise_loss(scores, owner).backward()
    assert scores.grad[0] < 0 and scores.grad[3] < 0 and scores.grad[4] > 0  # gold up, the others down


def test_retrieve_scored_merges_dense_top_k_and_extras(sample):
    from modeling_mel.pfmel_training import load_retriever

    index = load_retriever(sample["index_dir"])  # the ZEMEL model comes from the path recorded in the index
    dense = index.retrieve_scored(["launch day at NASA"], ["NASA"], 3)[0]
    assert len(dense) == 3 and [s for _, s in dense] == sorted((s for _, s in dense), reverse=True)
    far = index.entities[-1]["entity_id"]
    merged = index.retrieve_scored(["launch day at NASA"], ["NASA"], 3, extra=[[far, "not-an-entity"]])[0]
    assert [e for e, _ in dense] == [e for e, _ in merged if e != far] and far in dict(merged)
    # each score is the model's own score of (context, candidate)
    pos = {e["entity_id"]: i for i, e in enumerate(index.entities)}
    enc = index.processor.encode_contexts(["launch day at NASA"], ["NASA"], max_length=64)
    with torch.inference_mode():
        ctx = index.model.encode_context(**enc)
        ids = [e for e, _ in merged]
        direct = index.model.score(ctx, torch.from_numpy(index.vectors[[pos[e] for e in ids]]))[0]
    assert torch.allclose(direct, torch.tensor([s for _, s in merged]), atol=1e-5)


def test_listwise_batches_are_grouped_by_list_length(tmp_path):
    """``group_by_length`` over list items: each list's length is its longest pair, and the sampler's batches hold
    lists of about one length (a random draw would pad every batch to about the longest list)."""
    from transformers import TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from modeling_mel.corpus import ListDataset
    from modeling_mel.pfmel_training import ListwiseNSPTrainer

    model, _ = tiny_nsp(seed=0)
    # 640 lists of 3 pairs; list k's longest pair has 5 + k tokens (its other pairs are shorter)
    n = 640
    items = [{"features": [{"input_ids": [1] * 3}, {"input_ids": [1] * (5 + k)}, {"input_ids": [1] * 4}]} for k in range(n)]
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=8, use_cpu=True, report_to="none",
                             train_sampling_strategy="group_by_length")
    trainer = ListwiseNSPTrainer(model=model, args=args, train_dataset=ListDataset(items))
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths == [5 + k for k in range(n)]
    order = list(sampler)
    assert sorted(order) == list(range(n))
    spans = [max(order[i : i + 8]) - min(order[i : i + 8]) for i in range(0, n, 8)]  # length spread of each batch
    # sorted mega-batches of 160 lists: about 8 / 160 of the range; a random permutation spreads about 500
    assert sum(spans) / len(spans) < 100
    args_random = TrainingArguments(str(tmp_path), per_device_train_batch_size=8, use_cpu=True, report_to="none",
                                    train_sampling_strategy="random")
    assert not isinstance(ListwiseNSPTrainer(model=model, args=args_random, train_dataset=ListDataset(items))
                          ._get_train_sampler(), LengthGroupedSampler)


def test_length_sorted_chunks_give_the_one_pass_loss_and_gradients():
    """Listwise training forwards a batch's pairs in length-sorted chunks cut to their own length
    (``--pairs_per_forward``): the loss and every gradient equal those of one padded pass."""
    from modeling_mel.pfmel_training import length_sorted_logits, listwise_loss

    model, _ = tiny_nsp(seed=0)
    model.eval()  # no dropout: both ways see the same function
    g = torch.Generator().manual_seed(0)
    lengths = [5, 19, 7, 12, 30, 9, 16, 25, 6, 11]
    ids = torch.zeros(len(lengths), 32, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, 90, (n,), generator=g)
        mask[i, :n] = 1
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": (torch.arange(32) > 3).long().expand(10, 32) * mask}
    owner = torch.tensor([0] * 4 + [1] * 3 + [2] * 3)

    def loss_and_grads(fn):
        model.zero_grad()
        loss = listwise_loss(model.link_scores(fn()), owner)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    one_loss, one_grads = loss_and_grads(lambda: model(**inputs).logits)
    one_logits = model(**inputs).logits.detach()
    chunked = length_sorted_logits(model, inputs, chunk=3).detach()
    assert torch.allclose(chunked, one_logits, atol=1e-5)  # rows back in input order
    chunk_loss, chunk_grads = loss_and_grads(lambda: length_sorted_logits(model, inputs, chunk=3))
    assert torch.allclose(chunk_loss, one_loss, atol=1e-5)
    assert chunk_grads.keys() == one_grads.keys() and len(one_grads) > 10
    for name, grad in one_grads.items():
        assert torch.allclose(chunk_grads[name], grad, atol=1e-5, rtol=1e-4), name


def test_finetune_on_retriever_candidates_listwise(sample, tiny_backbone, tmp_path):  # noqa: F811
    out = str(tmp_path / "reranker")
    results = _script("finetune_linking").main([
        "--dataset", "twitter_mel", "--data_dir", sample["data_dir"], "--image_features", "none", "--backbone", tiny_backbone,
        "--output_dir", out, "--retriever", sample["index_dir"], "--retriever_k", "4", "--loss", "listwise",
        "--list_size", "4", "--pairs_per_forward", "5", "--calibration_mentions", "6", "--max_train_samples", "16",
        "--max_eval_samples", "10",
        "--eval_splits", "dev", "--max_length", "64", "--use_cpu", "True", "--report_to", "none", "--disable_tqdm", "True",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--max_steps", "3", "--save_strategy", "no",
    ])
    train = results["train"]
    assert train["loss"] == "listwise" and train["mentions"] == 16 and train["calibration_mentions"] == 6
    table = train["calibration_accuracy"]  # {weight: held-out accuracy}
    # the calibration mentions are the split's last 6, whatever --max_train_samples is (a retriever trained on the
    # first TOTAL-6 never saw them)
    from modeling_mel.pfmel_data import PFMELCorpus as _Corpus

    train_ids = [str(i) for i in _Corpus.load("twitter_mel", sample["data_dir"], image_features="none").split("train")["id"]]
    assert len(train_ids) > 16 + 6 and train["calibration_ids"] == train_ids[-6:]
    assert table[str(train["retriever_score_weight"])] == max(table.values())
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["retriever_score_weight"] == train["retriever_score_weight"] and config["retriever_k"] == 4
    dev = results["dev"]
    assert dev["n"] == 10 and 0.0 <= dev["accuracy"] <= 1.0
    # every dev mention's candidates include the retriever's dense top 4 (candidate recall >= the retriever's R@4)
    from modeling_mel.pfmel_data import PFMELCorpus
    from modeling_mel.pfmel_training import load_retriever

    corpus = PFMELCorpus.load("twitter_mel", sample["data_dir"], image_features="none")
    index = load_retriever(sample["index_dir"])
    data = corpus.linking_data("dev", 10, retriever=index, retriever_k=4)
    for m in data.mentions:
        dense = [e for e, _ in index.retrieve_scored([m.text], [{"mention": m.mention, "mention_start": m.span[0] if m.span else None,
                                                                  "mention_end": m.span[1] if m.span else None}], 4)[0]]
        assert set(dense) <= set(m.candidates) and set(m.retriever_scores) == set(m.candidates)


@pytest.mark.parametrize("weight", [0.0, 7.5])
def test_pipeline_retriever_dir_fuses_the_retriever_score(sample, weight):
    from transformers import pipeline

    from modeling_mel.pfmel_training import load_retriever
    from modeling_mel.pipeline_entity_linking import TASK

    model, processor = tiny_nsp(seed=1)
    model.config.retriever_k = 3
    item = {"text": "launch day at NASA", "mention": "NASA"}
    model.config.retriever_score_weight = 0.0
    plain = pipeline(TASK, model=model, processor=processor, kb=sample["kb"], use_images=False, retriever=sample["index_dir"])
    base = {r["entity_id"]: r["score"] for r in plain(item, top_k=50)}
    model.config.retriever_score_weight = weight
    fused = {r["entity_id"]: r["score"] for r in plain(item, top_k=50)}
    first = dict(load_retriever(sample["index_dir"]).retrieve_scored([item["text"]], [item["mention"]], 3, extra=[["nasa"]])[0])
    assert set(fused) == set(base) == set(first)  # dense top 3 + the closest names, nothing else
    for e in fused:
        assert fused[e] == pytest.approx(base[e] + weight * first[e], abs=1e-4)
    # a call's retriever_k replaces config.retriever_k: the dense top 1 and the 1 closest name, with the same scores
    narrow = {r["entity_id"]: r["score"] for r in plain(item, top_k=50, retriever_k=1)}
    top1 = dict(load_retriever(sample["index_dir"]).retrieve_scored([item["text"]], [item["mention"]], 1, extra=[["nasa"]])[0])
    assert set(narrow) == set(top1) and len(narrow) < len(fused)
    for e in narrow:
        assert narrow[e] == pytest.approx(fused[e], abs=1e-4)
    with pytest.raises(ValueError, match="retriever_k must be an integer >= 1, got 0"):
        plain(item, retriever_k=0)


def test_mel_link_with_retriever_index(sample, tmp_path):
    from modeling_mel.cli_link import link_main

    model, processor = tiny_nsp(seed=1)
    model.config.retriever_k = 3
    model.config.retriever_score_weight = 2.0
    nsp_dir = str(tmp_path / "nsp")
    model.save_pretrained(nsp_dir)
    processor.save_pretrained(nsp_dir)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": "launch day at NASA", "mention": "NASA"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert link_main(["--model", nsp_dir, "--kb", sample["kb"], "--retriever", sample["index_dir"], "--input", str(inp),
                      "--output", str(out), "--top_k", "3", "--no_images"]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert len(record["predictions"]) == 3
    assert link_main(["--model", nsp_dir, "--kb", sample["kb"], "--retriever", sample["index_dir"], "--input", str(inp),
                      "--output", str(out), "--top_k", "50", "--no_images", "--retriever_k", "1"]) == 0
    narrow = json.loads(out.read_text().splitlines()[0])["predictions"]
    from modeling_mel.pfmel_training import load_retriever

    # exactly the dense top 1 and the closest name (top_k 50 would show any other candidate)
    top1 = load_retriever(sample["index_dir"]).retrieve_scored(["launch day at NASA"], ["NASA"], 1, extra=[["nasa"]])[0]
    assert {p["entity_id"] for p in narrow} == {e for e, _ in top1}
    assert link_main(["--model", nsp_dir, "--kb", sample["kb"], "--retriever", sample["index_dir"], "--input", str(inp),
                      "--output", str(out), "--retriever_k", "0"]) == 2  # named, refused before loading the model
    assert link_main(["--model", nsp_dir, "--kb", sample["kb"], "--retriever", str(tmp_path), "--input", str(inp),
                      "--output", str(out)]) == 2  # not an index directory: refused before loading the model
