"""The dense linker (modeling_mel/linking_dense.py): the one owner of ZEMEL ranking (issue 26). Exhaustive and index
top-k, float32 rescoring, the tie rule, extra candidates, batching that changes nothing, and the single place of
the dense score call in the package."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from inference_fixtures import KB_ROWS, tiny_zemel
from modeling_mel.linking_dense import DenseLinker, row_span, row_text
from modeling_mel.ranking import rank_by_score

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "modeling_mel")

TEXTS = ["hand hearts taylor's version, love the new album", "Justin on stage tonight", "launch day at NASA",
         "I love new york city in winter and its parks", "learning swift today"]
SPANS = ["taylor", "Justin", (14, 18), "new york city", "swift"]


@pytest.fixture(scope="module")
def model_and_vectors():
    model, processor = tiny_zemel()
    enc = processor.encode_candidates([r["name"] for r in KB_ROWS], [r["description"] for r in KB_ROWS])
    with torch.inference_mode():
        vectors = model.encode_candidates(**enc).float()
    return model, processor, vectors


def brute_force(model, processor, vectors, texts, spans):
    """Every entity scored in float32 by the model, sorted by (-score, position): what the linker must return."""
    with torch.inference_mode():
        ctx = model.encode_context(**processor.encode_contexts(texts, spans))
        scores = model.score(ctx, vectors)
    return [rank_by_score(range(len(vectors)), row) for row in scores]


def test_exhaustive_link_equals_brute_force(model_and_vectors):
    model, processor, vectors = model_and_vectors
    linker = DenseLinker(model, processor, vectors)
    got = linker.link(TEXTS, SPANS, k=3)
    want = brute_force(model, processor, vectors, TEXTS, SPANS)
    assert [[p for p, _ in row] for row in got] == [[p for p, _ in row[:3]] for row in want]
    for g, w in zip(got, want):
        assert [s for _, s in g] == pytest.approx([s for _, s in w[:3]], abs=1e-5)


def test_batching_and_order_change_nothing(model_and_vectors):
    model, processor, vectors = model_and_vectors
    linker = DenseLinker(model, processor, vectors)
    one = linker.link(TEXTS, SPANS, k=4, batch_size=1)
    many = linker.link(TEXTS, SPANS, k=4, batch_size=64)
    assert [[p for p, _ in r] for r in one] == [[p for p, _ in r] for r in many]
    reversed_ = linker.link(TEXTS[::-1], SPANS[::-1], k=4)[::-1]  # results come back in input order
    assert [[p for p, _ in r] for r in reversed_] == [[p for p, _ in r] for r in many]
    # length-sorted batches, every index once
    seen = [i for idx, _ in linker.encode_batches(TEXTS, SPANS, batch_size=2) for i in idx]
    assert sorted(seen) == list(range(len(TEXTS))) and [len(TEXTS[i]) for i in seen] == sorted(map(len, TEXTS))


def test_ties_go_to_the_earlier_kb_position(model_and_vectors):
    model, processor, vectors = model_and_vectors
    doubled = torch.cat([vectors, vectors])  # entity p and p + N score exactly alike
    n = len(vectors)
    ranked = DenseLinker(model, processor, doubled).link(TEXTS[:2], SPANS[:2], k=2 * n)
    for row in ranked:
        positions = [p for p, _ in row]
        for p in range(n):
            assert positions.index(p) + 1 == positions.index(p + n)  # the copy right after, never before


def test_extra_candidates_join_the_dense_top_k(model_and_vectors):
    model, processor, vectors = model_and_vectors
    linker = DenseLinker(model, processor, vectors)
    dense = linker.link(TEXTS[:1], SPANS[:1], k=2)[0]
    worst = brute_force(model, processor, vectors, TEXTS[:1], SPANS[:1])[0][-1][0]
    merged = linker.link(TEXTS[:1], SPANS[:1], k=2, extra=[[worst, dense[0][0]]])[0]
    # the dense top 2 plus the extra worst entity, scored by the model, best first
    assert [p for p, _ in merged] == [p for p, _ in dense] + [worst]
    with pytest.raises(ValueError, match="1 candidate lists for 2 texts"):
        linker.link(TEXTS[:2], SPANS[:2], k=2, extra=[[0]])


class ExactSearcher:
    """An index's interface over the same vectors: inner-product top-k per query vector."""

    def __init__(self, vectors: torch.Tensor):
        self.vectors = vectors.numpy()

    def search(self, queries: np.ndarray, k: int):
        scores = queries @ self.vectors.T
        idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, idx, 1), idx


def test_index_search_rescored_equals_exhaustive_at_full_depth(model_and_vectors):
    # above the exhaustive threshold each poly code searches the index and the union is rescored: asking for the
    # whole KB, the union is every entity and the ranking is the exhaustive one
    model, processor, vectors = model_and_vectors
    n = len(vectors)
    exact = DenseLinker(model, processor, vectors).link(TEXTS, SPANS, k=n)
    indexed = DenseLinker(model, processor, vectors, searcher=ExactSearcher(vectors), exact_threshold=0)
    assert indexed.link(TEXTS, SPANS, k=n) == exact
    # at depth 1 the index candidates are the union of each code's best entity, rescored: the top is one of them
    top = indexed.link(TEXTS, SPANS, k=1)
    assert all(len(row) == 1 for row in top)


def test_bf16_selection_keeps_float32_scores(model_and_vectors):
    model, processor, vectors = model_and_vectors
    fp32 = DenseLinker(model, processor, vectors).link(TEXTS, SPANS, k=len(vectors))
    bf16 = DenseLinker(model, processor, vectors, bf16=True).link(TEXTS, SPANS, k=len(vectors))
    assert all(isinstance(s, float) for row in bf16 for _, s in row)
    for a, b in zip(fp32, bf16):  # same candidates; scores within bf16 encoding error
        assert sorted(p for p, _ in a) == sorted(p for p, _ in b)
        assert dict(a) == pytest.approx(dict(b), abs=0.1)


def test_gold_ranks_count_strictly_better_entities(model_and_vectors):
    model, processor, vectors = model_and_vectors
    linker = DenseLinker(model, processor, vectors)
    want = brute_force(model, processor, vectors, TEXTS, SPANS)
    context = linker.encode(TEXTS, SPANS)
    gold = [row[2][0] for row in want]  # the third best of each
    assert linker.gold_ranks(context, gold) == [3] * len(TEXTS)


def test_rows_read_text_and_span():
    assert row_text({"text": "a b"}) == "a b"
    with pytest.raises(ValueError, match="needs a 'text' string; this one has keys \\['caption'"):
        row_text({"caption": "a b", "mention": "a"})
    assert row_span({"mention": "a", "mention_start": 0, "mention_end": 1}) == (0, 1)
    assert row_span({"mention": "a", "mention_start": None}) == "a"


def test_no_vectors_is_a_clear_error(model_and_vectors):
    model, processor, _ = model_and_vectors
    with pytest.raises(ValueError, match="needs candidate vectors"):
        DenseLinker(model, processor, None).link(TEXTS[:1], SPANS[:1], k=1)


def _files_matching(pattern: str) -> set[str]:
    found = set()
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    if re.search(pattern, f.read()):
                        found.add(os.path.relpath(os.path.join(root, name), PACKAGE))
    return found


def test_one_module_calls_the_dense_score():
    # issue 26: the dense score call (model.score / model.link over KB vectors) lives in the dense linker only,
    # besides the model file that defines it
    assert _files_matching(r"\bmodel\.(score|link)\(") - {"modeling_zemel.py"} == {"linking_dense.py"}

