"""The cross linker (modeling_mel/linking_cross.py): the one owner of PFMEL pair scoring (issue 26). Pairs equal the
processor's, scores do not depend on the batching, token-budget batches, score fusion and the tie rule, the entity
sides tokenised once, and the single place of the pair scoring call in the package."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import pipeline

from inference_fixtures import KB_ROWS, mentions, tiny_nsp, write_kb
from modeling_mel.linking_cross import MIN_BF16_CPU_ROWS, CrossLinker
from modeling_mel.pipeline_entity_linking import TASK
from test_linking_dense import _files_matching

MENTION_SIDES = ["short text. a is", "a much longer mention text with many words in it " * 6 + ". b is"]


@pytest.fixture(scope="module")
def nsp():
    return tiny_nsp()


def entity_side(processor):
    return lambda p: processor.entity_side(KB_ROWS[p])


def test_pairs_equal_the_processors_encoding(nsp):
    model, processor = nsp
    linker = CrossLinker(model, processor)
    pairs = [(i, p) for i in range(2) for p in range(len(KB_ROWS))]
    features = linker.pair_features(MENTION_SIDES, pairs, entity_side(processor))
    want = processor([MENTION_SIDES[i] for i, _ in pairs], [processor.entity_side(KB_ROWS[p]) for _, p in pairs],
                     padding=False, return_tensors=None)
    assert [f["input_ids"] for f in features] == [w["input_ids"] for w in want]
    assert [f["token_type_ids"] for f in features] == [w["token_type_ids"] for w in want]
    assert max(len(f["input_ids"]) for f in features) == processor.max_length  # the long side was cut as in training


def test_batches_sorted_by_tokens_within_budget(nsp):
    model, processor = nsp
    linker = CrossLinker(model, processor, pair_batch_size=4)
    lengths = [64, 9, 30, 64, 17, 64, 64, 64, 3, 40]
    batches = linker.batches(lengths)
    flat = [j for b in batches for j in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[j] for j in flat] == sorted(lengths)
    width = lambda b: max(-(-lengths[j] // 8) * 8 for j in b)  # noqa: E731 - padded to a multiple of 8
    assert all(len(b) <= 4 and len(b) * width(b) <= 4 * 64 for b in batches)
    assert all(len({-(-lengths[j] // 8) for j in b}) == 1 for b in batches)  # one padded width per batch
    assert any(len(b) == 4 and width(b) == 64 for b in batches)  # 64-token pairs still go 4 to a pass
    assert linker.batches([]) == []


def test_scores_do_not_depend_on_the_batching(nsp):
    model, processor = nsp
    pairs = [(i, p) for i in range(2) for p in range(len(KB_ROWS))]
    one = CrossLinker(model, processor, pair_batch_size=1)
    many = CrossLinker(model, processor, pair_batch_size=64)
    features = one.pair_features(MENTION_SIDES, pairs, entity_side(processor))
    a, b = one.score_features(features), many.score_features(features)
    assert torch.allclose(a, b, atol=1e-5)
    # each score is log p(B follows A) of the model's own forward on that pair alone
    with torch.inference_mode():
        alone = model(**processor.pad([features[3]], return_tensors="pt")).logits
    assert a[3].item() == pytest.approx(model.link_scores(alone).item(), abs=1e-5)


def test_entity_sides_are_tokenised_once(nsp):
    model, processor = nsp
    linker = CrossLinker(model, processor)
    calls = []

    def side(p):
        calls.append(p)
        return processor.entity_side(KB_ROWS[p])

    linker.pair_features(MENTION_SIDES[:1], [(0, 1), (0, 2)], side)
    linker.pair_features(MENTION_SIDES[:1], [(0, 2), (0, 3), (0, 1)], side)
    assert calls == [1, 2, 3]


def test_rank_fuses_the_retriever_score_and_breaks_ties_by_kb_position(nsp):
    model, processor = nsp
    linker = CrossLinker(model, processor)
    cands = [[5, 2, 7], [4]]
    scores = [-1.0, -1.0, -3.0, -0.5]
    assert linker.rank(cands, scores, weight=0.0) == [[(2, -1.0), (5, -1.0), (7, -3.0)], [(4, -0.5)]]
    fused = linker.rank(cands, scores, first_stage=[{5: 0.1, 7: 1.0}, {}], weight=4.0)
    assert [p for p, _ in fused[0]] == [7, 5, 2] and fused[0][0][1] == pytest.approx(-3.0 + 4.0)
    model.config.retriever_score_weight = 2.0  # the calibrated weight of the model is the default
    try:
        assert linker.rank(cands, scores, first_stage=[{7: 1.5}, {}])[0][0] == (7, pytest.approx(0.0))
        # a fused tie (7: -3 + 2 * 1 = -1, as 2 and 5) goes to the earliest KB position
        assert [p for p, _ in linker.rank(cands, scores, first_stage=[{7: 1.0}, {}])[0]] == [2, 5, 7]
    finally:
        del model.config.retriever_score_weight


def test_pipeline_ranks_through_the_linker_whatever_the_pair_batch(nsp, tmp_path):
    model, processor = nsp
    root = str(tmp_path)
    write_kb(root)
    pipe = pipeline(TASK, model=model, processor=processor, kb=os.path.join(root, "kb.jsonl"), use_images=False)
    items = mentions(root)
    a, b = pipe(items, top_k=5, pair_batch_size=1), pipe(items, top_k=5, pair_batch_size=64)
    assert [[r["entity_id"] for r in x] for x in a] == [[r["entity_id"] for r in x] for x in b]
    assert all(abs(r["score"] - s["score"]) <= 1e-5 for x, y in zip(a, b) for r, s in zip(x, y))
    assert any(len(x) > 1 for x in a)


def test_one_module_scores_pfmel_pairs():
    # issue 26: the PFMEL pair scoring (model.link_scores over pair logits) lives in the cross linker only, besides
    # the model file that defines it (the listwise training loss scores the training forward: `unwrapped.link_scores`)
    assert _files_matching(r"\bmodel\.link_scores\(") - {"modeling_multimodal_nsp.py"} == {"linking_cross.py"}


def test_top_k_linking_scores_fewer_pairs_and_returns_the_same_top_k(nsp):
    # the bound (a log-probability is at most 0) keeps the exact top k: random pair scores and retriever scores, every
    # top_k, against ranking every pair; ties included (scores rounded)
    import random

    model, processor = nsp
    linker = CrossLinker(model, processor)
    rng = random.Random(0)
    pruned_any = False
    for case in range(200):
        n = rng.randint(1, 12)
        cands = [rng.sample(range(40), n) for _ in range(rng.randint(1, 4))]
        nsp_score = {(i, p): -round(rng.expovariate(0.5), 1) for i, row in enumerate(cands) for p in row}
        first = [{p: round(rng.uniform(0, 1), 2) for p in row if rng.random() < 0.9} for row in cands]
        weight = rng.choice([0.0, 1.0, 16.0, 64.0])
        asked: list = []

        def score_pairs(pairs):
            asked.extend(pairs)
            return torch.tensor([nsp_score[pair] for pair in pairs])

        full = linker.rank(cands, torch.tensor([nsp_score[(i, p)] for i, row in enumerate(cands) for p in row]),
                           first, weight)
        for k in (1, 3, 5, 20):
            asked.clear()
            got = linker.link(cands, score_pairs, first, top_k=k, weight=weight)
            assert [[p for p, _ in r] for r in got] == [[p for p, _ in r[:k]] for r in full], (case, k)
            assert [[s for _, s in r] for r in got] == [[pytest.approx(s) for _, s in r[:k]] for r in full]
            assert len(asked) == len(set(asked)) <= sum(map(len, cands))  # each pair scored at most once
            pruned_any |= len(asked) < sum(map(len, cands))
    assert pruned_any


def test_pruning_waves_only_when_the_first_wave_is_small(nsp):
    # two waves pay only when the top_k are a small share of the pairs (PRUNE_FIRST_WAVE); else one wave, every pair
    from modeling_mel.linking_cross import PRUNE_FIRST_WAVE

    model, processor = nsp
    linker = CrossLinker(model, processor)
    cands = [list(range(9)), list(range(10, 19))]
    first = [{p: 1.0 - 0.1 * (p % 10) for p in row} for row in cands]  # falling bounds: most pairs prunable
    calls: list = []

    def score_pairs(pairs):
        calls.append(list(pairs))
        return torch.tensor([-0.01 if p % 10 == 0 else -50.0 for _, p in pairs])

    # k 1: the first wave (2 of 18 pairs) prunes every other pair; k 3: a second wave (the third best is low);
    # k 4 and 5: more than a third of the pairs in the first wave, so one wave of every pair
    for k, n_calls, n_scored in ((1, 1, 2), (3, 2, 18), (4, 1, 18), (5, 1, 18)):
        calls.clear()
        got = linker.link(cands, score_pairs, first, top_k=k, weight=1.0)
        assert (len(calls), sum(map(len, calls))) == (n_calls, n_scored), (k, calls)
        assert (2 * k <= PRUNE_FIRST_WAVE * 18) == (len(calls[0]) == 2 * k)
        assert [[p for p, _ in row] for row in got] == [row[:k] for row in cands]  # same top k either way



def test_bf16_scores_do_not_depend_on_the_batch(nsp):
    # issue 26: the evaluation, mel link and pipeline() batch the same pairs differently; one padded width per batch
    # keeps a pair's bf16 score bitwise the same in any batch of this small model (padding it wider changes its bf16
    # rounding; on the MiniLM reranker the kernels also round with the batch size: see linking_cross's docstring)
    import random

    model, processor = nsp
    sides = [MENTION_SIDES[0], MENTION_SIDES[1], "a mid-sized mention text about a few things . c is"]
    pairs = [(i, p) for i in range(3) for p in range(len(KB_ROWS))]
    base = CrossLinker(model, processor, bf16=True, pair_batch_size=64)
    features = base.pair_features(sides, pairs, entity_side(processor))
    assert len({-(-len(f["input_ids"]) // 8) for f in features}) > 2  # several widths
    want = base.score_features(features)
    rng = random.Random(0)
    for size in (1, 2, 5):
        order = list(range(len(features)))
        rng.shuffle(order)
        got = CrossLinker(model, processor, bf16=True, pair_batch_size=size).score_features([features[j] for j in order])
        assert torch.equal(got, want[torch.tensor(order)]), size
    # the same pairs padded to the widest one in a single batch score differently under bf16: what one width per
    # batch avoids
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        padded = model.link_scores(model(**processor.pad(features, return_tensors="pt")).logits).float()
    assert not torch.equal(padded, want)

def test_bf16_cpu_batches_are_filled_to_the_row_floor(nsp):
    # bf16 on CPU: a forward pass runs at least MIN_BF16_CPU_ROWS token rows (copies of its first pair), the size from
    # which the CPU's bf16 matrix kernels round a row alike in any batch; the copies' scores are dropped, fp32 is never
    # filled. Where the fused CPU forward runs, each batch stops at its pairs' first-token states and the states of
    # the whole call are finished in one pass, itself filled to MIN_BF16_CPU_ROWS rows
    from modeling_mel.low_precision import _fused_linear_op

    model, processor = nsp
    pairs = [(i, p) for i in range(2) for p in range(len(KB_ROWS))]
    features = CrossLinker(model, processor).pair_features(MENTION_SIDES, pairs, entity_side(processor))
    split = _fused_linear_op() is not None
    seen, finished = [], []
    entries = {name: getattr(model, name) for name in ("inference_scores", "inference_pair_states",
                                                       "inference_state_scores")}

    def recording(**batch):
        seen.append(tuple(batch["input_ids"].shape))
        return entries["inference_scores"](**batch)

    def recording_states(**batch):
        seen.append(tuple(batch["input_ids"].shape))
        return entries["inference_pair_states"](**batch)

    def recording_finish(states, dtype):
        finished.append(states.shape[0])
        return entries["inference_state_scores"](states, dtype)

    model.inference_scores, model.inference_pair_states = recording, recording_states
    model.inference_state_scores = recording_finish
    try:
        for bf16 in (True, False):
            want = torch.cat([entries["inference_scores"](
                **{k: v for k, v in processor.pad([f], return_tensors="pt", pad_to_multiple_of=8).items()},
                autocast_dtype=torch.bfloat16 if bf16 else None) for f in features])
            seen.clear()
            finished.clear()
            linker = CrossLinker(model, processor, bf16=bf16, pair_batch_size=3)
            got = linker.score_features(features)
            # each pair's own score, whatever filled its batch (this small model's bf16 scores do not depend on the
            # batch; float32 ones round with it, at 1e-7)
            torch.testing.assert_close(got, want, rtol=0, atol=0 if bf16 else 1e-6)
            sizes = [len(idx) for idx in linker.batches([len(f["input_ids"]) for f in features])]
            floor = [max(k, -(-MIN_BF16_CPU_ROWS // w)) if bf16 else k for (_, w), k in zip(seen, sizes)]
            assert [n for n, _ in seen] == floor  # filled to the floor under bf16 only
            assert (sum(n for n, _ in seen) > len(features)) == bf16
            # the 16 pairs' states (6 batches) finished in one pass of MIN_BF16_CPU_ROWS rows
            assert finished == ([MIN_BF16_CPU_ROWS] if bf16 and split else [])
    finally:
        for name in entries:
            del model.__dict__[name]


def test_first_token_states_are_finished_together_in_passes_of_the_row_floor(nsp, monkeypatch):
    # more states than linking_cross.MAX_TAIL_ROWS: finished in several passes as they gather, each of at least
    # MIN_BF16_CPU_ROWS rows; every pair keeps its own score (that of the pair alone)
    from modeling_mel import linking_cross
    from modeling_mel.low_precision import _fused_linear_op

    model, processor = nsp
    if _fused_linear_op() is None:  # no oneDNN bf16 here: the linker runs whole batches (the test above covers it)
        assert model.inference_pair_states(torch.ones(1, 8, dtype=torch.long)) is None
        return
    pairs = [(i, p) for i in range(2) for p in range(len(KB_ROWS))]
    features = CrossLinker(model, processor).pair_features(MENTION_SIDES, pairs, entity_side(processor))
    features = features * 3  # 48 pairs
    finished = []
    finish = model.inference_state_scores

    def recording_finish(states, dtype):
        finished.append(states.shape[0])
        return finish(states, dtype)

    monkeypatch.setattr(model, "inference_state_scores", recording_finish)
    monkeypatch.setattr(linking_cross, "MAX_TAIL_ROWS", 10)
    got = CrossLinker(model, processor, bf16=True, pair_batch_size=4).score_features(features)
    assert len(finished) > 1 and all(n == MIN_BF16_CPU_ROWS for n in finished)
    alone = torch.cat([model.inference_scores(**processor.pad([f], return_tensors="pt", pad_to_multiple_of=8),
                                              autocast_dtype=torch.bfloat16) for f in features])
    torch.testing.assert_close(got, alone, rtol=0, atol=0)
    assert torch.equal(got[:16], got[16:32]) and torch.equal(got[:16], got[32:])


def test_bf16_pipeline_ranks_alike_whatever_the_pair_batch(nsp, tmp_path):
    model, processor = nsp
    root = str(tmp_path)
    write_kb(root)
    pipe = pipeline(TASK, model=model, processor=processor, kb=os.path.join(root, "kb.jsonl"), use_images=False,
                    bf16=True)
    items = mentions(root)
    a, b = pipe(items, top_k=5, pair_batch_size=1), pipe(items, top_k=5, pair_batch_size=64)
    assert [[r["entity_id"] for r in x] for x in a] == [[r["entity_id"] for r in x] for x in b]
    assert any(len(x) > 1 for x in a)
