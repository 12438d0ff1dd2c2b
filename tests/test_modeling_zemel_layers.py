"""The ZEMEL encoder's layers (modeling_mel.modeling_zemel_layers): attention against a hand reference, the text stream
equal to BERT's when the modality gates are closed, the gated co-attention and the fusion computed by hand, and the
names still importable from modeling_mel.modeling_zemel. Saving ships the file with the model:
tests/test_modeling_zemel.py (test_save_and_auto_model_load)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from transformers import BertConfig, BertModel

from modeling_mel import modeling_zemel, modeling_zemel_layers
from modeling_mel.modeling_zemel_layers import (
    ZemelCoAttentionLayer,
    ZemelFusion,
    ZemelSelfAttention,
    ZemelTextEmbeddings,
    ZemelTwoStreamEncoder,
    ZemelVisualEmbeddings,
    _additive_mask,
)
from test_modeling_zemel import TEXT, tiny_config  # the tiny sizes the model tests use


def regions(batch=2, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, r, 16, generator=g), torch.rand(batch, r, 5, generator=g)


def test_additive_mask_keeps_ones_and_drops_zeros_with_a_finite_minimum():
    mask = _additive_mask(torch.tensor([[1, 0, 1]]), torch.float32)
    assert mask.shape == (1, 1, 1, 3)
    assert mask.flatten().tolist() == [0.0, torch.finfo(torch.float32).min, 0.0]
    assert _additive_mask(torch.tensor([[0]]), torch.bfloat16).item() == torch.finfo(torch.bfloat16).min


def test_cross_attention_matches_a_hand_computed_reference():
    torch.manual_seed(0)
    attn = ZemelSelfAttention(hidden_size=8, num_attention_heads=2, attention_probs_dropout_prob=0.1, context_size=6,
                              all_head_size=12).eval()
    queries, context = torch.randn(2, 4, 8), torch.randn(2, 5, 6)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = attn(queries, _additive_mask(keep, torch.float32), context)

    def heads(x):  # (B, S, 12) -> (B, 2, S, 6)
        return x.view(*x.shape[:2], 2, 6).transpose(1, 2)

    q, k, v = heads(attn.query(queries)), heads(attn.key(context)), heads(attn.value(context))
    scores = (q @ k.transpose(-1, -2)) / 6**0.5
    scores = scores.masked_fill(~keep.bool()[:, None, None, :], float("-inf"))
    expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 4, 12)
    assert out.shape == (2, 4, 12)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="not a multiple of the heads"):
        ZemelSelfAttention(8, 3, 0.0)


def bert_and_encoder(**overrides):
    """A random tiny BERT and a ZEMEL encoder whose text stream holds its weights (loaded by name), gates closed."""
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**TEXT)).eval()
    encoder = ZemelTwoStreamEncoder(tiny_config(**overrides)).eval()
    result = encoder.load_state_dict(bert.state_dict(), strict=False)
    assert result.unexpected_keys == []  # every BERT tensor has its place in the text stream
    assert all(not k.startswith(("embeddings.", "encoder.", "pooler.")) for k in result.missing_keys)
    with torch.no_grad():  # the fusion projection starts at zero (ZemelPreTrainedModel._init_weights does it)
        encoder.fusion.dense.weight.zero_()
        encoder.fusion.dense.bias.zero_()
    return bert, encoder


@pytest.mark.parametrize("with_regions", [False, True])
def test_closed_gates_leave_the_bert_text_stream_unchanged(with_regions):
    bert, encoder = bert_and_encoder()
    ids = torch.randint(1, 99, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0, 0]])
    ref = bert(input_ids=ids, attention_mask=mask)
    features, spatial = regions() if with_regions else (None, None)
    visual_mask = torch.tensor([[1, 1, 0], [1, 1, 1]]) if with_regions else None
    with torch.no_grad():
        pooled, sequence, seq_mask = encoder(ids, mask, None, features, spatial, visual_mask)
    torch.testing.assert_close(pooled, ref.pooler_output)
    real = mask.bool()
    torch.testing.assert_close(sequence[:, :7][real], ref.last_hidden_state[real])
    if with_regions:  # the regions follow the tokens, projected and scaled by tanh(visual_gate) = 0
        assert sequence.shape == (2, 10, 32) and torch.equal(sequence[:, 7:], torch.zeros(2, 3, 32))
        assert seq_mask.tolist() == [[1] * 7 + [1, 1, 0], [1] * 5 + [0, 0] + [1, 1, 1]]
    else:
        assert sequence.shape == (2, 7, 32) and torch.equal(seq_mask, mask)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_modes_read_the_text_states(pooling):
    bert, encoder = bert_and_encoder(pooling=pooling)
    ids = torch.randint(1, 99, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    states = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        pooled, _, _ = encoder(ids, mask)
    if pooling == "mean":
        expected = torch.stack([states[0].mean(0), states[1, :3].mean(0)])
    else:
        expected = states[:, 0]
    torch.testing.assert_close(pooled, expected)


def test_text_embeddings_refuse_a_sequence_longer_than_the_positions():
    embeddings = ZemelTextEmbeddings(BertConfig(**TEXT))
    with pytest.raises(ValueError, match="sequence length 65 exceeds max_position_embeddings 64"):
        embeddings(torch.ones(1, 65, dtype=torch.long))


def test_visual_embeddings_sum_both_projections_then_normalise():
    torch.manual_seed(0)
    embed = ZemelVisualEmbeddings(tiny_config()).eval()
    features, spatial = regions()
    summed = embed.image_embeddings(features) + embed.image_location_embeddings(spatial)
    expected = F.layer_norm(summed, (24,), embed.LayerNorm.weight, embed.LayerNorm.bias, embed.LayerNorm.eps)
    torch.testing.assert_close(embed(features, spatial), expected)


def test_co_attention_update_is_gated_and_skips_examples_without_the_other_side():
    torch.manual_seed(0)
    block = ZemelCoAttentionLayer(tiny_config(modality_gate_init=1.0)).eval()
    text, visual = torch.randn(3, 5, 32), torch.randn(3, 3, 24)
    text_mask = torch.tensor([[1] * 5, [1] * 5, [0] * 5])  # example 2 has no text
    visual_mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]])  # example 1 has no regions
    with torch.no_grad():
        open_text, open_visual = block(text, text_mask, visual, visual_mask)
        block.text_gate.fill_(0.5)
        half_text, half_visual = block(text, text_mask, visual, visual_mask)
        block.text_gate.zero_()
        closed_text, _ = block(text, text_mask, visual, visual_mask)
    assert torch.equal(open_text[1], text[1]) and torch.equal(open_visual[2], visual[2])  # passed through
    assert not torch.allclose(open_text[0], text[0]) and not torch.allclose(open_visual[0], visual[0])
    # text + tanh(g) * (block(text) - text): the update scales with tanh of the gate, and a closed gate is the identity
    scale = torch.tanh(torch.tensor(0.5)) / torch.tanh(torch.tensor(1.0))
    torch.testing.assert_close(half_text, text + scale * (open_text - text))
    torch.testing.assert_close(half_visual, open_visual)  # the visual update has no gate
    assert torch.equal(closed_text, text)


@pytest.mark.parametrize("mode", ["concat", "sum"])
def test_fusion_adds_the_projected_streams_to_the_text_vector(mode):
    torch.manual_seed(0)
    fusion = ZemelFusion(tiny_config(fusion=mode, modality_gate_init=0.5)).eval()
    text_pooled, visual_pooled, visual_states = torch.randn(2, 32), torch.randn(2, 24), torch.randn(2, 3, 24)
    pooled, tokens = fusion(text_pooled, visual_pooled, visual_states)
    fused_in = torch.cat([text_pooled, visual_pooled], -1) if mode == "concat" else visual_pooled
    assert fusion.dense.in_features == fused_in.shape[-1]
    torch.testing.assert_close(pooled, text_pooled + fused_in @ fusion.dense.weight.T + fusion.dense.bias)
    torch.testing.assert_close(tokens, torch.tanh(torch.tensor(0.5)) * fusion.visual_projection(visual_states))
    assert fusion(text_pooled, visual_pooled, None)[1] is None


def test_the_layers_stay_importable_from_modeling_zemel():
    names = [*modeling_zemel_layers.__all__, "_additive_mask"]
    assert len(names) == 13 and "ZemelTwoStreamEncoder" in names
    for name in names:
        assert getattr(modeling_zemel, name) is getattr(modeling_zemel_layers, name), name
    # the model is built from these classes (what ZemelPreTrainedModel._init_weights checks against)
    model = modeling_zemel.ZemelPolyEncoder(tiny_config())
    assert type(model.context_encoder) is ZemelTwoStreamEncoder
    assert type(model.candidate_encoder.co_layer[0]) is ZemelCoAttentionLayer
    assert torch.equal(model.context_encoder.fusion.dense.weight, torch.zeros(32, 56))  # zero-initialised fusion
