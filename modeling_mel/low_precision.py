"""Low-precision inference helpers shared by the model files (shipped with each model; imports torch only).

Under CPU autocast every ``nn.Linear`` weight is cast to bf16 again on every call, which costs as much as the
products themselves on small batches. :func:`low_precision_copy` keeps one inference copy of a submodule, rebuilt when
a parameter of the original changes: either with its linear weights already in the autocast dtype (what autocast would
cast them to: the results are those of plain autocast), or wholly in the low dtype (``whole=True``: every floating
parameter and buffer, run without autocast; no cast of an activation between two operations, so faster again, and
layer norms and softmaxes round in bf16 too).

:class:`FusedBertEncoder` runs such a wholly-bf16 BERT copy on CPU through oneDNN's fused linear kernels (the
product with its bias and a GELU, tanh or residual add in one call, the query, key and value products as one):
no activation is written out between a product and its pointwise step.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def autocast_context(dtype: torch.dtype | None, device: torch.device | str):
    """``torch.autocast`` for ``dtype`` on ``device``'s type, or a no-op context when ``dtype`` is None / float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """Eval mode for the block, the module's mode restored after; ``train()`` / ``eval()`` walk every submodule (about
    a millisecond a call on these models), so only when the module was training."""
    was_training = module.training
    if was_training:
        module.eval()
    try:
        yield module
    finally:
        if was_training:
            module.train()


def low_precision_copy(
    owner: nn.Module,
    name: str,
    dtype: torch.dtype,
    prepare: Callable[[nn.Module], None] | None = None,
    whole: bool = False,
) -> nn.Module:
    """Inference copy of ``owner``'s submodule ``name`` with its ``nn.Linear`` weights in ``dtype``, to run under
    autocast, or (``whole``) with every floating parameter and buffer in ``dtype``, to run without autocast;
    ``prepare(copy)`` adjusts the copy once when it is built. Kept outside the module tree (not saved, not trained);
    rebuilt when any parameter of the original changes (tensor, device or in-place version)."""
    module = getattr(owner, name)
    key = (dtype, bool(whole), tuple((p.data_ptr(), p._version) for p in module.parameters()))
    store = owner.__dict__.setdefault("_low_precision_copies", {})
    hit = store.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        low = copy.deepcopy(module).requires_grad_(False).eval()
        targets = [low] if whole else [sub for sub in low.modules() if isinstance(sub, nn.Linear)]
        for sub in targets:
            sub.to(dtype)
        if prepare is not None:
            prepare(low)
    store[name] = (key, low)
    return low


def _fused_linear_op() -> Callable | None:
    """oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``) where this build and CPU run it in bf16."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return None
    return op if supported else None


class FusedBertEncoder:
    """Inference forward of a wholly-bf16 ``BertModel`` on CPU, through oneDNN's fused linear kernels.

    Each layer runs as four fused products: query, key and value in one (weights concatenated once), the attention
    output with the residual add, the intermediate product with its GELU, the output with the residual add; attention
    is PyTorch's SDPA with the padding mask, layer norms as in BERT. The pooler's product runs with its tanh. The
    pooler reads the first token alone, so the last layer runs past its keys and values for that token only (its
    query, attention output and feed-forward: a sixth of a 6-layer model's products saved, 13% of the WikiMEL
    reranker's forward time): :meth:`trunk` stops at that token's *state*, :meth:`tail` finishes states, those of one
    batch or of many stacked (what ``CrossLinker`` does, so that the tail's products run on 512 rows or more). The
    arithmetic is BERT's; only the bf16 rounding points move (a pointwise step now runs on the float32 accumulator),
    so scores agree with the module's own bf16 forward to bf16 precision (``tests/test_low_precision.py``) and, like
    it, do not depend on the batch from 512 token rows on (``benchmarks/bf16_batch_invariance.py``); two-stage
    ``mel link`` speed: ``benchmarks/two_stage_speed.py``. Built by :meth:`build`, which returns None for a model it
    does not cover.
    """

    def __init__(self, bert: nn.Module, linear: Callable) -> None:
        self.bert = bert
        self.linear = linear
        self.layers = []
        for layer in bert.encoder.layer:
            att = layer.attention.self
            qkv_w = torch.cat([att.query.weight, att.key.weight, att.value.weight]).contiguous()
            qkv_b = torch.cat([att.query.bias, att.key.bias, att.value.bias]).contiguous()
            self.layers.append((qkv_w, qkv_b, int(att.num_attention_heads), layer))

    @classmethod
    def build(cls, bert: nn.Module) -> "FusedBertEncoder | None":
        """The fused forward of ``bert`` (a ``BertModel`` whose floating parameters are all bf16): None where the
        kernels are missing (no oneDNN bf16 on this build or CPU) or the model is not a plain BERT encoder (absolute
        positions, exact GELU, no decoder or cross-attention, a pooler)."""
        linear = _fused_linear_op()
        config = getattr(bert, "config", None)
        layers = getattr(getattr(bert, "encoder", None), "layer", None)
        if linear is None or config is None or layers is None or getattr(bert, "pooler", None) is None:
            return None
        if (getattr(config, "hidden_act", None) != "gelu" or getattr(config, "is_decoder", False)
                or getattr(config, "add_cross_attention", False)
                or getattr(config, "position_embedding_type", "absolute") != "absolute"):
            return None
        if any(p.is_floating_point() and p.dtype != torch.bfloat16 for p in bert.parameters()):
            return None
        try:
            return cls(bert, linear)
        except AttributeError:  # not BERT's layer layout
            return None

    def trunk(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Everything of a batch that needs all its tokens: every layer but the last, and the last layer's attention
        for the first token only (its keys and values need every token; nothing after it does). Returns the first
        token's *state* ``(B, 2H)`` (bf16): the last layer's attention context and its residual input, side by side;
        :meth:`tail` finishes it. States of several batches can be stacked and finished in one :meth:`tail`."""
        lin = self.linear
        x = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)
        batch, width, hidden = x.shape
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = x.reshape(batch * width, hidden)
        last = len(self.layers) - 1
        for n, (qkv_w, qkv_b, heads, layer) in enumerate(self.layers):
            qkv = lin(x, qkv_w, qkv_b, "none", [], "").view(batch, width, 3, heads, hidden // heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head size)
            if n == last:  # only the first token's query: the pooler reads that token alone
                ctx = F.scaled_dot_product_attention(q[:, :, :1], k, v, attn_mask=mask).reshape(batch, hidden)
                return torch.cat([ctx, x.view(batch, width, hidden)[:, 0]], dim=1)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(batch * width, hidden)
            x = self._after_attention(layer, ctx, x)
        raise ValueError("FusedBertEncoder needs at least one layer")

    def _after_attention(self, layer: nn.Module, ctx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A layer past its attention, row by row: the output product with the residual add and layer norm, then the
        feed-forward (intermediate product with its GELU, output product with the residual add) and layer norm."""
        lin = self.linear
        out = layer.attention.output
        x = out.LayerNorm(lin.binary(ctx, x, out.dense.weight, out.dense.bias, "add"))
        inter = lin(x, layer.intermediate.dense.weight, layer.intermediate.dense.bias, "gelu", [], "none")
        out = layer.output
        return out.LayerNorm(lin.binary(inter, x, out.dense.weight, out.dense.bias, "add"))

    def tail(self, states: torch.Tensor) -> torch.Tensor:
        """The pooled output ``(N, H)`` (bf16) of first-token states (:meth:`trunk`, of one batch or stacked from
        several): the last layer's attention output, residual add and layer norm, its feed-forward, the pooler."""
        hidden = states.shape[1] // 2
        x = self._after_attention(self.layers[-1][3], states[:, :hidden], states[:, hidden:])
        pooler = self.bert.pooler.dense
        return self.linear(x, pooler.weight, pooler.bias, "tanh", [], "")

    def __call__(self, **inputs: torch.Tensor | None) -> torch.Tensor:
        """The pooled output ``(B, H)`` (bf16) of a batch (:meth:`trunk`'s keyword inputs), as
        ``bert(...).pooler_output``: :meth:`tail` of its :meth:`trunk`."""
        return self.tail(self.trunk(**inputs))


__all__ = ["FusedBertEncoder", "autocast_context", "evaluating", "low_precision_copy"]
