"""Listwise training of the NSP reranker: the list items (gold first, then the hardest candidates), their collation
into one pair batch with the list of each pair, and the retriever-score weight chosen on held-out mentions. The loss,
its length-sorted chunks, the sampler and fine-tuning end to end: tests/test_rerank.py."""

from __future__ import annotations

import pytest
import torch

from modeling_mel.pfmel_data import PFMELCollator, encode_pairs
from modeling_mel.pfmel_evaluation import predict_linking
from modeling_mel.pfmel_listwise import ListwiseCollator, calibrate_retriever_weight, listwise_groups, listwise_loss
from modeling_mel.pfmel_training import PFMELModelArguments, load_model_and_processor

from pfmel_fixtures import pfmel_corpus, tiny_backbone, toy_corpus  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def tiny(tiny_backbone):  # noqa: F811
    model, processor = load_model_and_processor(PFMELModelArguments(backbone=tiny_backbone, max_length=64), seed=2)
    return model.eval(), processor


def test_each_list_is_the_gold_then_the_first_candidates(pfmel_corpus, tiny):  # noqa: F811
    _, processor = tiny
    data = pfmel_corpus.linking_data("dev")
    data.mentions[0].gold_in_kb = False  # skipped: no gold pair
    data.mentions[1].candidates = [data.mentions[1].gold]  # skipped: no negative
    data.mentions[2].candidates = [c for c in data.mentions[2].candidates if c != data.mentions[2].gold][::-1]
    items = listwise_groups(data, list_size=3, processor=processor)
    kept = [m for m in data.mentions[2:] if any(c != m.gold for c in m.candidates)]
    assert len(items) == len(kept) > 0
    for item, m in zip(items, kept):
        entities = [m.gold] + [c for c in m.candidates if c != m.gold][:2]  # the gold even when not a candidate
        expected = encode_pairs(processor, [data.pair(m, e, 0 if j == 0 else 1) for j, e in enumerate(entities)])
        assert item["features"] == expected
        assert [f["labels"] for f in item["features"]] == [0] + [1] * (len(entities) - 1)


def test_collator_flattens_the_lists_and_marks_their_pairs(pfmel_corpus, tiny):  # noqa: F811
    _, processor = tiny
    items = listwise_groups(pfmel_corpus.linking_data("dev"), list_size=3, processor=processor)[:2]
    batch = ListwiseCollator(processor, pfmel_corpus.table)(items)
    sizes = [len(item["features"]) for item in items]
    assert batch["list_index"].tolist() == [i for i, n in enumerate(sizes) for _ in range(n)]
    assert "labels" not in batch and "task_ids" not in batch  # the gold is each list's first pair
    flat = PFMELCollator(processor, pfmel_corpus.table)([f for item in items for f in item["features"]])
    assert torch.equal(batch["input_ids"], flat["input_ids"])
    assert torch.equal(batch["image_features"], flat["image_features"])
    # two lists: [2, 0] and [1, 3]; the gold first gets a lower loss when it scores higher
    scores = torch.tensor([2.0, 0.0, 1.0, 3.0])
    assert float(listwise_loss(scores, torch.tensor([0, 0, 1, 1]))) == pytest.approx(
        float((torch.logsumexp(torch.tensor([2.0, 0.0]), 0) - 2 + torch.logsumexp(torch.tensor([1.0, 3.0]), 0) - 1) / 2))


def test_calibration_chooses_the_smallest_weight_with_the_best_accuracy(pfmel_corpus, tiny):  # noqa: F811
    model, processor = tiny
    data = pfmel_corpus.linking_data("dev")
    for m in data.mentions:  # a retriever that scores the gold 1 and every other candidate 0
        m.retriever_scores = {c: float(c == m.gold) for c in m.candidates}
    plain = predict_linking(model, processor, data, retriever_weight=0.0)
    grid = (0.0, 0.5, 1.0, 8.0, 64.0)
    weight, table = calibrate_retriever_weight(model, processor, data, grid=grid, batch_size=8)
    assert list(table) == [str(w) for w in grid]
    assert table["0.0"] == round(sum(p.predicted == p.gold for p in plain) / len(plain), 4)  # the NSP score alone
    accuracies = [table[str(w)] for w in grid]
    assert accuracies == sorted(accuracies) and accuracies[-1] == 1.0  # a larger bonus for the gold never hurts
    assert weight == min(w for w in grid if table[str(w)] == 1.0)
    # a retriever that prefers a wrong candidate: the best weight is 0 (ties go to the smaller weight)
    for m in data.mentions:
        m.retriever_scores = {c: float(c != m.gold) for c in m.candidates}
    weight, table = calibrate_retriever_weight(model, processor, data, grid=grid, batch_size=8)
    alone = sum(set(m.candidates) == {m.gold} for m in data.mentions) / len(data.mentions)  # the gold is right anyway
    assert weight == 0.0 and table["64.0"] == round(alone, 4) <= table["0.0"]
