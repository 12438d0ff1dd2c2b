"""BERT next-sentence prediction over sentences that hold image tokens (PFMEL, Li et al. 2022).

The model is BERT plus ONE ``Linear(image_feature_dim, hidden_size)`` (the paper's ``W, b``): the
projected image feature replaces the word embedding of an image placeholder token inside its
sentence, and BERT's embedding layer then adds the token-type (segment) and position embeddings as
for any text token. Mention images and entity images share the projection. With no image token the
model computes exactly what ``BertForNextSentencePrediction`` computes with the same weights.

NSP labels follow BERT: ``0`` = sentence B follows sentence A (the entity belongs to the mention),
``1`` = B is random.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.models.bert.modeling_bert import BertOnlyNSPHead
from transformers.utils import ModelOutput, logging

from .configuration_multimodal_nsp import MultimodalNSPConfig
from .low_precision import FusedBertEncoder, evaluating, low_precision_copy

logger = logging.get_logger(__name__)


@dataclass
class MultimodalNSPOutput(ModelOutput):
    """Output of :class:`BertForMultimodalNSP`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            NSP cross-entropy averaged over the batch.
        logits (`torch.FloatTensor` of shape `(batch_size, 2)`):
            NSP scores before softmax: column 0 = "B follows A" (is next), column 1 = "B is random".
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Per-layer hidden states `(batch_size, sequence_length, hidden_size)` when requested.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Per-layer attention weights `(batch_size, num_heads, sequence_length, sequence_length)` when requested.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def _prepare_low_precision_bert(low: nn.Module) -> None:
    """The wholly low-precision inference copy of the BERT encoder: SDPA attention, and its fused CPU forward
    (``fused_cpu_forward``: a :class:`~modeling_mel.low_precision.FusedBertEncoder`, None where not supported)."""
    low.set_attn_implementation("sdpa")
    low.__dict__["fused_cpu_forward"] = FusedBertEncoder.build(low)


class BertForMultimodalNSP(BertPreTrainedModel):
    """BERT with an image projection and the NSP head: PFMEL's pre-training and linking model.

    Submodule names are BERT's (``bert``, ``cls.seq_relationship``), so ``from_pretrained`` of a BERT
    checkpoint (``BertModel``, ``BertForPreTraining`` or ``BertForNextSentencePrediction``) fills every
    BERT weight, the NSP head included when present; only ``image_projection`` is new.
    """

    config_class = MultimodalNSPConfig
    # `forward` takes no **kwargs: Trainer must not pass `num_items_in_batch` (multi-process loss bug).
    accepts_loss_kwargs = False
    #: how this family links (read by the pipeline and `mel link`): each (mention, candidate) pair is scored by
    #: `link_scores(logits)`.
    linking_method = "cross"

    def __init__(self, config: MultimodalNSPConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=True)
        self.image_projection = nn.Linear(config.image_feature_dim, config.hidden_size)  # the paper's W, b
        self.cls = BertOnlyNSPHead(config)
        self.post_init()

    def _check_images(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """Validate image tokens against features; returns the (B, T) boolean mask of image tokens."""
        token_id = self.config.image_placeholder_id
        if token_id is None:
            mask = torch.zeros_like(input_ids, dtype=torch.bool)
        else:
            mask = input_ids == token_id  # (B, T)
        n_tokens = mask.sum(1)  # (B,)
        if image_features is None:
            if bool(n_tokens.any()):
                raise ValueError(
                    f"input_ids hold {int(n_tokens.sum())} image token(s) ({self.config.image_token!r}, id {token_id}) "
                    "but no image_features were given; pass image_features of shape (batch, n_images, "
                    f"{self.config.image_feature_dim})"
                )
            return mask
        if image_features.dim() == 2:
            image_features = image_features.unsqueeze(1)
        if image_features.dim() != 3 or image_features.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"image_features has shape {tuple(image_features.shape)}; expected (batch={input_ids.shape[0]}, "
                f"n_images, {self.config.image_feature_dim})"
            )
        if image_features.shape[-1] != self.config.image_feature_dim:
            raise ValueError(
                f"image feature size {image_features.shape[-1]} does not match config.image_feature_dim="
                f"{self.config.image_feature_dim}; extract features with the same image model or change the config"
            )
        if not bool(n_tokens.any()) and image_features.shape[1] > 0 and bool(image_features.ne(0).any()):
            raise ValueError(
                "image_features were given but input_ids hold no image token "
                f"({self.config.image_token!r}, id {token_id}); build inputs with MultimodalNSPProcessor, "
                "or drop image_features for text-only input"
            )
        too_many = n_tokens > image_features.shape[1]
        if bool(too_many.any()):
            row = int(too_many.nonzero()[0, 0])
            raise ValueError(
                f"example {row} has {int(n_tokens[row])} image tokens but image_features hold only "
                f"{image_features.shape[1]} image(s) per example"
            )
        return mask

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor | None:
        """Word embeddings with image tokens replaced by projected features: (B, T, H), or ``None`` if text-only."""
        mask = self._check_images(input_ids, image_features)
        if not bool(mask.any()):
            return None
        if image_features.dim() == 2:
            image_features = image_features.unsqueeze(1)
        # Image tokens never index the embedding matrix (the processor's added token may lie past it).
        embeds = self.bert.embeddings.word_embeddings(input_ids.masked_fill(mask, 0))  # (B, T, H)
        # The k-th image token of a row takes the k-th image of that row.
        slot = (mask.cumsum(1) - 1).clamp(min=0)  # (B, T)
        rows, cols = mask.nonzero(as_tuple=True)
        feats = image_features[rows, slot[rows, cols]]  # (n_img_tokens, D)
        projected = self.image_projection(feats.to(self.image_projection.weight.dtype))  # (n_img_tokens, H)
        embeds = embeds.clone()
        embeds[rows, cols] = projected.to(embeds.dtype)
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> MultimodalNSPOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids of `[CLS] A [SEP] B [SEP]`, image placeholders (`config.image_placeholder_id`) inside A and B.
            attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real tokens, 0 for padding.
            token_type_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                0 for sentence A (image tokens included), 1 for sentence B.
            image_features (`torch.FloatTensor` of shape `(batch_size, n_images, image_feature_dim)`, *optional*):
                Image features; the k-th image token of a row takes `image_features[row, k]`. Rows with fewer
                image tokens than `n_images` ignore the extra (padding) slots.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                NSP labels as in BERT: 0 = B follows A, 1 = B is random.
        """
        if input_ids is None:
            raise ValueError("input_ids are required")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        inputs_embeds = self.embed(input_ids, image_features)
        extra = {}
        if output_hidden_states:
            extra["output_hidden_states"] = True
        if output_attentions:
            extra["output_attentions"] = True
        outputs = self.bert(
            input_ids=None if inputs_embeds is not None else input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            return_dict=True,
            **extra,
        )
        logits = self.cls(outputs.pooler_output)  # (B, 2)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, 2).float(), labels.view(-1))
        if not return_dict:
            out = (logits, outputs.hidden_states, outputs.attentions)
            return ((loss,) + out) if loss is not None else out
        return MultimodalNSPOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def inference_scores(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Inference: :meth:`link_scores` (float32, shape (B,)) of a batch of pairs, in eval mode under
        `torch.inference_mode`, in float32 or in a low precision (`autocast_dtype`: `torch.bfloat16` on CPU).

        In low precision the BERT encoder runs as a copy wholly in that dtype (`low_precision.low_precision_copy`,
        `whole=True`: weights, layer norms and softmaxes; built once, rebuilt after a weight update), without autocast
        and with SDPA attention, and so does the NSP head (as under autocast: a head in float32 would round with the
        number of pairs in the batch). No activation is cast between two operations: on this project's CPU about 1.25x
        faster than autocast over a copy with bf16 linear weights and eager attention (the previous path), at the same
        distance to the float32 scores (bf16 rounding). On CPU, where oneDNN runs bf16, the copy's forward is
        `low_precision.FusedBertEncoder` (each product fused with its bias and GELU, tanh or residual add), in two
        steps: :meth:`inference_pair_states` then :meth:`inference_state_scores`.
        """
        with evaluating(self), torch.inference_mode():
            if autocast_dtype in (None, torch.float32):
                logits = self(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              image_features=image_features).logits
                return self.link_scores(logits)
            bert, inputs = self._low_precision_inputs(input_ids, attention_mask, token_type_ids, image_features,
                                                      autocast_dtype)
            states = self._fused_trunk(bert, inputs) if input_ids.device.type == "cpu" else None
            if states is not None:
                return self.inference_state_scores(states, autocast_dtype)
            pooled = bert(**inputs, return_dict=True).pooler_output
            head = low_precision_copy(self, "cls", autocast_dtype, whole=True)
            return self.link_scores(head(pooled))

    def inference_pair_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        autocast_dtype: torch.dtype | None = torch.bfloat16,
    ) -> torch.Tensor | None:
        """The first step of :meth:`inference_scores` on CPU in bf16, for pairs of several batches finished together:
        each pair's first-token state ``(B, 2H)`` (`low_precision.FusedBertEncoder.trunk`), which
        :meth:`inference_state_scores` turns into scores, one batch or many stacked. None where that path does not
        run (float32, another device, no oneDNN bf16 on this CPU or build, not a plain BERT): use
        :meth:`inference_scores`."""
        if autocast_dtype in (None, torch.float32) or input_ids.device.type != "cpu":
            return None
        with evaluating(self), torch.inference_mode():
            bert, inputs = self._low_precision_inputs(input_ids, attention_mask, token_type_ids, image_features,
                                                      autocast_dtype)
            return self._fused_trunk(bert, inputs)

    def inference_state_scores(self, states: torch.Tensor, autocast_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """:meth:`link_scores` (float32, shape (N,)) of first-token states from :meth:`inference_pair_states` (of one
        batch or stacked from several): the last layer's tail, the pooler and the NSP head, in ``autocast_dtype``."""
        with evaluating(self), torch.inference_mode():
            bert = low_precision_copy(self, "bert", autocast_dtype, whole=True, prepare=_prepare_low_precision_bert)
            fused = bert.__dict__.get("fused_cpu_forward")
            if fused is None:
                raise RuntimeError("inference_state_scores needs the fused bf16 CPU forward that made the states "
                                   "(inference_pair_states returned None: use inference_scores)")
            head = low_precision_copy(self, "cls", autocast_dtype, whole=True)
            return self.link_scores(head(fused.tail(states)))

    @staticmethod
    def _fused_trunk(bert: nn.Module, inputs: dict) -> torch.Tensor | None:
        """The first-token states of the low-precision copy's fused CPU forward, or None without one (or when its
        oneDNN op fails on this torch: BERT's own forward from then on)."""
        fused = bert.__dict__.get("fused_cpu_forward")
        if fused is None:
            return None
        try:
            return fused.trunk(**inputs)
        except (RuntimeError, TypeError) as err:
            logger.warning("fused bf16 CPU forward unavailable (%s); using BERT's own forward", err)
            bert.__dict__["fused_cpu_forward"] = None
            return None

    def _low_precision_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        image_features: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> tuple[nn.Module, dict]:
        """The wholly low-precision copy of the encoder and its inputs (image tokens as embeddings in ``dtype``)."""
        bert = low_precision_copy(self, "bert", dtype, whole=True, prepare=_prepare_low_precision_bert)
        inputs_embeds = self.embed(input_ids, image_features)
        return bert, {
            "input_ids": None if inputs_embeds is not None else input_ids,
            "inputs_embeds": None if inputs_embeds is None else inputs_embeds.to(dtype),
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }

    def link_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Linking score of each pair: log-probability that B follows A (`log_softmax(logits)[:, 0]`), shape (B,)."""
        return torch.log_softmax(logits.float(), dim=-1)[:, 0]


__all__ = ["BertForMultimodalNSP", "MultimodalNSPOutput"]
