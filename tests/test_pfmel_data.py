"""PFMEL linking examples, the encoding and collation of NSP pairs, and the corpus view (toy corpus, tiny image
model). The pre-training pairs: tests/test_pfmel_pretraining_pairs.py; the feature table: tests/test_pfmel_features.py."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_mel.pfmel_data import (
    TASK_IDS,
    FeatureTable,
    PFMELCollator,
    PFMELCorpus,
    encode_pairs,
    make_pretraining_pairs,
    save_precomputed_features,
)
from modeling_mel.processing_multimodal_nsp import entity_context, entity_prompt, generic_entity_prompt, mention_prompt

from pfmel_fixtures import make_toy_corpus, pfmel_corpus, tiny_extractor, toy_corpus  # noqa: F401
from test_pfmel_pretraining_pairs import make_sentences


@pytest.fixture(scope="module")
def processor():
    from modeling_mel.backbones import load_tokenizer
    from modeling_mel.processing_multimodal_nsp import MultimodalNSPProcessor

    return MultimodalNSPProcessor(load_tokenizer("minilm"), max_length=64)


def test_encode_and_collate(processor):
    sents = make_sentences(6)
    pairs = make_pretraining_pairs(sents, swap_roles=False)
    feats = encode_pairs(processor, pairs)
    for f, p in zip(feats, pairs):
        n_tokens = sum(t == processor.image_placeholder_id for t in f["input_ids"])
        assert n_tokens == len(f["image_rows"]) == len(p.images_a) + len(p.images_b)
        assert f["task_ids"] == TASK_IDS[p.task] and f["labels"] == p.label
    table = FeatureTable(2048)
    for k in range(1, 20):
        table.add(f"k{k}", np.full(2048, k, np.float32))
    multi = next(i for i, p in enumerate(pairs) if p.task == "multi")
    text = next(i for i, p in enumerate(pairs) if p.task == "text")
    batch = PFMELCollator(processor, table)([feats[0], feats[multi], feats[text]])
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape[1] % 8 == 0
    assert batch["image_features"].shape[:2] == (3, 2)
    # mixed pair 0: the image of B is the entity image of the next sentence (row -> value == row here)
    assert float(batch["image_features"][0, 0, 0]) == pairs[0].images_b[0]
    assert [float(v) for v in batch["image_features"][1, :, 0]] == [pairs[multi].images_a[0], pairs[multi].images_b[0]]
    assert float(batch["image_features"][2].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="text-only"):
        encode_pairs(processor, pairs, use_images=False)


def test_corpus_sentences_and_entity_images(toy_corpus):
    mentions, kb = toy_corpus
    ext = tiny_extractor()
    corpus = PFMELCorpus(mentions, kb, extractor=ext, feature_norm="none")
    sents = corpus.sentences("train")
    assert len(sents) == len(mentions["train"])
    row = next(r for r in kb if r["entity_id"] == sents[0].entity_id)
    assert sents[0].entity_context == entity_context(row, row["timeline"])
    assert sents[0].text == mentions["train"][0]["text"]
    # entity image = mean of the timeline image features; tweet image = its own feature
    expected = ext.encode([t["image"] for t in row["timeline"]]).mean(0)
    np.testing.assert_allclose(corpus.table.array[sents[0].entity_image], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(corpus.table.array[sents[0].image], ext.encode([mentions["train"][0]["image"]])[0], rtol=1e-4, atol=1e-6)
    l2 = PFMELCorpus(mentions, kb, extractor=ext, feature_norm="l2")  # unit vectors reach the model
    s = l2.sentences("train")[0]
    assert abs(np.linalg.norm(l2.table.normalized([s.image])[0]) - 1) < 1e-5
    np.testing.assert_allclose(l2.table.normalized([s.entity_image])[0], expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-6)
    l2.table.center = l2.table.nonzero_mean()  # center_l2: centred, then unit norm; missing images stay zero
    centred = l2.table.array[s.image] - l2.table.center
    np.testing.assert_allclose(l2.table.normalized([s.image])[0], centred / np.linalg.norm(centred), rtol=1e-4, atol=1e-6)
    assert not l2.table.normalized([0]).any()


def test_linking_data(pfmel_corpus, toy_corpus):
    mentions, kb = toy_corpus
    data = pfmel_corpus.linking_data("dev")
    names = {r["entity_id"]: r["name"] for r in kb}
    for m, row in zip(data.mentions, mentions["dev"]):
        assert m.prompt == mention_prompt(row["text"], row["mention"])
        assert m.candidates == [e for e in names if row["mention"].lower() in names[e].lower()]
        assert m.gold in m.candidates
    m = data.mentions[0]
    kb_row = next(r for r in kb if r["entity_id"] == m.gold)
    assert data.entity_text[m.gold] == entity_prompt(kb_row["screen_name"], entity_context(kb_row, kb_row["timeline"]))
    pairs = data.training_pairs(num_negatives=1, seed=0)
    assert sum(p.label == 0 for p in pairs) == len(data.mentions)
    assert len(pairs) == sum(1 + min(1, len(x.candidates) - 1) for x in data.mentions)
    assert all(p.images_a and p.images_b for p in pairs)
    assert data.candidate_recall() == 1.0


def test_generic_kb_uses_generic_prompt(toy_corpus):
    from datasets import Dataset

    mentions, kb = toy_corpus
    rows = [{"entity_id": r["entity_id"], "name": r["name"], "screen_name": "", "location": "", "description": r["description"],
             "images": [], "timeline": []} for r in kb]
    corpus = PFMELCorpus(mentions, Dataset.from_list(rows), image_features="none")
    data = corpus.linking_data("test")
    gold = data.mentions[0].gold
    name = next(r["name"] for r in rows if r["entity_id"] == gold)
    assert data.entity_text[gold] == generic_entity_prompt(name, next(r["description"] for r in rows if r["entity_id"] == gold))
    assert all(not p.images_a for p in data.training_pairs())


def test_missing_split_and_empty_dataset(pfmel_corpus, toy_corpus):
    mentions, kb = toy_corpus
    with pytest.raises(ValueError, match="'nope' does not exist.*available splits"):
        pfmel_corpus.split("nope")
    empty = mentions.map(lambda e: {"entity_id": ""})
    corpus = PFMELCorpus(empty, kb, image_features="none")
    with pytest.raises(ValueError, match="no linked mentions"):
        corpus.sentences("train")
    with pytest.raises(ValueError, match="unknown image_features 'clip'"):
        PFMELCorpus(mentions, kb, image_features="clip")


def test_corpus_reads_precomputed_features(tmp_path, toy_corpus):
    mentions, kb = toy_corpus
    m = {mid: np.random.RandomState(0).rand(16).astype(np.float32) for mid in mentions["train"]["id"]}
    e = {r["entity_id"]: np.ones(16, np.float32) for r in kb}
    for suffix in ("safetensors", "npz"):
        path = str(tmp_path / f"f.{suffix}")
        save_precomputed_features(path, m, e)
        corpus = PFMELCorpus(mentions, kb, image_features="precomputed", features_path=path, feature_norm="none")
        s = corpus.sentences("train")[0]
        np.testing.assert_allclose(corpus.table.array[s.image], m[s.mention_id])
        assert corpus.table.dim == 16
    with pytest.raises(ValueError, match="does not exist"):
        PFMELCorpus(mentions, kb, image_features="precomputed", features_path=str(tmp_path / "nope.npz"))


def test_candidate_cap_keeps_the_closest_names_not_the_kb_order(caplog):
    # issue 13 point 4: 40 entities contain "paris"; the gold (exact name) is the 40th of the KB. The old cap at 32
    # in KB order always lost it; ordered by closeness of name it is the first candidate.
    from datasets import Dataset, DatasetDict

    kb = Dataset.from_list(
        [{"entity_id": f"E{i}", "name": f"Paris Hilton Hotel number {i:02d}", "description": "a hotel"} for i in range(39)]
        + [{"entity_id": "E39", "name": "Paris", "description": "capital of France"},
           {"entity_id": "E40", "name": "Paris Texas", "description": "a film"}]
    )
    mentions = DatasetDict({"dev": Dataset.from_list([
        {"id": "m0", "text": "We moved to Paris last year", "mention": "Paris", "entity_id": "E39", "image": None},
        {"id": "m1", "text": "Saw Paris Texas again", "mention": "Paris Texas", "entity_id": "E40", "image": None},
        {"id": "m2", "text": "Booked paris hilton hotel number 38", "mention": "Paris", "entity_id": "E38", "image": None},
    ])})
    corpus = PFMELCorpus(mentions, kb, image_features="none", max_candidates=32)
    assert corpus.candidates("Paris")[:2] == ["E39", "E40"]  # exact name, then the shortest containing name
    assert len(corpus.candidates("Paris")) == 32
    with caplog.at_level("INFO", logger="modeling_mel.pfmel_data"):
        data = corpus.linking_data("dev")
    assert [m.gold in m.candidates for m in data.mentions] == [True, True, False]  # E38: longest name, cut
    assert data.candidate_recall(before_cap=True) == 1.0
    assert data.candidate_recall() == pytest.approx(2 / 3)
    assert "recall 1.0000 before the cap of 32" in caplog.text and "(1 gold entities cut)" in caplog.text
