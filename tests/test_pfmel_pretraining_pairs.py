"""PFMEL pre-training pairs: the next-sentence draw (seeded, half random, no input with both labels), the pairs of
each task (fields, counts, role swap) and the task names."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_mel.pfmel_pretraining_pairs import Sentence, check_tasks, draw_next_sentences, make_pretraining_pairs


def make_sentences(n: int, n_entities: int = 50) -> list[Sentence]:
    return [
        Sentence(f"m{i}", f"text {i}", 1 + 2 * i, f"e{i % n_entities}", f"context of e{i % n_entities}", 2 + 2 * i)
        for i in range(n)
    ]


def test_label_balance_near_half():
    pairs = make_pretraining_pairs(make_sentences(4000), tasks=["text"], swap_roles=False, seed=1)
    share = np.mean([p.label for p in pairs])
    assert abs(share - 0.5) < 0.03
    # label 0 = itself; label 1 = another sentence with another entity
    sents = make_sentences(4000)
    for p in pairs[:500]:
        if p.label == 0:
            assert p.next == p.sentence
        else:
            assert p.next != p.sentence and sents[p.next].entity_id != sents[p.sentence].entity_id


def test_draws_are_seeded_and_other_without_entity_rule():
    s = make_sentences(300, n_entities=300)
    assert draw_next_sentences(s, seed=3) == draw_next_sentences(s, seed=3)
    assert draw_next_sentences(s, seed=3) != draw_next_sentences(s, seed=4)
    for i, (j, label) in enumerate(draw_next_sentences(s, seed=0, negative_draw="paper")):
        assert (label == 1) == (j != i)
    with pytest.raises(ValueError, match="at least 2"):
        draw_next_sentences(s[:1])


def _multi_mentionmake_sentences(n_tweets: int = 120, n_entities: int = 30) -> list[Sentence]:
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
    sents = _multi_mentionmake_sentences()
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
        with caplog.at_level("INFO", logger="modeling_mel.pfmel_pretraining_pairs"):
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
    pairs = make_pretraining_pairs(make_sentences(n), tasks=tasks, swap_roles=swap)
    assert len(pairs) == n * per_sentence * (2 if swap else 1)
    formula = {"mixed": 2 * n, "text": n, "multi": n}
    for t in tasks:
        assert sum(p.task == t for p in pairs) == formula[t] * (2 if swap else 1)


def test_pairs_use_exactly_the_named_fields():
    sents = make_sentences(60)
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
    sents = make_sentences(40)
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
        make_pretraining_pairs(make_sentences(4), tasks=bad)


def test_check_tasks_aliases():
    assert check_tasks("mix,multimodal text") == ("mixed", "multi", "text")
