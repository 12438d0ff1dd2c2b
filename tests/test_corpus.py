"""modeling_mel.corpus: the PFMEL split procedure (paper section 4.1) as a pure function; the corpus registry and
load_mel_corpus's errors; the helpers every builder shares (entity keys and names, timeline order, seeded hold-out)."""

from __future__ import annotations

import pytest

from modeling_mel.corpus import (
    DATASET_BUILDERS,
    _share,
    entity_display_name,
    get_builder_class,
    load_mel_corpus,
    normalize_entity_key,
    paper_split,
    seeded_holdout,
    sort_timeline,
    split_parts,
)


def _entities(n_groups: int = 30, seed_rows: int = 0) -> list[str]:
    # group g has (g % 7) + 1 mentions, rows interleaved
    rows = [f"e{g}" for g in range(n_groups) for _ in range(g % 7 + 1)]
    return rows[seed_rows:] + rows[:seed_rows]


def _split_of_rows(split: dict[str, list[int]]) -> dict[int, str]:
    out = {}
    for name in ("train", "dev", "test"):
        for i in split[name]:
            assert i not in out, f"row {i} in two of train/dev/test"
            out[i] = name
    return out


def test_partition_and_unique_part():
    ents = _entities()
    split = paper_split(ents, seed=0)
    assert list(split) == ["train", "train07", "train05", "dev", "test"]
    row_split = _split_of_rows(split)
    assert sorted(row_split) == list(range(len(ents)))  # train/dev/test partition the rows

    unique, rand = split_parts(ents, seed=0)
    assert len(unique) == 15 and len(rand) == 15 and not set(unique) & set(rand)
    # unique-part entities never cross splits; the unique groups are shared equally (5/5/5)
    per_split = {"train": 0, "dev": 0, "test": 0}
    for e in unique:
        splits = {row_split[i] for i, x in enumerate(ents) if x == e}
        assert len(splits) == 1, (e, splits)
        per_split[splits.pop()] += 1
    assert per_split == {"train": 5, "dev": 5, "test": 5}

    # random part: 10% / 80% / 10% of its rows
    rand_rows = [i for i, x in enumerate(ents) if x in set(rand)]
    n = len(rand_rows)
    counts = {s: sum(row_split[i] == s for i in rand_rows) for s in ("train", "dev", "test")}
    assert counts == {"train": _share(n, 0.1), "dev": n - 2 * _share(n, 0.1), "test": _share(n, 0.1)}


def test_reduced_train_sets():
    ents = _entities(40)
    split = paper_split(ents, seed=3)
    _, rand = split_parts(ents, seed=3)
    train_random = [i for i in split["train"] if ents[i] in set(rand)]
    train_unique = [i for i in split["train"] if ents[i] not in set(rand)]
    k = len(train_random)
    assert k > 0
    assert set(split["train05"]) <= set(split["train07"]) <= set(split["train"])
    assert len(split["train07"]) == len(split["train"]) - _share(k, 0.3)
    assert len(split["train05"]) == len(split["train"]) - _share(k, 0.5)
    # only random-part rows are dropped
    assert set(train_unique) <= set(split["train05"])


def test_seed_determinism():
    ents = _entities(25)
    assert paper_split(ents, seed=7) == paper_split(list(ents), seed=7)
    assert paper_split(ents, seed=0) != paper_split(ents, seed=1)
    assert split_parts(ents, 0) != split_parts(ents, 1)
    # the split depends on the entities, not on the order of first appearance of the groups
    assert split_parts(ents, 5) == split_parts(list(reversed(ents)), 5)


@pytest.mark.parametrize(
    "ents, expected",
    [
        ([], {"train": [], "train07": [], "train05": [], "dev": [], "test": []}),
        # one group: it is in the random part -> 10/80/10 of 1 row: the row goes to dev
        (["a"], {"train": [], "train07": [], "train05": [], "dev": [0], "test": []}),
    ],
)
def test_edge_cases(ents, expected):
    assert paper_split(ents, seed=0) == expected


def test_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        paper_split(["a", "b"], random_fractions=(0.5, 0.5, 0.5))


# -- registry and load_mel_corpus --------------------------------------------------------------------------------------


def test_every_registered_corpus_has_its_builder():
    assert set(DATASET_BUILDERS) == {"twitter_mel", "mel_jsonl", "zemeld", "wikimel", "richpedia_mel", "mimic_mel"}
    for name, class_name in DATASET_BUILDERS.items():
        cls = get_builder_class(name)
        assert cls.__name__ == class_name and cls.__module__ == f"modeling_mel.builders.{name}"


def test_load_mel_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown dataset 'nope'.*mel_jsonl.*twitter_mel"):
        load_mel_corpus("nope", str(tmp_path))
    with pytest.raises(ValueError, match=r"Unknown config 'bogus'.*\['mentions', 'kb'\]"):
        load_mel_corpus("twitter_mel", str(tmp_path), config="bogus")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_mel_corpus("twitter_mel", str(tmp_path / "missing"))


# -- shared helpers ----------------------------------------------------------------------------------------------------


def test_entity_display_name():
    assert entity_display_name({"entity_id": "a_w", "name": "Alice W", "screen_name": "a_w"}) == "Alice W"
    assert entity_display_name({"entity_id": "a_w", "name": "", "screen_name": "@a_w"}) == "@a_w"
    assert entity_display_name({"entity_id": "Q42", "name": " "}) == "Q42"


def test_entity_keys_and_timeline_order():
    assert normalize_entity_key("  @BradWiggins ") == normalize_entity_key("bradwiggins") == "bradwiggins"
    assert normalize_entity_key(None) == ""
    timeline = [{"tweet_id": "9"}, {"tweet_id": "100"}, {"tweet_id": "20"}]
    assert [t["tweet_id"] for t in sort_timeline(timeline)] == ["100", "20", "9"]  # numeric, most recent first
    mixed = [{"tweet_id": "9"}, {"tweet_id": "x1"}, {"tweet_id": "100"}]
    assert sort_timeline(mixed) == mixed  # a non-numeric id: the given order


def test_seeded_holdout_is_a_seeded_share_of_the_keys():
    keys = [f"Q{i}" for i in range(20)]
    held = seeded_holdout(keys, 0.25, seed=0)
    assert len(held) == 5 and held <= set(keys)
    assert seeded_holdout(reversed(keys), 0.25, seed=0) == held  # the input order does not matter
    assert seeded_holdout(keys + keys, 0.25, seed=0) == held  # nor duplicates
    assert any(seeded_holdout(keys, 0.25, seed=s) != held for s in (1, 2, 3))
    assert seeded_holdout(keys, 0.0) == set()
