"""The PFMEL split procedure (paper section 4.1) as a pure function."""

from __future__ import annotations

import pytest

from modeling_mel.corpus import _share, paper_split, split_parts


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
