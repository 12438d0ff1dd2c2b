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
