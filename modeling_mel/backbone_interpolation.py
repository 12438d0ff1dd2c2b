"""Weight interpolation of a fine-tuned ZEMEL with the backbone it started from (weight-space ensembling).

A ZEMEL's two text streams start as copies of one BERT checkpoint (``ZemelPolyEncoder.from_text_backbone``). Training
on one dataset moves them toward that dataset's entities; on another KB the untrained backbone can be as good (on
RichpediaMEL the untrained MiniLM bi-encoder links 93.9% of dev right, a ZEMEL trained on WikiMEL hardly more). Mixing
the weights, ``alpha * trained + (1 - alpha) * backbone`` for every text-stream tensor of both encoders (Wortsman et
al., 2022, "Robust fine-tuning of zero-shot models"), keeps most of the in-domain gain and what the backbone knew.

* Only the tensors the backbone initialised are mixed (embeddings, encoder layers, pooler); the rest (poly codes,
  vision stream, co-attention, heads) keep their trained values.
* The rows the processor added to the word embeddings (``[M]``, ``[/M]``, ``[ENT]``) are mixed with what they started
  as: the backbone's row of the token named in ``config.special_token_init``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

ENCODERS = ("context_encoder", "candidate_encoder")


def backbone_state(backbone: str) -> dict[str, torch.Tensor]:
    """The BERT weights of a backbone (``"minilm"`` embedded, an alias, a hub id or a folder), keys without ``bert.``."""
    from transformers import BertModel

    from .backbones import resolve_backbone

    bert = BertModel.from_pretrained(resolve_backbone(backbone))
    return {k[len("bert.") :] if k.startswith("bert.") else k: v.detach() for k, v in bert.state_dict().items()}


def _start_rows(model: Any, processor: Any | None, start: torch.Tensor, rows: int) -> torch.Tensor:
    """Word embeddings as they were before training: the backbone's rows, then the rows the model added, as
    ``resize_for_processor`` started them (``ZemelPolyEncoder.special_token_rows``: copies of existing tokens)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer is None or not hasattr(model, "special_token_rows"):
        raise ValueError(f"the model has {rows - start.shape[0]} word embeddings beyond the backbone's "
                         f"{start.shape[0]}: pass the model's processor to tell what they started as")
    out = start.new_zeros((rows, start.shape[1]))
    out[: start.shape[0]] = start
    for token_id, source_id in model.special_token_rows(tokenizer, start.shape[0]).items():
        out[token_id] = start[source_id]
    return out


def _text_stream_pairs(model: Any, backbone: str, processor: Any | None,
                       state: dict[str, torch.Tensor] | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight, backbone value)`` of every text-stream tensor of both encoders, each shape checked first."""
    state = backbone_state(backbone) if state is None else state
    pairs = []
    for name in ENCODERS:
        encoder = getattr(model, name)
        for key, weight in encoder.state_dict().items():
            start = state.get(key)
            if start is None or key.endswith("position_ids") or not weight.is_floating_point():
                continue
            if key.endswith("word_embeddings.weight") and start.shape[0] < weight.shape[0]:
                start = _start_rows(model, processor, start, weight.shape[0])
            if start.shape != weight.shape:
                raise ValueError(f"{name}.{key}: backbone {backbone!r} has shape {tuple(start.shape)}, the model "
                                 f"{tuple(weight.shape)}; is {backbone!r} the backbone this model was trained from?")
            pairs.append((weight, start))
    if not pairs:
        raise ValueError(f"no text-stream tensor of the model matches backbone {backbone!r}")
    return pairs


@torch.no_grad()
def _mix(pairs: list[tuple[torch.Tensor, torch.Tensor]], coefficient: float) -> int:
    """``w <- coefficient * w + (1 - coefficient) * w0`` in place for each pair; how many tensors."""
    for weight, start in pairs:
        weight.mul_(coefficient).add_(start.to(weight.dtype), alpha=1.0 - coefficient)
    return len(pairs)


def _checked_alpha(alpha: float) -> float:
    """``alpha`` as a float, refused outside [0, 1] with the value named."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (1: the trained model, 0: the backbone), got {alpha!r}")
    return alpha


def interpolate_with_backbone(model: Any, alpha: float, backbone: str = "minilm", processor: Any | None = None,
                              state: dict[str, torch.Tensor] | None = None) -> int:
    """Replace, in place, each text-stream tensor ``w`` of both encoders of ``model`` by ``alpha * w + (1 - alpha) *
    w0`` (``w0`` its value in ``backbone``; ``state``: those weights already loaded). ``alpha=1`` leaves the model
    as it is, ``alpha=0`` gives the backbone's text streams back. Returns how many tensors were mixed."""
    alpha = _checked_alpha(alpha)
    mixed = _mix(_text_stream_pairs(model, backbone, processor, state), alpha)  # every shape checked before any change
    logger.info("mixed %d text-stream tensors: %.2f * trained + %.2f * %s", mixed, alpha, 1 - alpha, backbone)
    return mixed


def remix_with_backbone(model: Any, alpha: float, backbone: str = "minilm", processor: Any | None = None,
                        state: dict[str, torch.Tensor] | None = None) -> int:
    """Bring a saved ZEMEL to another mixing, ``alpha * trained + (1 - alpha) * backbone``, without retraining: its
    recorded ``config.backbone_mixing`` ``a0`` (absent: 1, the plain trained model) says where it stands, so the
    trained weights are ``(w - (1 - a0) * w0) / a0`` and the new ones ``(alpha / a0) * w + (1 - alpha / a0) * w0``
    (exact up to float rounding). Sets ``config.backbone_mixing`` to ``alpha``. Returns how many tensors changed."""
    alpha = _checked_alpha(alpha)
    recorded = getattr(model.config, "backbone_mixing", None)
    now = 1.0 if recorded is None else float(recorded)
    if now <= 0.0:
        raise ValueError("the model was mixed with alpha 0 (its text streams are the backbone's): its trained "
                         "weights cannot be recovered; remix the model saved before mixing")
    mixed = _mix(_text_stream_pairs(model, backbone, processor, state), alpha / now)
    model.config.backbone_mixing = alpha
    logger.info("remixed %d text-stream tensors from %.2f to %.2f * trained + %.2f * %s", mixed, now, alpha,
                1 - alpha, backbone)
    return mixed


__all__ = ["backbone_state", "interpolate_with_backbone", "remix_with_backbone"]
