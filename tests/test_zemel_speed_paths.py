"""Fast inference paths of ZEMEL: `fast_encode_candidates`, `link`, `ZemelProcessor.tokenize_candidates`.

Equalities against the reference paths (`encode_candidates`, `encode_context` + `score`, `encode_candidates` of the
processor); bf16 autocast is checked for closeness only. No timing assertions here (see benchmarks/)."""

from __future__ import annotations

import pytest
import torch

from modeling_mel.configuration_zemel import ZemelConfig
from modeling_mel.modeling_zemel import ZemelPolyEncoder

TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)


def tiny_model(scoring: str = "poly") -> ZemelPolyEncoder:
    torch.manual_seed(0)
    config = ZemelConfig(text_config=TEXT, v_feature_dim=16, v_hidden_size=24, v_num_attention_heads=4,
                         v_intermediate_size=30, v_num_hidden_layers=2, bi_hidden_size=32, bi_num_attention_heads=4,
                         poly_m=4, max_regions=3, scoring=scoring)
    return ZemelPolyEncoder(config).eval()


def ragged_candidates(n: int = 11, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (n,), generator=g)
    ids = torch.zeros(n, int(lengths.max()), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, length in enumerate(lengths.tolist()):
        ids[i, :length] = torch.randint(1, 99, (length,), generator=g)
        mask[i, :length] = 1
    return ids, mask


def context(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        input_ids=torch.randint(1, 99, (batch, 9), generator=g),
        attention_mask=torch.tensor([[1] * 9, [1] * 6 + [0] * 3][:batch]),
        visual_features=torch.randn(batch, 3, 16, generator=g),
        visual_spatial=torch.rand(batch, 3, 5, generator=g),
        visual_attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]][:batch]),
    )


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_fast_encode_candidates_equals_encode_candidates(batch_size):
    model = tiny_model()
    ids, mask = ragged_candidates()
    with torch.no_grad():
        ref = model.encode_candidates(ids, mask)
    fast = model.fast_encode_candidates(ids, mask, batch_size=batch_size)
    assert fast.dtype == torch.float32 and fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    # unpadded id lists (a cached tokenisation) give the same vectors
    rows = [r[m.bool()].tolist() for r, m in zip(ids, mask)]
    torch.testing.assert_close(model.fast_encode_candidates(rows, batch_size=batch_size), ref, atol=1e-5, rtol=1e-5)


def test_fast_encode_candidates_with_regions_and_training_flag_restored():
    model = tiny_model().train()
    ids, mask = ragged_candidates(5)
    g = torch.Generator().manual_seed(3)
    vis = dict(visual_features=torch.randn(5, 2, 16, generator=g), visual_spatial=torch.rand(5, 2, 5, generator=g),
               visual_attention_mask=torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1], [1, 0]]))
    fast = model.fast_encode_candidates(ids, mask, batch_size=2, **vis)
    assert model.training
    model.eval()
    with torch.no_grad():
        ref = model.encode_candidates(ids, mask, **vis)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_fast_encode_candidates_bf16_close():
    model = tiny_model()
    ids, mask = ragged_candidates()
    ref = model.fast_encode_candidates(ids, mask)
    bf16 = model.fast_encode_candidates(ids, mask, autocast_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(bf16, ref).min() > 0.99


@pytest.mark.parametrize("scoring", ["poly", "bi"])
def test_link_equals_encode_context_and_score(scoring):
    model = tiny_model(scoring)
    ids, mask = ragged_candidates()
    cache = model.fast_encode_candidates(ids, mask)
    x = context()
    with torch.no_grad():
        ref = model.score(model.encode_context(**x), cache)
    scores = model.link(cache, **x)
    assert scores.shape == (2, len(ids)) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, ref, atol=1e-5, rtol=1e-5)
    # per-example caches (B, K, H) too
    per_example = cache[None].expand(2, -1, -1)
    torch.testing.assert_close(model.link(per_example, **x), ref, atol=1e-5, rtol=1e-5)


def test_link_bf16_close_and_cache_checked():
    model = tiny_model()
    ids, mask = ragged_candidates()
    cache = model.fast_encode_candidates(ids, mask)
    x = context()
    ref = model.link(cache, **x)
    bf16 = model.link(cache, autocast_dtype=torch.bfloat16, **x)
    assert bf16.dtype == torch.float32
    assert (bf16 - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3
    with pytest.raises(ValueError, match="hidden size"):
        model.link(torch.zeros(3, 7), **x)


def test_tokenize_candidates_matches_encode_candidates(minilm_tokenizer):
    from modeling_mel.processing_zemel import ZemelProcessor

    processor = ZemelProcessor(minilm_tokenizer)
    names = ["Barack Obama", "Paris", "", "A very long name " * 10]
    descriptions = ["44th president of the United States", None, "a city", "long description " * 40]
    for max_length in (8, 64):
        rows = processor.tokenize_candidates(names, descriptions, max_length=max_length)
        enc = processor.encode_candidates(names, descriptions, max_length=max_length)
        ref = [r[m.bool()].tolist() for r, m in zip(enc["input_ids"], enc["attention_mask"])]
        assert rows == ref
    with pytest.raises(ValueError, match="descriptions"):
        processor.tokenize_candidates(["a", "b"], ["x"])


def test_link_low_precision_copy_equals_plain_autocast_and_follows_updates():
    model = tiny_model()
    ids, mask = ragged_candidates()
    cache = model.fast_encode_candidates(ids, mask)
    x = context()
    plain = model.link(cache, autocast_dtype=torch.bfloat16, cache_low_precision_weights=False, **x)
    cached = model.link(cache, autocast_dtype=torch.bfloat16, **x)
    torch.testing.assert_close(cached, plain, atol=1e-6, rtol=1e-6)
    assert model.link(cache, autocast_dtype=torch.bfloat16, **x).equal(cached)  # reused copy
    assert "_low_precision_copies" not in "".join(model.state_dict())
    with torch.no_grad():  # an in-place update (as an optimizer step) invalidates the copy
        model.context_encoder.encoder.layer[0].intermediate.dense.weight.mul_(3.0)
    updated = model.link(cache, autocast_dtype=torch.bfloat16, **x)
    fresh = model.link(cache, autocast_dtype=torch.bfloat16, cache_low_precision_weights=False, **x)
    torch.testing.assert_close(updated, fresh, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(updated, cached)


def test_fast_encode_candidates_low_precision_copy_equals_plain_autocast_and_follows_updates():
    model = tiny_model()
    ids, mask = ragged_candidates()
    plain = model.fast_encode_candidates(ids, mask, autocast_dtype=torch.bfloat16, cache_low_precision_weights=False)
    cached = model.fast_encode_candidates(ids, mask, autocast_dtype=torch.bfloat16)
    torch.testing.assert_close(cached, plain, atol=1e-6, rtol=1e-6)
    assert "candidate_encoder" in model.__dict__["_low_precision_copies"]
    with torch.no_grad():  # a training step between two KB encodings (negative mining) invalidates the copy
        model.candidate_encoder.encoder.layer[0].intermediate.dense.weight.mul_(3.0)
    updated = model.fast_encode_candidates(ids, mask, autocast_dtype=torch.bfloat16)
    fresh = model.fast_encode_candidates(ids, mask, autocast_dtype=torch.bfloat16, cache_low_precision_weights=False)
    torch.testing.assert_close(updated, fresh, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(updated, cached)


def test_low_precision_cpu_attention_equals_sdpa_and_masks_padding():
    """bf16 CPU inference takes the two-product attention with a float32 softmax (SDPA's CPU kernel is slow there):
    it gives SDPA's float32 result up to bf16 rounding, keys masked out get no weight, and training keeps SDPA."""
    from modeling_mel.modeling_zemel import ZemelSelfAttention, _additive_mask

    torch.manual_seed(0)
    attention = ZemelSelfAttention(hidden_size=32, num_attention_heads=4, attention_probs_dropout_prob=0.0).eval()
    hidden = torch.randn(3, 7, 32)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    additive = _additive_mask(mask, torch.float32)
    with torch.inference_mode():
        reference = attention(hidden, additive)  # float32: SDPA
        attention_bf16 = ZemelSelfAttention(32, 4, 0.0).eval()
        attention_bf16.load_state_dict(attention.state_dict())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = attention_bf16(hidden, additive)
        # the padded keys carry no weight: changing them leaves every output unchanged
        changed = hidden.clone()
        changed[1, 4:] = 100.0
        changed[2, 2:] = -50.0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed_changed = attention_bf16(changed, additive)
    assert mixed.dtype == torch.bfloat16
    assert torch.allclose(mixed.float(), reference, atol=0.05, rtol=0.05)
    assert torch.equal(mixed_changed[0], mixed[0])
    assert torch.equal(mixed_changed[1, :4], mixed[1, :4]) and torch.equal(mixed_changed[2, :2], mixed[2, :2])
    # training (dropout) and float32 inference stay on SDPA: same function, same numbers as torch's kernel
    query = attention._heads(attention.query(hidden))
    key, value = attention._heads(attention.key(hidden)), attention._heads(attention.value(hidden))
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=additive)
    assert torch.allclose(reference, expected.transpose(1, 2).reshape(3, 7, 32), atol=1e-6)
