"""PFMEL's candidate rule (user name contains the mention) and the candidate report."""

from __future__ import annotations

import pytest

from modeling_mel.candidates import NameRuleCandidates, candidate_report, name_contains_candidates

KB = [
    {"entity_id": "22wiggins", "name": "Andrew Wiggins", "screen_name": "22wiggins"},
    {"entity_id": "bradwiggins", "name": "Bradley Wiggins", "screen_name": "bradwiggins"},
    {"entity_id": "taylorswift13", "name": "Taylor Swift", "screen_name": "taylorswift13"},
    {"entity_id": "rogerfederer", "name": "Roger Federer", "screen_name": "rogerfederer"},
    {"entity_id": "nameless", "name": "", "screen_name": "nameless"},
]
NAMES = [e["name"] for e in KB]


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
    assert name_contains_candidates(mention, NAMES) == expected
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
    rep_idx = candidate_report(mentions, KB, lambda m: name_contains_candidates(m, NAMES))
    assert rep_idx == rep
    assert candidate_report([], KB, NameRuleCandidates(KB))["candidate_recall"] == 0.0
