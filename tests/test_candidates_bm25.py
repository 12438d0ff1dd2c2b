"""Bm25RuleCandidates: the three rules, the deterministic merge, recall@k, speed on 100k names."""

from __future__ import annotations

import random

import pytest

from modeling_mel.candidates import Bm25RuleCandidates

IDS = ["e1", "e2", "e3", "e4", "e5", "e6"]
NAMES = ["New York City", "NYC", "York", "Paris Hilton", "The City of Paris", "Berlin"]


@pytest.fixture(scope="module")
def gen():
    return Bm25RuleCandidates(IDS, NAMES)


def test_rules(gen):
    pos = {e: i for i, e in enumerate(IDS)}
    # rule 1 (shared word "york") + rule 2 (name "York" contained in the mention; mention contained in nothing)
    hits = gen.rule_hits("New York City")
    assert hits[pos["e1"]] == 2  # shared words + containment (equal names contain each other)
    assert hits[pos["e3"]] == 2  # "york": shared word + contained in the mention
    assert hits[pos["e2"]] == 1  # initials "nyc" == name "NYC" (rule 3)
    assert pos["e6"] not in hits
    # rule 2 the other way: the name contains the mention
    assert gen.rule_hits("paris hilton")[pos["e4"]] == 2
    # stopwords are not shared words
    assert pos["e5"] not in gen.rule_hits("the")


def test_initials_rule_direction():
    g = Bm25RuleCandidates(["a", "b"], ["NYC", "New York City"])
    assert g("New York City", 5)[:2] == ["b", "a"] and "a" in g("New York City", 5)
    assert g("nyc", 5) == ["a"]  # the paper's rule: initials of the mention == the name (not the reverse)
    g2 = Bm25RuleCandidates(["a", "b"], ["NYC", "New York City"], symmetric_initials=True)
    assert set(g2("nyc", 5)) == {"a", "b"}


def test_merge_order_is_deterministic(gen):
    scored = gen.scored("New York City", 10)
    keys = [(-r, -s) for _, r, s in scored]
    assert keys == sorted(keys)
    assert [e for e, _, _ in scored][:1] == ["e1"]
    assert gen("New York City", 2) == [e for e, _, _ in scored][:2]
    assert gen("zzz unknown", 5) == []
    assert gen.retrieve(["Berlin", "york"], 1) == [["e6"], ["e3"]]
    with pytest.raises(ValueError, match="k must be >= 1"):
        gen("york", 0)


def test_recall_at_k(gen):
    report = gen.recall_at_k(["York", "Berlin", "nyc", "hilton"], ["e1", "e6", "e2", "e5"], k=(1, 5))
    assert report["recall@1"] == pytest.approx(2 / 4)  # Berlin, nyc
    assert report["recall@5"] == pytest.approx(3 / 4)  # + York -> e1; hilton never reaches e5
    assert report["n"] == 4


def test_100k_names_each_name_finds_its_entity():
    """A 100k-entity KB: every name retrieves its own entity in the top 100 (speed is benchmarks/' job, not a test's)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 7))) for _ in range(20000)]
    names = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(100_000)]
    g = Bm25RuleCandidates([str(i) for i in range(len(names))], names)
    out = g.retrieve(names[:200], 100)
    assert all(str(i) in c[:100] for i, c in enumerate(out))
    assert all(len(c) <= 100 for c in out)
