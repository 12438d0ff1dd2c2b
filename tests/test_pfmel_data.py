"""PFMEL pre-training pairs, linking examples and the corpus view (toy corpus, tiny image model)."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_mel.pfmel_data import (
    TASK_IDS,
    FeatureTable,
    PFMELCollator,
    PFMELCorpus,
    Sentence,
    check_tasks,
    draw_next_sentences,
    encode_pairs,
    load_precomputed_features,
    make_pretraining_pairs,
    save_precomputed_features,
)
from modeling_mel.processing_multimodal_nsp import entity_context, entity_prompt, generic_entity_prompt, mention_prompt

from pfmel_fixtures import make_toy_corpus, pfmel_corpus, tiny_extractor, toy_corpus  # noqa: F401


def _sentences(n: int, n_entities: int = 50) -> list[Sentence]:
    return [
        Sentence(f"m{i}", f"text {i}", 1 + 2 * i, f"e{i % n_entities}", f"context of e{i % n_entities}", 2 + 2 * i)
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def processor():
    from modeling_mel.backbones import load_tokenizer
    from modeling_mel.processing_multimodal_nsp import MultimodalNSPProcessor

    return MultimodalNSPProcessor(load_tokenizer("minilm"), max_length=64)


def test_label_balance_near_half():
    pairs = make_pretraining_pairs(_sentences(4000), tasks=["text"], swap_roles=False, seed=1)
    share = np.mean([p.label for p in pairs])
    assert abs(share - 0.5) < 0.03
    # label 0 = itself; label 1 = another sentence with another entity
    sents = _sentences(4000)
    for p in pairs[:500]:
        if p.label == 0:
            assert p.next == p.sentence
        else:
            assert p.next != p.sentence and sents[p.next].entity_id != sents[p.sentence].entity_id


def test_draws_are_seeded_and_other_without_entity_rule():
    s = _sentences(300, n_entities=300)
    assert draw_next_sentences(s, seed=3) == draw_next_sentences(s, seed=3)
    assert draw_next_sentences(s, seed=3) != draw_next_sentences(s, seed=4)
    for i, (j, label) in enumerate(draw_next_sentences(s, seed=0, negative_draw="paper")):
        assert (label == 1) == (j != i)
    with pytest.raises(ValueError, match="at least 2"):
        draw_next_sentences(s[:1])


def _multi_mention_sentences(n_tweets: int = 120, n_entities: int = 30) -> list[Sentence]:
    """Tweets with 1-3 mentions each: the sentences of one tweet share its text and image row."""
    rng = np.random.default_rng(0)
    out = []
    for t in range(n_tweets):
        golds = rng.choice(n_entities, size=1 + t % 3, replace=False)
        for g in golds:
            out.append(Sentence(f"t{t}-{g}", f"tweet {t}", 1 + t, f"e{g}", f"context of e{g}", 1000 + int(g)))
    return out


def _contradictions(pairs) -> set:
    labels: dict = {}
    for p in pairs:
        labels.setdefault((p.text_a, p.images_a, p.text_b, p.images_b), set()).add(p.label)
    return {k for k, v in labels.items() if len(v) > 1}


def test_distinct_draw_never_gives_one_input_both_labels():
    # issue 13 point 3: a tweet with two mentions drawn as its own "random" next sentence made the pair
    # (tweet, entity 2) label 1 beside the same pair label 0 from the tweet's other sentence
    sents = _multi_mention_sentences()
    for seed in range(3):
        pairs = make_pretraining_pairs(sents, swap_roles=True, seed=seed)  # default draw, every task
        assert _contradictions(pairs) == set()
        share = np.mean([p.label for p in pairs if p.task == "text" and not p.swapped])
        assert 0.4 < share < 0.6  # still the paper's 50% random next sentences
        for p in pairs:
            if p.label == 1:
                a, b = sents[p.sentence], sents[p.next]
                assert a.text != b.text and a.entity_id != b.entity_id
    # the paper's plain draw on the same corpus does produce contradictions: the option is the paper's text
    assert _contradictions(make_pretraining_pairs(sents, swap_roles=True, seed=0, negative_draw="paper"))
    with pytest.raises(ValueError, match="negative_draw 'nope'.*distinct"):
        make_pretraining_pairs(sents, negative_draw="nope")


def test_mixed_pairs_whose_image_side_has_no_image_are_not_built(caplog):
    # issue 30 point 5: 6 tweets x 2 mentions, tweet 0 without an image (row 0); entity 5 without timeline images.
    # A mixed pair (entity context, [no image]) carries nothing of its tweet, and was built with both labels.
    sents = []
    for t in range(6):
        for g in (t, (t + 1) % 6):
            sents.append(Sentence(f"t{t}-{g}", f"tweet {t}", 0 if t == 0 else 1 + t, f"e{g}", f"context of e{g}",
                                  0 if g == 5 else 100 + g))
    for seed in range(60):
        with caplog.at_level("INFO", logger="modeling_mel.pfmel_data"):
            pairs = make_pretraining_pairs(sents, swap_roles=True, seed=seed)
        assert _contradictions(pairs) == set()
        mixed = [p for p in pairs if p.task == "mixed"]
        assert all(p.text_b is None and all(p.images_b) for p in mixed)  # every image side has an image
        skipped = 2 * 2 * len(sents) - len(mixed)  # mixed: 2 a sentence, x2 with the swapped roles
        assert skipped > 0
        assert f"{skipped} mixed-modal pairs skipped (reason: the image side has no image)" in caplog.text
        caplog.clear()


def test_distinct_draw_keeps_label_0_when_no_other_tweet_exists(caplog):
    sents = [Sentence("a", "one tweet", 1, "e1", "c1", 5), Sentence("b", "one tweet", 1, "e2", "c2", 6)]
    with caplog.at_level("WARNING"):
        draws = draw_next_sentences(sents, seed=4)  # seed 4: the first sentence draws "random"
    assert draws == [(0, 0), (1, 0)]  # the only other sentence is the same tweet: no random pair possible
    assert "no distinct random next sentence" in caplog.text


@pytest.mark.parametrize(
    "tasks, per_sentence",
    [(["mixed"], 2), (["text"], 1), (["multi"], 1), (["mixed", "text"], 3), (["mixed", "text", "multi"], 4)],
)
@pytest.mark.parametrize("swap", [False, True])
def test_pair_counts(tasks, per_sentence, swap):
    n = 37
    pairs = make_pretraining_pairs(_sentences(n), tasks=tasks, swap_roles=swap)
    assert len(pairs) == n * per_sentence * (2 if swap else 1)
    formula = {"mixed": 2 * n, "text": n, "multi": n}
    for t in tasks:
        assert sum(p.task == t for p in pairs) == formula[t] * (2 if swap else 1)


def test_pairs_use_exactly_the_named_fields():
    sents = _sentences(60)
    pairs = make_pretraining_pairs(sents, swap_roles=False, seed=0)
    seen = set()
    for p in pairs:
        s, n = sents[p.sentence], sents[p.next]
        if p.task == "mixed":
            assert (p.text_a, p.images_a, p.text_b, p.images_b) in {
                (s.text, (), None, (n.entity_image,)),  # text | entity image of next
                (s.entity_context, (), None, (n.image,)),  # entity context | image of next
            }
            seen.add(("mixed", p.text_a == s.text))
        elif p.task == "text":
            assert (p.text_a, p.images_a, p.text_b, p.images_b) == (s.text, (), n.entity_context, ())
        elif p.task == "multi":
            assert (p.text_a, p.images_a, p.text_b, p.images_b) == (s.text, (s.image,), n.entity_context, (n.entity_image,))
        seen.add(p.task)
    assert {"mixed", "text", "multi", ("mixed", True), ("mixed", False)} <= seen


def test_role_swap_is_the_exact_exchange():
    sents = _sentences(40)
    plain = make_pretraining_pairs(sents, swap_roles=False, seed=5)
    both = make_pretraining_pairs(sents, swap_roles=True, seed=5)
    orig = [p for p in both if not p.swapped]
    swapped = [p for p in both if p.swapped]
    assert [(p.text_a, p.images_a, p.text_b, p.images_b, p.label) for p in orig] == [
        (p.text_a, p.images_a, p.text_b, p.images_b, p.label) for p in plain
    ]
    # every original (s, n) has its (n, s) twin with the same label, built by the same task rule
    assert len(swapped) == len(orig)
    for o, w in zip(orig, swapped):
        assert (w.sentence, w.next, w.label, w.task) == (o.next, o.sentence, o.label, o.task)
    for w in swapped:
        s, n = sents[w.sentence], sents[w.next]
        if w.task == "text":
            assert (w.text_a, w.text_b) == (s.text, n.entity_context)


@pytest.mark.parametrize("bad", ["mixd", ["text", "vision"], []])
def test_unknown_task_names_it(bad):
    with pytest.raises(ValueError, match="task"):
        check_tasks(bad)
    with pytest.raises(ValueError, match="valid tasks|no pre-training task"):
        make_pretraining_pairs(_sentences(4), tasks=bad)


def test_check_tasks_aliases():
    assert check_tasks("mix,multimodal text") == ("mixed", "multi", "text")


def test_encode_and_collate(processor):
    sents = _sentences(6)
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


def test_precomputed_features_roundtrip(tmp_path, toy_corpus):
    mentions, kb = toy_corpus
    m = {mid: np.random.RandomState(0).rand(16).astype(np.float32) for mid in mentions["train"]["id"]}
    e = {r["entity_id"]: np.ones(16, np.float32) for r in kb}
    for suffix in ("safetensors", "npz"):
        path = str(tmp_path / f"f.{suffix}")
        save_precomputed_features(path, m, e)
        assert set(load_precomputed_features(path)) == {f"mention:{k}" for k in m} | {f"entity:{k}" for k in e}
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
