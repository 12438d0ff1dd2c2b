"""ZEMEL building blocks: the two-stream (text + visual regions) co-attentional encoder and its layers.

:class:`ZemelTwoStreamEncoder` is one ZEMEL encoder (the context and the candidate encoder of
:class:`~modeling_mel.modeling_zemel.ZemelPolyEncoder` are two of them, with separate weights):

* a BERT text stream (:class:`ZemelTextEmbeddings`, `encoder.layer.N` of :class:`ZemelLayer`, :class:`ZemelPooler`;
  the submodule names of `BertModel`, so a BERT checkpoint fills it by name),
* a visual stream over region features (:class:`ZemelVisualEmbeddings`, then visual self-attention layers),
* ViLBERT-style co-attention blocks (:class:`ZemelCoAttentionLayer`, `co_layer.N`),
* the fusion of both streams (:class:`ZemelFusion`).

This file ships with saved ZEMEL models (``modeling_zemel.py`` imports it, and ``save_pretrained`` copies the files a
model file imports relatively): it imports only torch, transformers and, relatively, ``configuration_zemel``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN

from .configuration_zemel import ZemelConfig


# ----------------------------------------------------------------------------------------------------------------------
# Blocks (BERT submodule names: attention.self.{query,key,value}, attention.output.{dense,LayerNorm}, intermediate,
# output)
# ----------------------------------------------------------------------------------------------------------------------


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 1/0 mask -> (B, 1, 1, S) additive mask: 0 to keep, the dtype's minimum to drop (finite: no NaN)."""
    mask = mask.to(dtype)[:, None, None, :]
    return (1.0 - mask) * torch.finfo(dtype).min


class ZemelTextEmbeddings(nn.Module):
    """BERT embeddings (word + position + token type, LayerNorm, dropout); names as in `BertEmbeddings`."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False
        )

    def forward(self, input_ids: torch.LongTensor, token_type_ids: torch.LongTensor | None = None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings {self.position_embeddings.num_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        position_ids = self.position_ids[:, :seq_len]
        embeddings = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(position_ids)
        )  # (B, T, H)
        return self.dropout(self.LayerNorm(embeddings))


class ZemelVisualEmbeddings(nn.Module):
    """Region features and their spatial vectors, each projected to the visual hidden size, summed (ViLBERT)."""

    def __init__(self, config: ZemelConfig):
        super().__init__()
        self.image_embeddings = nn.Linear(config.v_feature_dim, config.v_hidden_size)
        self.image_location_embeddings = nn.Linear(config.v_spatial_dim, config.v_hidden_size)
        self.LayerNorm = nn.LayerNorm(config.v_hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.v_hidden_dropout_prob)

    def forward(self, visual_features: torch.Tensor, visual_spatial: torch.Tensor) -> torch.Tensor:
        embeddings = self.image_embeddings(visual_features) + self.image_location_embeddings(visual_spatial)  # (B, R, V)
        return self.dropout(self.LayerNorm(embeddings))


class ZemelSelfAttention(nn.Module):
    """Multi-head attention; queries from `hidden_states`, keys/values from `context_states` (itself by default).

    `hidden_size` is the query side, `context_size` the key/value side, `all_head_size` the inner size.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        attention_probs_dropout_prob: float,
        context_size: int | None = None,
        all_head_size: int | None = None,
    ):
        super().__init__()
        all_head_size = all_head_size or hidden_size
        if all_head_size % num_attention_heads != 0:
            raise ValueError(f"attention size {all_head_size} is not a multiple of the heads {num_attention_heads}")
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = all_head_size // num_attention_heads
        self.all_head_size = all_head_size
        self.query = nn.Linear(hidden_size, all_head_size)
        self.key = nn.Linear(context_size or hidden_size, all_head_size)
        self.value = nn.Linear(context_size or hidden_size, all_head_size)
        self.dropout = nn.Dropout(attention_probs_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_attention_heads, self.attention_head_size).transpose(1, 2)  # (B, h, S, d)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        context_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        context_states = hidden_states if context_states is None else context_states
        query = self._heads(self.query(hidden_states))  # (B, h, Tq, d)
        key = self._heads(self.key(context_states))  # (B, h, Tk, d)
        value = self._heads(self.value(context_states))  # (B, h, Tk, d)
        if not self.training and query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16):
            # Low-precision CPU inference: SDPA's CPU kernel spends most of its time in a bf16 softmax, and
            # attention took a quarter of the encoder's time on short sequences; two bf16 products with the
            # softmax in float32 are several times faster and no less accurate.
            scores = torch.matmul(query, key.transpose(-1, -2)).float().mul_(self.attention_head_size**-0.5)
            if attention_mask is not None:
                scores = scores + attention_mask
            context = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)
            return context.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)
        context = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,  # (B, 1, 1, Tk) additive
            dropout_p=self.dropout.p if self.training else 0.0,
        )  # (B, h, Tq, d)
        return context.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)  # (B, Tq, A)


class ZemelSelfOutput(nn.Module):
    """Projection of the attention output, dropout, residual LayerNorm (`BertSelfOutput`)."""

    def __init__(self, in_size: int, hidden_size: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class ZemelAttention(nn.Module):
    """Attention + output (`BertAttention` names: `self`, `output`)."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        attention_dropout: float,
        hidden_dropout: float,
        eps: float,
        context_size: int | None = None,
        all_head_size: int | None = None,
    ):
        super().__init__()
        self.self = ZemelSelfAttention(hidden_size, num_attention_heads, attention_dropout, context_size, all_head_size)
        self.output = ZemelSelfOutput(self.self.all_head_size, hidden_size, hidden_dropout, eps)

    def forward(self, hidden_states, attention_mask=None, context_states=None) -> torch.Tensor:
        return self.output(self.self(hidden_states, attention_mask, context_states), hidden_states)


class ZemelIntermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.intermediate_act_fn = ACT2FN[act] if isinstance(act, str) else act

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class ZemelLayer(nn.Module):
    """Transformer layer (self-attention, feed-forward) with `BertLayer` submodule names."""

    def __init__(self, hidden_size, num_heads, intermediate_size, act, attention_dropout, hidden_dropout, eps):
        super().__init__()
        self.attention = ZemelAttention(hidden_size, num_heads, attention_dropout, hidden_dropout, eps)
        self.intermediate = ZemelIntermediate(hidden_size, intermediate_size, act)
        self.output = ZemelSelfOutput(intermediate_size, hidden_size, hidden_dropout, eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        attention_output = self.attention(hidden_states, attention_mask)
        return self.output(self.intermediate(attention_output), attention_output)


class ZemelLayerStack(nn.Module):
    """`layer.N` container (named like `BertEncoder` so `encoder.layer.N...` keys match)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class ZemelCoAttentionLayer(nn.Module):
    """ViLBERT co-attention block.

    Two separate attention modules, one per direction (no weights shared between directions):
    `text_attention` (text queries, visual keys/values: language-conditioned on the image) and `visual_attention`
    (visual queries, text keys/values). Both read the block's inputs; each stream then has its own feed-forward.
    An example with no valid key on the other side (e.g. text-only input: every region masked) passes through the
    block unchanged for that stream, so no attention over an empty set is ever used (no NaN, no garbage).

    The text stream's update is a gated residual (Flamingo's tanh gate, initialised at 0):
    `text + tanh(text_gate) * (block(text) - text)`, so a pre-trained text stream is unchanged at the start of
    training, with or without an image, and images open the gate through training.
    """

    def __init__(self, config: ZemelConfig):
        super().__init__()
        tc = config.text_config
        eps = config.layer_norm_eps
        self.text_attention = ZemelAttention(
            tc.hidden_size,
            config.bi_num_attention_heads,
            config.v_attention_probs_dropout_prob,
            config.v_hidden_dropout_prob,
            eps,
            context_size=config.v_hidden_size,
            all_head_size=config.bi_hidden_size,
        )
        self.visual_attention = ZemelAttention(
            config.v_hidden_size,
            config.bi_num_attention_heads,
            config.v_attention_probs_dropout_prob,
            config.v_hidden_dropout_prob,
            eps,
            context_size=tc.hidden_size,
            all_head_size=config.bi_hidden_size,
        )
        self.text_intermediate = ZemelIntermediate(tc.hidden_size, tc.intermediate_size, tc.hidden_act)
        self.text_output = ZemelSelfOutput(tc.intermediate_size, tc.hidden_size, tc.hidden_dropout_prob, eps)
        self.visual_intermediate = ZemelIntermediate(config.v_hidden_size, config.v_intermediate_size, config.v_hidden_act)
        self.visual_output = ZemelSelfOutput(
            config.v_intermediate_size, config.v_hidden_size, config.v_hidden_dropout_prob, eps
        )
        self.text_gate = nn.Parameter(torch.full((1,), float(getattr(config, "modality_gate_init", 0.0))))

    def forward(
        self,
        text_states: torch.Tensor,  # (B, T, H)
        text_mask: torch.Tensor,  # (B, T) 0/1
        visual_states: torch.Tensor,  # (B, R, V)
        visual_mask: torch.Tensor,  # (B, R) 0/1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = text_states.dtype
        text_ctx = self.text_attention(text_states, _additive_mask(visual_mask, dtype), visual_states)  # (B, T, H)
        visual_ctx = self.visual_attention(visual_states, _additive_mask(text_mask, dtype), text_states)  # (B, R, V)
        text_out = self.text_output(self.text_intermediate(text_ctx), text_ctx)
        text_out = text_states + torch.tanh(self.text_gate).to(dtype) * (text_out - text_states)  # gated residual
        visual_out = self.visual_output(self.visual_intermediate(visual_ctx), visual_ctx)
        has_visual = (visual_mask.sum(-1) > 0)[:, None, None]  # (B, 1, 1)
        has_text = (text_mask.sum(-1) > 0)[:, None, None]
        text_out = torch.where(has_visual, text_out, text_states)
        visual_out = torch.where(has_text, visual_out, visual_states)
        return text_out, visual_out


class ZemelPooler(nn.Module):
    """First position -> dense -> tanh (`BertPooler`)."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.dense = nn.Linear(in_size, out_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class ZemelFusion(nn.Module):
    """Fuses the two streams: pooled vectors into one vector, visual tokens into the text hidden size.

    `concat`: `t_pool + dense([t_pool ; v_pool])`; `sum`: `t_pool + dense(v_pool)`, with `dense` zero-initialised,
    so the untrained fusion returns the text vector unchanged. `visual_projection` maps each visual output token to
    the text hidden size so the context outputs `h_1..h_N` are the text tokens then the regions; the projected
    tokens are scaled by `tanh(visual_gate)` (initialised at 0).
    """

    def __init__(self, config: ZemelConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.mode = config.fusion
        in_size = hidden + config.v_hidden_size if self.mode == "concat" else config.v_hidden_size
        self.dense = nn.Linear(in_size, hidden)
        self.dense._zemel_zero_init = True  # identity-at-init fusion (see _init_weights)
        self.visual_projection = nn.Linear(config.v_hidden_size, hidden)
        self.visual_gate = nn.Parameter(torch.full((1,), float(getattr(config, "modality_gate_init", 0.0))))
        self.dropout = nn.Dropout(config.v_hidden_dropout_prob)

    def forward(self, text_pooled, visual_pooled, visual_states):
        fused_in = torch.cat([text_pooled, visual_pooled], dim=-1) if self.mode == "concat" else visual_pooled
        pooled = text_pooled + self.dropout(self.dense(fused_in))  # (B, H)
        visual_tokens = None
        if visual_states is not None:
            gate = torch.tanh(self.visual_gate).to(visual_states.dtype)
            visual_tokens = gate * self.visual_projection(visual_states)  # (B, R, H)
        return pooled, visual_tokens


class ZemelTwoStreamEncoder(nn.Module):
    """One ZEMEL encoder: BERT text stream + visual stream + co-attention + fusion.

    Text-stream names (`embeddings`, `encoder.layer.N`, `pooler`) are those of `BertModel`.
    """

    def __init__(self, config: ZemelConfig):
        super().__init__()
        tc = config.text_config
        self.config = config
        self.embeddings = ZemelTextEmbeddings(tc)
        self.encoder = ZemelLayerStack(
            [
                ZemelLayer(
                    tc.hidden_size,
                    tc.num_attention_heads,
                    tc.intermediate_size,
                    tc.hidden_act,
                    tc.attention_probs_dropout_prob,
                    tc.hidden_dropout_prob,
                    tc.layer_norm_eps,
                )
                for _ in range(tc.num_hidden_layers)
            ]
        )
        self.pooler = ZemelPooler(tc.hidden_size, tc.hidden_size)
        self.v_embeddings = ZemelVisualEmbeddings(config)
        self.v_encoder = ZemelLayerStack(
            [
                ZemelLayer(
                    config.v_hidden_size,
                    config.v_num_attention_heads,
                    config.v_intermediate_size,
                    config.v_hidden_act,
                    config.v_attention_probs_dropout_prob,
                    config.v_hidden_dropout_prob,
                    config.layer_norm_eps,
                )
                for _ in range(config.v_num_hidden_layers)
            ]
        )
        self.co_layer = nn.ModuleList([ZemelCoAttentionLayer(config) for _ in config.co_attention_layers])
        self.v_pooler = ZemelPooler(config.v_hidden_size, config.v_hidden_size)
        self.fusion = ZemelFusion(config)

    def forward(
        self,
        input_ids: torch.LongTensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.LongTensor | None = None,  # (B, T)
        visual_features: torch.Tensor | None = None,  # (B, R, Dv)
        visual_spatial: torch.Tensor | None = None,  # (B, R, 5)
        visual_attention_mask: torch.Tensor | None = None,  # (B, R)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (pooled (B, H), sequence outputs h_1..h_N (B, T+R, H), their mask (B, T+R))."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        text_add_mask = _additive_mask(attention_mask, text.dtype)
        has_regions = visual_features is not None and visual_features.shape[1] > 0
        if has_regions:
            batch, num_regions = visual_features.shape[:2]
            if visual_spatial is None:
                raise ValueError("visual_spatial is required with visual_features")
            if visual_attention_mask is None:
                visual_attention_mask = torch.ones(batch, num_regions, dtype=attention_mask.dtype, device=text.device)
            visual_features = visual_features.to(text.dtype)
            visual = self.v_embeddings(visual_features, visual_spatial.to(text.dtype))  # (B, R, V)
            visual_add_mask = _additive_mask(visual_attention_mask, text.dtype)
        else:
            visual = None

        t_layers, v_layers = self.encoder.layer, self.v_encoder.layer
        t_next = v_next = 0
        for block, t_stop, v_stop in zip(self.co_layer, self.config.co_attention_layers, self.config.v_co_attention_layers):
            while t_next <= t_stop:
                text = t_layers[t_next](text, text_add_mask)
                t_next += 1
            if visual is not None:
                while v_next <= v_stop:
                    visual = v_layers[v_next](visual, visual_add_mask)
                    v_next += 1
                text, visual = block(text, attention_mask, visual, visual_attention_mask)
        for layer in t_layers[t_next:]:
            text = layer(text, text_add_mask)
        if visual is not None:
            for layer in v_layers[v_next:]:
                visual = layer(visual, visual_add_mask)

        pooling = getattr(self.config, "pooling", "pooler")
        if pooling == "mean":
            weights = attention_mask.to(text.dtype)[..., None]  # (B, T, 1)
            text_pooled = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
        elif pooling == "cls":
            text_pooled = text[:, 0]  # (B, H)
        else:
            text_pooled = self.pooler(text)  # (B, H)
        if visual is not None:
            has_visual = (visual_attention_mask[:, :1] > 0).to(text.dtype)  # (B, 1): first region = whole image
            visual_pooled = self.v_pooler(visual) * has_visual  # (B, V)
        else:
            visual_pooled = text.new_zeros(text.shape[0], self.config.v_hidden_size)
        pooled, visual_tokens = self.fusion(text_pooled, visual_pooled, visual)
        if getattr(self.config, "normalize_embeddings", False):
            pooled = F.normalize(pooled, dim=-1)
        if visual_tokens is not None:
            sequence = torch.cat([text, visual_tokens], dim=1)  # (B, T+R, H)
            mask = torch.cat([attention_mask, visual_attention_mask.to(attention_mask.dtype)], dim=1)  # (B, T+R)
        else:
            sequence, mask = text, attention_mask
        return pooled, sequence, mask


__all__ = [
    "ZemelTextEmbeddings",
    "ZemelVisualEmbeddings",
    "ZemelSelfAttention",
    "ZemelSelfOutput",
    "ZemelAttention",
    "ZemelIntermediate",
    "ZemelLayer",
    "ZemelLayerStack",
    "ZemelCoAttentionLayer",
    "ZemelPooler",
    "ZemelFusion",
    "ZemelTwoStreamEncoder",
]
