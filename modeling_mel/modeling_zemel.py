"""ZEMEL: co-attentional two-stream encoders with a poly-encoder head (zero-shot multimodal entity linking).

Each of the two encoders (context, candidate; separate weights) is

* a BERT text stream (`embeddings`, `encoder.layer.N`, `pooler`: the submodule names of `BertModel`, so a BERT
  checkpoint fills it by name),
* a visual stream over region features: `Linear(v_feature_dim, v_hidden) + Linear(v_spatial_dim, v_hidden)`,
  summed, LayerNorm, dropout, then visual self-attention layers,
* ViLBERT-style co-attention blocks (`co_layer.N`): text queries attend to the visual keys/values and visual queries
  attend to the text keys/values, with one module per direction, followed by a feed-forward per stream,
* a fusion of both streams: pooled text and visual vectors concatenated and projected ("we contact the output"),
  and per-token outputs `h_1..h_N` = text tokens followed by the projected visual regions.

The poly head (eq. 1-5 of the paper) attends `m` learned codes over the context outputs; the candidate vector attends
over the codes; the score is a dot product. Candidate vectors are cacheable (`encode_candidates` + `score`).

The encoder and its building blocks (embeddings, attention, co-attention, fusion) are in ``modeling_zemel_layers.py``
(shipped with saved models next to this file); their names can be imported from this module as well.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_zemel import ZemelConfig, config_hash
from .low_precision import autocast_context as _autocast
from .low_precision import evaluating, low_precision_copy
from .modeling_zemel_layers import (  # noqa: F401 - the layers' names stay importable from this module
    ZemelAttention,
    ZemelCoAttentionLayer,
    ZemelFusion,
    ZemelIntermediate,
    ZemelLayer,
    ZemelLayerStack,
    ZemelPooler,
    ZemelSelfAttention,
    ZemelSelfOutput,
    ZemelTextEmbeddings,
    ZemelTwoStreamEncoder,
    ZemelVisualEmbeddings,
    _additive_mask,
)

try:  # transformers >= 5: init functions that respect already-loaded weights
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    init = None

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ZemelContextOutput(ModelOutput):
    r"""Encoded mention contexts (what :meth:`ZemelPolyEncoder.score` needs).

    Args:
        sequence_output (`torch.FloatTensor` of shape `(batch_size, num_tokens + num_regions, hidden_size)`):
            Fused per-token outputs `h_1..h_N`: text tokens, then visual regions projected to the text hidden size.
        attention_mask (`torch.LongTensor` of shape `(batch_size, num_tokens + num_regions)`):
            1 for real tokens/regions, 0 for padding.
        poly_codes (`torch.FloatTensor` of shape `(batch_size, poly_m, hidden_size)`, *optional*):
            The `m` global context codes `y_ctx^1..y_ctx^m` (eq. 1-2); set when `config.scoring == "poly"`.
        pooled_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Fused pooled vector (the bi-encoder context vector).
    """

    sequence_output: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    poly_codes: torch.FloatTensor | None = None
    pooled_output: torch.FloatTensor | None = None


@dataclass
class ZemelOutput(ModelOutput):
    r"""Output of :class:`ZemelPolyEncoder`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Cross-entropy over the candidates; returned with `labels`, or with in-batch negatives.
        scores (`torch.FloatTensor` of shape `(batch_size, num_candidates)`):
            `s(ctx, cand_k)`; `num_candidates` is `K` for per-example candidate lists `(B, K, ...)` and `C` for a
            shared candidate set `(C, ...)` (in-batch: `C == B`).
        context_embeddings (`torch.FloatTensor`):
            `(batch_size, poly_m, hidden_size)` poly codes, or `(batch_size, hidden_size)` in bi mode.
        candidate_embeddings (`torch.FloatTensor`):
            `(batch_size, K, hidden_size)` or `(C, hidden_size)` candidate vectors.
    """

    loss: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    context_embeddings: torch.FloatTensor | None = None
    candidate_embeddings: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Pre-trained model + poly encoder
# ----------------------------------------------------------------------------------------------------------------------


def _check_loss_inputs(loss_type: str, labels, candidate_entity_index, candidate_input_ids) -> None:
    """``ValueError`` naming the tensor that ``loss_type`` needs and lacks, or is given and does not use."""
    kinds = ("candidates", "batch_candidates", "in_batch", "none")
    if loss_type not in kinds:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {list(kinds)}")
    if loss_type == "batch_candidates":
        if labels is None or candidate_entity_index is None:
            raise ValueError("loss_type='batch_candidates' needs labels (B,) and candidate_entity_index (B, K)")
        if candidate_input_ids is None or candidate_input_ids.dim() != 3:
            raise ValueError("loss_type='batch_candidates' needs per-example candidates: candidate_input_ids (B, K, T)")
    elif candidate_entity_index is not None:
        raise ValueError(f"candidate_entity_index is used by loss_type='batch_candidates' only (got {loss_type!r})")
    if loss_type in ("in_batch", "none") and labels is not None:
        raise ValueError(f"loss_type={loss_type!r} takes no labels (in_batch: the target is arange(B))")


class ZemelPreTrainedModel(PreTrainedModel):
    """Weight init and loading glue for ZEMEL models."""

    config_class = ZemelConfig
    base_model_prefix = "zemel"
    supports_gradient_checkpointing = False
    _no_split_modules = ["ZemelLayer", "ZemelCoAttentionLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if init is not None:
            normal_, zeros_, ones_, copy_ = init.normal_, init.zeros_, init.ones_, init.copy_
        else:  # pragma: no cover
            normal_, zeros_, ones_ = nn.init.normal_, nn.init.zeros_, nn.init.ones_
            copy_ = lambda t, v: t.copy_(v)  # noqa: E731
        if isinstance(module, nn.Linear):
            if getattr(module, "_zemel_zero_init", False) and not getattr(self.config, "modality_gate_init", 0.0):
                zeros_(module.weight)
            else:
                normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            ones_(module.weight)
            zeros_(module.bias)
        elif isinstance(module, ZemelTextEmbeddings):
            copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, ZemelPolyEncoder):
            normal_(module.poly_codes, mean=0.0, std=std)
        elif isinstance(module, ZemelCoAttentionLayer):
            copy_(module.text_gate, torch.full_like(module.text_gate, float(getattr(self.config, "modality_gate_init", 0.0))))
        elif isinstance(module, ZemelFusion):
            copy_(module.visual_gate, torch.full_like(module.visual_gate, float(getattr(self.config, "modality_gate_init", 0.0))))


class ZemelPolyEncoder(ZemelPreTrainedModel):
    r"""ZEMEL: context encoder + candidate encoder (separate weights) + poly-linking head.

    Inputs of `forward` (context side; candidate side has the same names prefixed with `candidate_`):

    - `input_ids`, `attention_mask`, `token_type_ids`: `(B, T)`; text `[CLS] ctx_l [M] mention [/M] ctx_r [SEP]`.
    - `visual_features` `(B, R, v_feature_dim)`, `visual_spatial` `(B, R, 5)`, `visual_attention_mask` `(B, R)`:
      regions (whole image first, then boxes); omit them or mask all regions for text-only input.
    - `candidate_input_ids`: `(B, K, Tc)` per-example candidate lists (gold at `labels`), or `(C, Tc)` one shared set
      (in-batch negatives: `C == B`, the candidate of example `i` is its gold). Candidate visual tensors follow the
      same leading dims: `(B, K, Rc, Dv)` or `(C, Rc, Dv)`.
    - `candidate_embeddings`: a precomputed cache `(C, H)` or `(B, K, H)` instead of candidate inputs.
    - `labels`: `(B,)` index of the gold candidate (`-100` ignores an example).
    """

    accepts_loss_kwargs = False
    _tied_weights_keys = None
    #: how this family links (read by the pipeline, `EntityIndex`, `mel index` / `mel link`): candidate vectors are
    #: encoded once, cached and indexed; a context is scored against them with `score`.
    linking_method = "dense"

    def __init__(self, config: ZemelConfig):
        super().__init__(config)
        self.context_encoder = ZemelTwoStreamEncoder(config)
        self.candidate_encoder = ZemelTwoStreamEncoder(config)
        # The m learned codes p_1..p_m of eq. 1-2 (only used in poly mode; kept in bi mode so both load alike).
        self.poly_codes = nn.Parameter(torch.empty(config.poly_m, config.text_config.hidden_size))
        self.post_init()

    # -- embeddings ------------------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.context_encoder.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.context_encoder.embeddings.word_embeddings = value

    def resize_token_embeddings(self, new_num_tokens: int | None = None, *args, **kwargs) -> nn.Embedding:
        """Resize the word embeddings of BOTH encoders to `new_num_tokens`; new rows get the mean old embedding."""
        if new_num_tokens is None:
            return self.get_input_embeddings()
        for encoder in (self.context_encoder, self.candidate_encoder):
            old = encoder.embeddings.word_embeddings
            if old.num_embeddings == new_num_tokens:
                continue
            new = nn.Embedding(
                new_num_tokens, old.embedding_dim, padding_idx=old.padding_idx, device=old.weight.device, dtype=old.weight.dtype
            )
            n = min(old.num_embeddings, new_num_tokens)
            with torch.no_grad():
                new.weight[:n] = old.weight[:n]
                if new_num_tokens > n:
                    new.weight[n:] = old.weight.mean(dim=0, keepdim=True)
            new.weight._is_hf_initialized = True
            encoder.embeddings.word_embeddings = new
        self.config.text_config.vocab_size = new_num_tokens
        return self.get_input_embeddings()

    def special_token_rows(self, tokenizer, old_size: int) -> dict[int, int]:
        """`{new row: source row}` of the added special tokens (`[M]`, `[/M]`, `[ENT]`) that start as a copy of an
        existing token's embedding (`config.special_token_init`), for a vocabulary of `old_size` rows before them.
        Records each special token's id in the config."""
        init = getattr(self.config, "special_token_init", None) or {}
        rows = {}
        for attr in ("mention_start_token", "mention_end_token", "entity_token"):
            token = getattr(self.config, attr)
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"special token {token!r} is not in the tokenizer; build it with ZemelProcessor")
            setattr(self.config, f"{attr}_id", int(token_id))
            source = init.get(token)
            if token_id >= old_size and source:  # a new row: start from the embedding of an existing token
                source_id = tokenizer.convert_tokens_to_ids(source)
                if source_id is None or source_id == tokenizer.unk_token_id or source_id >= old_size:
                    raise ValueError(
                        f"special_token_init maps {token!r} to {source!r}, which is not a token of the backbone's "
                        "vocabulary; give an existing token (e.g. '\"' or '.') or remove the entry"
                    )
                rows[int(token_id)] = int(source_id)
        return rows

    def resize_for_processor(self, processor) -> None:
        """Make the vocabulary match `processor.tokenizer` (with `[M]`, `[/M]`, `[ENT]`) and record the token ids."""
        tokenizer = getattr(processor, "tokenizer", processor)
        old_size = self.get_input_embeddings().num_embeddings
        self.resize_token_embeddings(len(tokenizer))
        rows = self.special_token_rows(tokenizer, old_size)
        with torch.no_grad():
            for encoder in (self.context_encoder, self.candidate_encoder):
                weight = encoder.embeddings.word_embeddings.weight
                for token_id, source_id in rows.items():
                    weight[token_id] = weight[source_id]

    # -- encoding --------------------------------------------------------------------------------------------------
    def _poly_attend(self, sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 1-2: y_ctx^i = sum_j softmax_j(p_i . h_j) h_j over unmasked positions. Returns (B, m, H)."""
        logits = torch.einsum("mh,bnh->bmn", self.poly_codes.to(sequence.dtype), sequence)  # (B, m, N)
        logits = logits.masked_fill(~mask.bool()[:, None, :], torch.finfo(logits.dtype).min)
        weights = logits.softmax(dim=-1)  # (B, m, N)
        return torch.bmm(weights, sequence)  # (B, m, H)

    def encode_context(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_spatial: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
    ) -> ZemelContextOutput:
        """Encode mention contexts `(B, T)` (+ regions `(B, R, ...)`); poly codes are computed in poly mode."""
        pooled, sequence, mask = self.context_encoder(
            input_ids, attention_mask, token_type_ids, visual_features, visual_spatial, visual_attention_mask
        )
        codes = self._poly_attend(sequence, mask) if self.config.scoring == "poly" else None
        return ZemelContextOutput(sequence_output=sequence, attention_mask=mask, poly_codes=codes, pooled_output=pooled)

    def encode_candidates(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_spatial: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode candidates `(K, Tc)` -> cache `(K, H)`; `(B, K, Tc)` -> `(B, K, H)` (leading dims kept)."""
        lead = input_ids.shape[:-1]

        def flat(x, trailing):
            return None if x is None else x.reshape(-1, *x.shape[len(lead) :]) if x.dim() == len(lead) + trailing else x

        pooled, _, _ = self.candidate_encoder(
            input_ids.reshape(-1, input_ids.shape[-1]),
            flat(attention_mask, 1),
            flat(token_type_ids, 1),
            flat(visual_features, 2),
            flat(visual_spatial, 2),
            flat(visual_attention_mask, 1),
        )
        return pooled.reshape(*lead, pooled.shape[-1])  # (K, H) or (B, K, H)

    def check_candidate_cache(self, candidate_cache: torch.Tensor, cache_config_hash: str | None = None) -> None:
        """Raise ValueError when a cache does not fit this model (hidden size, or config hash if given)."""
        hidden = self.config.text_config.hidden_size
        if candidate_cache.dim() not in (2, 3) or candidate_cache.shape[-1] != hidden:
            raise ValueError(
                f"candidate cache has hidden size {candidate_cache.shape[-1] if candidate_cache.dim() else None} "
                f"(shape {tuple(candidate_cache.shape)}) but this model's hidden size is {hidden}; "
                "re-encode the candidates with this model"
            )
        if cache_config_hash is not None and cache_config_hash != config_hash(self.config):
            raise ValueError(
                f"candidate cache was built by a model with config hash {cache_config_hash}, "
                f"this model has {config_hash(self.config)}"
            )

    def score(self, context_outputs: ZemelContextOutput, candidate_cache: torch.Tensor) -> torch.Tensor:
        """Scores of contexts against candidates.

        `candidate_cache` `(C, H)` (shared by all contexts) gives `(B, C)`; `(B, K, H)` (per example) gives `(B, K)`.
        Poly mode follows eq. 3-5; bi mode is the dot product of the pooled context vector and the candidate.
        """
        self.check_candidate_cache(candidate_cache)
        if self.config.scoring == "bi":
            ctx = context_outputs.pooled_output  # (B, H)
            cand = candidate_cache.to(ctx.dtype)
            if cand.dim() == 2:
                return ctx @ cand.T  # (B, C)
            return torch.einsum("bh,bkh->bk", ctx, cand)  # (B, K)
        codes = context_outputs.poly_codes
        if codes is None:
            codes = self._poly_attend(context_outputs.sequence_output, context_outputs.attention_mask)
        cand = candidate_cache.to(codes.dtype)
        if cand.dim() == 2:
            # (B, m, C): one product, no (B, C, H) copy; the softmax runs over the contiguous code axis (1)
            logits, code_dim = torch.matmul(codes, cand.T), 1
        elif cand.shape[0] != codes.shape[0]:
            raise ValueError(f"per-example candidate cache has batch {cand.shape[0]}, contexts have {codes.shape[0]}")
        else:
            logits, code_dim = torch.bmm(cand, codes.transpose(1, 2)), -1  # (B, K, m)
        attn = logits.softmax(dim=code_dim)  # eq. 4
        # eq. 3 + 5 without building ctx = attn @ codes (B, K, H): ctx . cand = sum_j attn_j (codes_j . cand).
        dot = (attn * logits).sum(dim=code_dim)  # (B, K)
        if getattr(self.config, "normalize_embeddings", False):
            # cosine scores, as the candidate vectors are normalised: |ctx|^2 = attn^T (codes codes^T) attn
            gram = torch.bmm(codes, codes.transpose(1, 2))  # (B, m, m)
            if code_dim == 1:
                attn = attn.transpose(1, 2)  # (B, C, m)
            norm2 = (torch.bmm(attn, gram) * attn).sum(dim=-1)  # (B, K)
            dot = dot / norm2.clamp_min(0).sqrt().clamp_min(1e-12)  # as F.normalize (eps 1e-12)
        return dot  # (B, K): eq. 5

    # -- fast inference paths ----------------------------------------------------------------------------------------
    def fast_encode_candidates(
        self,
        input_ids: torch.LongTensor | list[list[int]],
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_spatial: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        batch_size: int = 64,
        autocast_dtype: torch.dtype | None = None,
        cache_low_precision_weights: bool = True,
    ) -> torch.Tensor:
        """Candidate cache `(K, H)` (float32, input order) for many candidates: length-sorted batches, each cut to
        its longest sequence, under `torch.inference_mode` and optional CPU/GPU autocast (`torch.bfloat16`). With
        autocast the candidate encoder's linear weights are cast once and kept, as in :meth:`inference_context`
        (autocast alone would cast them again for every batch).

        `input_ids` is a padded `(K, T)` tensor (with `attention_mask`) or a list of unpadded token-id lists (a
        cached tokenisation, e.g. `processor.tokenize_candidates`). In float32 the result equals
        :meth:`encode_candidates` up to float rounding.
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        device = self.device
        if isinstance(input_ids, torch.Tensor):
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be (K, T) or a list of id lists, got shape {tuple(input_ids.shape)}")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            lengths = attention_mask.sum(-1).tolist()
            ids_rows = None
        else:
            ids_rows = [list(map(int, r)) for r in input_ids]
            lengths = [len(r) for r in ids_rows]
        n = len(lengths)
        out = torch.zeros(n, self.config.text_config.hidden_size, dtype=torch.float32, device=device)
        if n == 0:
            return out
        pad = self.config.text_config.pad_token_id or 0
        order = sorted(range(n), key=lambda i: lengths[i])
        with evaluating(self):
            encoder = self.candidate_encoder
            if cache_low_precision_weights and autocast_dtype not in (None, torch.float32):
                encoder = self._low_precision_copy("candidate_encoder", autocast_dtype)
            with torch.inference_mode(), _autocast(autocast_dtype, device):
                for start in range(0, n, int(batch_size)):
                    idx = order[start : start + int(batch_size)]
                    width = max(1, max(lengths[i] for i in idx))
                    sel = torch.tensor(idx)
                    if ids_rows is None:
                        ids = input_ids[sel, :width]
                        mask = attention_mask[sel, :width]
                        types = token_type_ids[sel, :width] if token_type_ids is not None else None
                    else:
                        ids = torch.full((len(idx), width), pad, dtype=torch.long)
                        mask = torch.zeros((len(idx), width), dtype=torch.long)
                        for row, i in enumerate(idx):
                            ids[row, : lengths[i]] = torch.tensor(ids_rows[i], dtype=torch.long)
                            mask[row, : lengths[i]] = 1
                        types = None
                    visual = [None if x is None else x[sel].to(device) for x in (visual_features, visual_spatial, visual_attention_mask)]
                    pooled, _, _ = encoder(
                        ids.to(device), mask.to(device), None if types is None else types.to(device), *visual
                    )
                    out[sel.to(device)] = pooled.float()
        return out

    def _low_precision_copy(self, name: str, dtype: torch.dtype) -> nn.Module:
        """Inference copy of submodule `name` with its `nn.Linear` weights in `dtype` (`low_precision.low_precision_copy`)."""
        return low_precision_copy(self, name, dtype)

    def inference_context(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_spatial: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        autocast_dtype: torch.dtype | None = None,
        cache_low_precision_weights: bool = True,
    ) -> ZemelContextOutput:
        """:meth:`encode_context` for inference: eval mode, `torch.inference_mode`, optional autocast
        (`torch.bfloat16` on CPU) of the context encoder; the outputs and the poly codes (eq. 1-2) are float32.

        With autocast, the linear weights are cast once and kept (`cache_low_precision_weights`): autocast would
        otherwise cast every weight again on every call, which dominates batch-1 latency. The copy is rebuilt when
        a parameter changes (in-place update, new tensor or device); the results are those of plain autocast.
        """
        device = self.device
        with evaluating(self), torch.inference_mode():
            encoder = self.context_encoder
            if cache_low_precision_weights and autocast_dtype not in (None, torch.float32):
                encoder = self._low_precision_copy("context_encoder", autocast_dtype)
            with _autocast(autocast_dtype, device):
                pooled, sequence, mask = encoder(
                    input_ids, attention_mask, token_type_ids, visual_features, visual_spatial, visual_attention_mask
                )
            sequence, pooled = sequence.float(), pooled.float()
            codes = self._poly_attend(sequence, mask) if self.config.scoring == "poly" else None
            return ZemelContextOutput(sequence_output=sequence, attention_mask=mask, poly_codes=codes, pooled_output=pooled)

    def link(
        self,
        candidate_cache: torch.Tensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_spatial: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        autocast_dtype: torch.dtype | None = None,
        cache_low_precision_weights: bool = True,
    ) -> torch.Tensor:
        """Inference: scores `(B, K)` (float32) of contexts against a cached candidate set (`(K, H)` or `(B, K, H)`):
        :meth:`inference_context` (optional autocast, cached low-precision weights), then :meth:`score` in float32."""
        self.check_candidate_cache(candidate_cache)
        context = self.inference_context(
            input_ids, attention_mask, token_type_ids, visual_features, visual_spatial, visual_attention_mask,
            autocast_dtype=autocast_dtype, cache_low_precision_weights=cache_low_precision_weights,
        )
        with torch.inference_mode():
            return self.score(context, candidate_cache.to(device=self.device, dtype=torch.float32))

    # -- forward ---------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_spatial: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        candidate_input_ids: torch.LongTensor | None = None,
        candidate_attention_mask: torch.Tensor | None = None,
        candidate_token_type_ids: torch.LongTensor | None = None,
        candidate_visual_features: torch.Tensor | None = None,
        candidate_visual_spatial: torch.Tensor | None = None,
        candidate_visual_attention_mask: torch.Tensor | None = None,
        candidate_embeddings: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        candidate_entity_index: torch.LongTensor | None = None,
        loss_type: str | None = None,
        return_dict: bool | None = None,
    ) -> ZemelOutput | tuple:
        r"""Score contexts against candidates; the loss named by `loss_type` (default: `config.loss_type`).

        `loss_type`: `"candidates"` (cross-entropy over each context's own candidates `(B, K)` or a shared set
        `(B, C)`, with `labels`; no loss without them), `"batch_candidates"` (ZEMEL's training loss: each context
        against the per-example candidates of the whole batch, `scores` `(B, B*K)`, target `b*K + labels[b]`, other
        copies of its gold entity masked out as given by `candidate_entity_index` `(B, K)`; needs both),
        `"in_batch"` (one candidate per context, `(B, B)`, target `arange(B)`) or `"none"`. A tensor the chosen loss
        does not use, or one it needs and lacks, is a `ValueError` naming it.

        Returns a :class:`ZemelOutput`: `loss` `()`, `scores` `(B, K)`, `(B, C)` or `(B, B*K)`,
        `context_embeddings` `(B, m, H)` / `(B, H)`, `candidate_embeddings` `(B, K, H)` / `(C, H)`.
        """
        if input_ids is None:
            raise ValueError("input_ids (the mention contexts) are required")
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        loss_type = loss_type or getattr(self.config, "loss_type", "candidates")
        _check_loss_inputs(loss_type, labels, candidate_entity_index, candidate_input_ids)
        shared_target = false_negative = None
        if loss_type == "batch_candidates":
            b, k = candidate_input_ids.shape[:2]
            flat = lambda x: None if x is None else x.flatten(0, 1)  # noqa: E731 - (B*K, ...): one shared set
            candidate_input_ids, candidate_attention_mask, candidate_token_type_ids = (
                flat(candidate_input_ids), flat(candidate_attention_mask), flat(candidate_token_type_ids))
            candidate_visual_features, candidate_visual_spatial, candidate_visual_attention_mask = (
                flat(candidate_visual_features), flat(candidate_visual_spatial), flat(candidate_visual_attention_mask))
            shared_target = torch.arange(b, device=labels.device) * k + labels.long()  # (B,)
            entities = candidate_entity_index.reshape(-1).to(labels.device)  # (B*K,)
            false_negative = entities[None, :] == entities[shared_target][:, None]  # (B, B*K)
            false_negative[torch.arange(b, device=labels.device), shared_target] = False
        context = self.encode_context(
            input_ids, attention_mask, token_type_ids, visual_features, visual_spatial, visual_attention_mask
        )
        if candidate_embeddings is None:
            if candidate_input_ids is None:
                raise ValueError("give candidate_input_ids (candidate inputs) or candidate_embeddings (a cache)")
            candidate_embeddings = self.encode_candidates(
                candidate_input_ids,
                candidate_attention_mask,
                candidate_token_type_ids,
                candidate_visual_features,
                candidate_visual_spatial,
                candidate_visual_attention_mask,
            )
        scores = self.score(context, candidate_embeddings)  # (B, K) or (B, C)

        loss = None
        logits = scores.float() * float(getattr(self.config, "logit_scale", 1.0))
        if loss_type == "batch_candidates":
            logits = logits.masked_fill(false_negative.to(logits.device), torch.finfo(logits.dtype).min)
            loss = F.cross_entropy(logits, shared_target.to(logits.device))
        elif loss_type == "in_batch":
            if candidate_embeddings.dim() != 2 or candidate_embeddings.shape[0] != scores.shape[0]:
                raise ValueError(f"loss_type='in_batch' needs one candidate per context: got {tuple(scores.shape)} "
                                 "scores; pass 2-D candidate inputs with one row per context")
            loss = F.cross_entropy(logits, torch.arange(scores.shape[0], device=scores.device))
        elif loss_type == "candidates" and labels is not None:
            loss = F.cross_entropy(logits, labels.to(scores.device).long(), ignore_index=-100)

        context_embeddings = context.poly_codes if self.config.scoring == "poly" else context.pooled_output
        if not return_dict:
            out = (scores, context_embeddings, candidate_embeddings)
            return ((loss,) + out) if loss is not None else out
        return ZemelOutput(
            loss=loss, scores=scores, context_embeddings=context_embeddings, candidate_embeddings=candidate_embeddings
        )

    # -- construction from a BERT checkpoint -----------------------------------------------------------------------
    @classmethod
    def from_text_backbone(
        cls, backbone: str = "minilm", output_loading_info: bool = False, **config_overrides
    ) -> "ZemelPolyEncoder":
        """Build a ZEMEL model whose two text streams start from a BERT checkpoint (loaded by name into both).

        `backbone` is `"minilm"` (embedded), an alias / hub id, or a local BERT directory (resolved by
        `modeling_mel.backbones` when available, else used as a path). `config_overrides` go to :class:`ZemelConfig`.
        Raises ValueError when no text weight could be loaded.
        """
        from transformers import AutoConfig, BertModel

        try:
            from modeling_mel.backbones import resolve_backbone  # package install; absent in a Hub code folder
        except ImportError:  # pragma: no cover
            resolve_backbone = lambda name: name  # noqa: E731

        path = resolve_backbone(backbone)
        text_config = AutoConfig.from_pretrained(path)
        for key, value in backbone_pooling(path).items():
            config_overrides.setdefault(key, value)
        config = ZemelConfig(text_config=text_config.to_dict(), **config_overrides)
        model = cls(config)
        bert = BertModel.from_pretrained(path)
        state = {k[len("bert.") :] if k.startswith("bert.") else k: v for k, v in bert.state_dict().items()}
        info = {}
        for name in ("context_encoder", "candidate_encoder"):
            encoder = getattr(model, name)
            own = encoder.state_dict()
            text_keys = {k for k in own if k.split(".")[0] in ("embeddings", "encoder", "pooler")}
            loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            encoder.load_state_dict(loadable, strict=False)
            missing = sorted(k for k in text_keys if k not in loadable and not k.endswith("position_ids"))
            unexpected = sorted(k for k in state if k not in loadable and not k.endswith("position_ids"))
            if not loadable:
                raise ValueError(f"no weight of backbone {backbone!r} ({path}) matched the text stream of {name}")
            info[name] = {"loaded": sorted(loadable), "missing_keys": missing, "unexpected_keys": unexpected}
            logger.info(
                "%s: loaded %d text-stream tensors from %s; missing %s; unexpected %s",
                name, len(loadable), backbone, missing or "none", unexpected or "none",
            )
            if missing or unexpected:
                logger.warning("%s: backbone %r missing keys %s, unexpected keys %s", name, backbone, missing, unexpected)
        config.name_or_path = str(path)
        return (model, info) if output_loading_info else model


def backbone_pooling(path: str) -> dict[str, Any]:
    """Pooling settings a checkpoint was trained with: for a sentence-transformers folder (``modules.json`` with a
    Pooling module) its pooling mode and whether it normalises (``Normalize`` module; then ``logit_scale=20``);
    ``{"pooling": "pooler"}`` (BERT's [CLS] pooler) otherwise."""
    import json
    import os

    modules_file = os.path.join(str(path), "modules.json")
    if not os.path.isfile(modules_file):
        return {"pooling": "pooler"}
    with open(modules_file, encoding="utf-8") as f:
        modules = json.load(f)
    settings: dict[str, Any] = {"pooling": "mean", "normalize_embeddings": False}
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            pooling_file = os.path.join(str(path), module.get("path", ""), "config.json")
            if os.path.isfile(pooling_file):
                with open(pooling_file, encoding="utf-8") as f:
                    pooling = json.load(f)
                if pooling.get("pooling_mode_cls_token"):
                    settings["pooling"] = "cls"
                elif not pooling.get("pooling_mode_mean_tokens", True):
                    logger.warning("%s: pooling %s is not supported; using mean pooling", path, pooling)
        elif kind.endswith("Normalize"):
            settings["normalize_embeddings"] = True
    if settings["normalize_embeddings"]:
        settings["logit_scale"] = 20.0
    return settings


__all__ = ["ZemelPreTrainedModel", "ZemelPolyEncoder", "ZemelOutput", "ZemelContextOutput"]
