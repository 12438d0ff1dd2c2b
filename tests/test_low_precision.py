"""Low-precision inference copies (modeling_mel.low_precision), shared by the ZEMEL and PFMEL model files."""

import contextlib

import torch
from torch import nn

from modeling_mel.low_precision import autocast_context, low_precision_copy


class Owner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))


def test_autocast_context_only_for_low_precision():
    assert isinstance(autocast_context(None, "cpu"), contextlib.nullcontext)
    assert isinstance(autocast_context(torch.float32, "cpu"), contextlib.nullcontext)
    with autocast_context(torch.bfloat16, "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_copy_casts_linear_weights_once_and_equals_plain_autocast():
    owner = Owner().eval()
    prepared = []
    low = low_precision_copy(owner, "body", torch.bfloat16, prepare=prepared.append)
    assert low is not owner.body and prepared == [low]
    assert low[0].weight.dtype == low[2].weight.dtype == torch.bfloat16
    assert low[1].weight.dtype == torch.float32 and owner.body[0].weight.dtype == torch.float32  # rest untouched
    assert set(owner.state_dict()) == {f"body.{k}" for k in owner.body.state_dict()}  # not in the module tree
    x = torch.randn(5, 8)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(low(x), owner.body(x))  # what autocast would compute
    assert low_precision_copy(owner, "body", torch.bfloat16, prepare=prepared.append) is low and len(prepared) == 1


def test_whole_copy_is_all_low_precision_and_a_separate_cache_entry():
    owner = Owner().eval()
    linear_only = low_precision_copy(owner, "body", torch.bfloat16)
    whole = low_precision_copy(owner, "body", torch.bfloat16, whole=True)
    assert whole is not linear_only  # the two kinds of copy never stand in for each other
    assert all(p.dtype == torch.bfloat16 for p in whole.parameters())  # the layer norm too
    assert owner.body[1].weight.dtype == torch.float32
    x = torch.randn(5, 8)
    with torch.inference_mode():
        out = whole(x.to(torch.bfloat16))  # runs without autocast, bf16 in and out
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), owner.body(x), rtol=0, atol=0.05)  # within bf16 rounding
    assert low_precision_copy(owner, "body", torch.bfloat16, whole=True) is whole


def test_copy_is_rebuilt_when_a_weight_changes():
    owner = Owner().eval()
    low = low_precision_copy(owner, "body", torch.bfloat16)
    with torch.no_grad():
        owner.body[2].weight.mul_(2.0)  # in-place update (optimizer step)
    again = low_precision_copy(owner, "body", torch.bfloat16)
    assert again is not low
    torch.testing.assert_close(again[2].weight, owner.body[2].weight.to(torch.bfloat16))
    owner.body[0].weight = nn.Parameter(torch.zeros(16, 8))  # a new tensor
    assert low_precision_copy(owner, "body", torch.bfloat16)[0].weight.abs().sum() == 0


def test_evaluating_restores_the_mode():
    from modeling_mel.low_precision import evaluating

    owner = Owner().train()
    with evaluating(owner) as m:
        assert m is owner and not owner.training and not owner.body[0].training
    assert owner.training and owner.body[0].training
    owner.eval()
    try:
        with evaluating(owner):
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert not owner.training  # an eval-mode module stays in eval mode, an exception does not change it


def _tiny_bert(**kw):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
    bert = BertModel(config).eval()
    low = low_precision_copy(nn.ModuleDict({"bert": bert}), "bert", torch.bfloat16, whole=True)
    return bert, low


def _pair_batch(batch=6, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (batch, width), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -5:] = 0  # two padded rows
    mask[4, -2:] = 0
    types = torch.zeros_like(ids)
    types[:, width // 2:] = 1
    return ids, mask, types


def test_fused_bert_forward_is_berts_pooled_output_in_bf16():
    from modeling_mel.low_precision import FusedBertEncoder, _fused_linear_op

    bert, low = _tiny_bert()
    fused = FusedBertEncoder.build(low)
    if _fused_linear_op() is None:  # no oneDNN bf16 on this build or CPU: the model's own forward is used instead
        assert fused is None
        return
    ids, mask, types = _pair_batch()
    with torch.inference_mode():
        out = fused(input_ids=ids, attention_mask=mask, token_type_ids=types)
        reference = bert(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output  # float32
        copy_forward = low(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output  # bf16, unfused
        assert out.dtype == torch.bfloat16 and out.shape == reference.shape
        torch.testing.assert_close(out.float(), reference, rtol=0, atol=0.03)
        torch.testing.assert_close(out.float(), copy_forward.float(), rtol=0, atol=0.03)
        assert (out.float() - reference).abs().mean() < 0.01
        # padding is masked: a padded row scores as that row alone, unpadded (to bf16 rounding)
        alone = fused(input_ids=ids[1:2, :-5], attention_mask=mask[1:2, :-5], token_type_ids=types[1:2, :-5])
        torch.testing.assert_close(out[1:2].float(), alone.float(), rtol=0, atol=0.02)
        # image pairs enter as embeddings: the same result as the ids they stand for
        embeds = low.embeddings.word_embeddings(ids)
        torch.testing.assert_close(fused(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types), out,
                                   rtol=0, atol=0)
        # the two steps: first-token states (B, 2H) of every batch, finished together, give each batch's own output
        states = fused.trunk(input_ids=ids, attention_mask=mask, token_type_ids=types)
        assert states.shape == (ids.shape[0], 2 * low.config.hidden_size) and states.dtype == torch.bfloat16
        other = _pair_batch(batch=5, width=ids.shape[1] + 8, seed=1)
        other_states = fused.trunk(input_ids=other[0], attention_mask=other[1], token_type_ids=other[2])
        together = fused.tail(torch.cat([states, other_states]))
        torch.testing.assert_close(together[: len(ids)], out, rtol=0, atol=0)
        torch.testing.assert_close(together[len(ids):], fused(input_ids=other[0], attention_mask=other[1],
                                                              token_type_ids=other[2]), rtol=0, atol=0)


def test_fused_bert_forward_only_for_what_it_covers():
    from modeling_mel.low_precision import FusedBertEncoder, _fused_linear_op

    if _fused_linear_op() is None:
        assert FusedBertEncoder.build(_tiny_bert()[1]) is None
        return
    assert FusedBertEncoder.build(_tiny_bert()[1]) is not None
    assert FusedBertEncoder.build(_tiny_bert(hidden_act="relu")[1]) is None
    assert FusedBertEncoder.build(_tiny_bert(position_embedding_type="relative_key")[1]) is None
    assert FusedBertEncoder.build(_tiny_bert(is_decoder=True)[1]) is None
    assert FusedBertEncoder.build(_tiny_bert()[0]) is None  # float32 weights: only the wholly-bf16 copy
    assert FusedBertEncoder.build(nn.Linear(4, 4)) is None
