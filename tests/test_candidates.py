"""The text candidate sources of modeling_mel.candidates: PFMEL's name rule (user name contains the mention) and
the candidate report; ZEMEL's Bm25RuleCandidates (the three rules, the deterministic merge, recall@k, 100k names)."""

from __future__ import annotations

import random

import pytest

from modeling_mel.candidates import Bm25RuleCandidates, NameRuleCandidates, candidate_report, name_contains_candidates

# -- PFMEL's name rule -------------------------------------------------------------------------------------------------

KB = [
    {"entity_id": "22wiggins", "name": "Andrew Wiggins", "screen_name": "22wiggins"},
    {"entity_id": "bradwiggins", "name": "Bradley Wiggins", "screen_name": "bradwiggins"},
    {"entity_id": "taylorswift13", "name": "Taylor Swift", "screen_name": "taylorswift13"},
    {"entity_id": "rogerfederer", "name": "Roger Federer", "screen_name": "rogerfederer"},
    {"entity_id": "nameless", "name": "", "screen_name": "nameless"},
]
KB_NAMES = [e["name"] for e in KB]


@pytest.mark.parametrize(
    "mention, expected",
    [
        ("wiggins", [0, 1]),
        ("WIGGINS", [0, 1]),
        ("  Andrew Wiggins ", [0]),
        ("an", [0]),  # substring, not word: "ANdrew"; "BradLEY"/"Swift" have no "an"
        ("er", [3]),  # "Roger Federer"; "Andrew" has "re", not "er"
        ("taylor swift", [2]),
        ("swiftie", []),
        ("", []),
        ("nameless", []),  # PFMEL matches the user name only
    ],
)
def test_name_contains(mention, expected):
    assert name_contains_candidates(mention, KB_NAMES) == expected
    rule = NameRuleCandidates(KB)
    assert rule.indices(mention) == expected
    assert rule(mention) == [KB[i]["entity_id"] for i in expected]


def test_rule_fields_and_inputs():
    rule = NameRuleCandidates(KB, fields=("name", "screen_name"))
    assert rule("nameless") == ["nameless"]
    assert rule("wiggins") == ["22wiggins", "bradwiggins"]  # one entity once even if both fields match
    as_map = NameRuleCandidates({e["entity_id"]: e["name"] for e in KB})
    assert as_map("federer") == ["rogerfederer"]
    assert len(as_map) == 5
    # cache returns copies
    r = NameRuleCandidates(KB)
    r.indices("wiggins").append(99)
    assert r.indices("wiggins") == [0, 1]


def test_rule_on_dataset_and_many_entities():
    import datasets

    ds = datasets.Dataset.from_list(KB)
    assert NameRuleCandidates(ds)("wiggins") == ["22wiggins", "bradwiggins"]
    names = [f"user {i} smith" if i % 1000 == 0 else f"user {i}" for i in range(20_000)]
    big = NameRuleCandidates({str(i): n for i, n in enumerate(names)})
    assert big.indices("smith") == list(range(0, 20_000, 1000))
    assert big.indices("user 1999") == [1999, *range(19990, 20_000)]
    assert big.indices("user 1999") == name_contains_candidates("user 1999", names)


def test_candidate_report_hand_computed():
    mentions = [
        {"mention": "wiggins", "entity_id": "22wiggins"},  # 2 candidates, hit
        {"mention": "Wiggins", "entity_id": "@BradWiggins"},  # 2 candidates, hit (case, @ ignored)
        {"mention": "taylor", "entity_id": "someone_else"},  # 1 candidate, miss
        {"mention": "messi", "entity_id": "leomessi"},  # 0 candidates, miss
    ]
    rep = candidate_report(mentions, KB, NameRuleCandidates(KB))
    assert rep == {"candidate_recall": 0.5, "mean_candidates": 1.25, "empty": 1, "n_mentions": 4}
    # a generator returning KB row indices gives the same report
    rep_idx = candidate_report(mentions, KB, lambda m: name_contains_candidates(m, KB_NAMES))
    assert rep_idx == rep
    assert candidate_report([], KB, NameRuleCandidates(KB))["candidate_recall"] == 0.0


# -- ZEMEL's BM25 + rules ----------------------------------------------------------------------------------------------

BM25_IDS = ["e1", "e2", "e3", "e4", "e5", "e6"]
BM25_NAMES = ["New York City", "NYC", "York", "Paris Hilton", "The City of Paris", "Berlin"]


@pytest.fixture(scope="module")
def gen():
    return Bm25RuleCandidates(BM25_IDS, BM25_NAMES)


def test_rules(gen):
    pos = {e: i for i, e in enumerate(BM25_IDS)}
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
