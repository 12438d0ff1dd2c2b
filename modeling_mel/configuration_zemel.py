"""Configuration of :class:`ZemelPolyEncoder` (ZEMEL, zero-shot multimodal entity linking)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from transformers import BertConfig, PretrainedConfig

#: The losses of ``ZemelPolyEncoder.forward`` (``loss_type``; see :class:`ZemelConfig`).
ZEMEL_LOSS_TYPES = ("candidates", "batch_candidates", "in_batch", "none")

DEFAULT_MENTION_START_TOKEN = "[M]"
DEFAULT_MENTION_END_TOKEN = "[/M]"
DEFAULT_ENTITY_TOKEN = "[ENT]"

#: MiniLM-L6-H384 sized BERT (the embedded default backbone), used when no ``text_config`` is given.
DEFAULT_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

SCORING_MODES = ("poly", "bi")
FUSION_MODES = ("concat", "sum")
POOLING_MODES = ("pooler", "mean", "cls")

#: New special tokens start from the embedding of an existing token, so the untrained model reads
#: `[M] Noel Harrison [/M]` like `" Noel Harrison "` and `name [ENT] description` like `name . description`.
DEFAULT_SPECIAL_TOKEN_INIT: dict[str, str] = {
    DEFAULT_MENTION_START_TOKEN: '"',
    DEFAULT_MENTION_END_TOKEN: '"',
    DEFAULT_ENTITY_TOKEN: ".",
}

# Text-stream fields that change the shape or the function of the network (used by `config_hash`).
_TEXT_ARCH_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
)
_ARCH_KEYS = (
    "v_feature_dim",
    "v_spatial_dim",
    "v_hidden_size",
    "v_num_attention_heads",
    "v_intermediate_size",
    "v_num_hidden_layers",
    "v_hidden_act",
    "co_attention_layers",
    "v_co_attention_layers",
    "bi_hidden_size",
    "bi_num_attention_heads",
    "fusion",
    "poly_m",
    "scoring",
    "layer_norm_eps",
    "pooling",
    "normalize_embeddings",
)


class ZemelConfig(PretrainedConfig):
    r"""Configuration of ZEMEL: two two-stream (text + visual regions) co-attentional encoders, one for the mention
    context and one for the candidate entity, and a poly-encoder (or bi-encoder) scoring head.

    Each encoder is a BERT text stream (submodule names of `BertModel`, so BERT checkpoints load by name) and a visual
    stream over region features, connected by ViLBERT-style co-attention blocks. Both encoders have the same
    architecture and separate weights.

    Args:
        text_config (`dict` or `BertConfig`, *optional*):
            Configuration of the BERT text stream. Defaults to a MiniLM-L6-H384 sized BERT (the embedded backbone);
            :meth:`ZemelPolyEncoder.from_text_backbone` fills it from a real checkpoint.
        v_feature_dim (`int`, *optional*, defaults to 2048):
            Size of one region feature vector (ResNet-50 pooled output).
        v_spatial_dim (`int`, *optional*, defaults to 5):
            Size of the spatial vector of a region (x1/W, y1/H, x2/W, y2/H, area fraction).
        v_hidden_size (`int`, *optional*, defaults to 1024):
            Hidden size of the visual stream.
        v_num_attention_heads (`int`, *optional*, defaults to 8):
            Attention heads of the visual self-attention layers.
        v_intermediate_size (`int`, *optional*, defaults to 1024):
            Feed-forward size of the visual layers and of the visual half of the co-attention blocks.
        v_num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of visual self-attention layers.
        v_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the visual feed-forward layers.
        v_hidden_dropout_prob (`float`, *optional*, defaults to 0.1):
            Dropout of the visual stream, the co-attention outputs and the fusion.
        v_attention_probs_dropout_prob (`float`, *optional*, defaults to 0.1):
            Dropout on visual and co-attention probabilities.
        co_attention_layers (`list[int]`, *optional*):
            Text-layer indices after which a co-attention block runs. Defaults to the last two text layers (the last
            one when the text stream has a single layer). An empty list disables co-attention.
        v_co_attention_layers (`list[int]`, *optional*):
            Visual-layer indices after which the co-attention block of the same position runs (same length as
            `co_attention_layers`, strictly increasing; `-1` means before the first visual layer). Defaults to the
            last `len(co_attention_layers)` visual layers, padded with `-1` when there are fewer visual layers.
        bi_hidden_size (`int`, *optional*, defaults to 1024):
            Inner (query/key/value) size of the co-attention.
        bi_num_attention_heads (`int`, *optional*, defaults to 8):
            Attention heads of the co-attention.
        fusion (`str`, *optional*, defaults to `"concat"`):
            How the pooled text and visual outputs become one vector: `"concat"` (the paper: concatenate, then a
            linear projection to the text hidden size) or `"sum"` (project the visual vector, add). Both are written
            as a residual over the pooled text vector with a zero-initialised projection (`t + W[t; v]`, the same
            function class as `W'[t; v]`), so the untrained fusion is the identity on the text vector.
        pooling (`str`, *optional*, defaults to `"pooler"`):
            How the text stream becomes one vector: `"pooler"` (BERT's tanh pooler over [CLS], for BERT checkpoints),
            `"mean"` (masked mean of the token states, as sentence-transformers checkpoints were trained) or `"cls"`
            (the [CLS] state itself). :meth:`ZemelPolyEncoder.from_text_backbone` picks it from the checkpoint.
        normalize_embeddings (`bool`, *optional*, defaults to `False`):
            L2-normalise the context and candidate vectors (and, in poly mode, the candidate-conditioned context
            vector of eq. 3), so scores are cosines; set for checkpoints trained with a Normalize module.
        logit_scale (`float`, *optional*, defaults to `1.0`):
            Scores are multiplied by it before the cross-entropy (a temperature; 20 for normalised vectors, as
            sentence-transformers' MultipleNegativesRankingLoss). Rankings do not depend on it.
        modality_gate_init (`float`, *optional*, defaults to `0.0`):
            Initial value of the tanh gates of the co-attention text update and of the visual tokens. 0 keeps a
            pre-trained text stream unchanged at the start of training (Flamingo); a model trained from scratch
            has nothing to protect and may start with open gates (e.g. 1.0; the fusion projection is then randomly
            initialised too instead of zero).
        special_token_init (`dict[str, str]`, *optional*):
            For each new special token, an existing token whose embedding it starts from when the vocabulary is
            resized for the processor (default: `[M]`, `[/M]` from `"`, `[ENT]` from `.`); tokens not listed start
            from the mean embedding.
        poly_m (`int`, *optional*, defaults to 16):
            Number of learned poly codes `m` (eq. 1-2 of the paper).
        scoring (`str`, *optional*, defaults to `"poly"`):
            `"poly"` (poly-encoder head, eq. 1-5) or `"bi"` (one vector a side, dot product).
        max_regions (`int`, *optional*, defaults to 10):
            Most visual regions of one input (whole image first, then boxes; or candidate images).
        loss_type (`str`, *optional*, defaults to `"candidates"`):
            The loss `forward` computes when it is not given `loss_type`: `"candidates"` (cross-entropy of each
            context over its own candidates, `(B, K)`, or a shared set `(B, C)`, with `labels`), `"batch_candidates"`
            (each context against the candidates of the whole batch, `(B, B*K)`, other copies of its gold masked out;
            needs `labels` and `candidate_entity_index`: ZEMEL's training loss), `"in_batch"` (one candidate per
            context, `(B, B)`, target `arange(B)`) or `"none"`.
        mention_start_token (`str`, *optional*, defaults to `"[M]"`), mention_end_token (`str`, *optional*,
        defaults to `"[/M]"`), entity_token (`str`, *optional*, defaults to `"[ENT]"`):
            Special tokens of the context and candidate templates; their ids (`*_id`) are set by
            :class:`ZemelProcessor` / :meth:`ZemelPolyEncoder.resize_for_processor`.
        layer_norm_eps (`float`, *optional*):
            Epsilon of the visual, co-attention and fusion layer norms. Defaults to `text_config.layer_norm_eps`.
        initializer_range (`float`, *optional*):
            Std of the normal weight init. Defaults to `text_config.initializer_range`.
        kwargs: passed to :class:`~transformers.PretrainedConfig`.
    """

    model_type = "zemel"
    #: the family's model-card facts (read by `modeling_mel.hub.render_model_card`)
    model_card_facts = {
        "architecture": "ZemelPolyEncoder",
        "family": "ZEMEL (co-attentional two-stream encoders with a poly-encoder head)",
        "dataset_id": "zemeld",
        "dataset_name": "ZEMELD",
        "paper": "zemel",
    }
    sub_configs = {"text_config": BertConfig}

    def __init__(
        self,
        text_config: dict | BertConfig | None = None,
        v_feature_dim: int = 2048,
        v_spatial_dim: int = 5,
        v_hidden_size: int = 1024,
        v_num_attention_heads: int = 8,
        v_intermediate_size: int = 1024,
        v_num_hidden_layers: int = 2,
        v_hidden_act: str = "gelu",
        v_hidden_dropout_prob: float = 0.1,
        v_attention_probs_dropout_prob: float = 0.1,
        co_attention_layers: list[int] | None = None,
        v_co_attention_layers: list[int] | None = None,
        bi_hidden_size: int = 1024,
        bi_num_attention_heads: int = 8,
        fusion: str = "concat",
        pooling: str = "pooler",
        normalize_embeddings: bool = False,
        logit_scale: float = 1.0,
        special_token_init: dict[str, str] | None = None,
        modality_gate_init: float = 0.0,
        poly_m: int = 16,
        scoring: str = "poly",
        max_regions: int = 10,
        loss_type: str = "candidates",
        mention_start_token: str = DEFAULT_MENTION_START_TOKEN,
        mention_end_token: str = DEFAULT_MENTION_END_TOKEN,
        entity_token: str = DEFAULT_ENTITY_TOKEN,
        mention_start_token_id: int | None = None,
        mention_end_token_id: int | None = None,
        entity_token_id: int | None = None,
        layer_norm_eps: float | None = None,
        initializer_range: float | None = None,
        **kwargs,
    ):
        """Checks the settings (a `ValueError` names a bad one) and stores them; the arguments are described in the
        class docstring."""
        text_config = _as_text_config(text_config)
        self.text_config = text_config
        _check_settings(
            poly_m=poly_m, scoring=scoring, fusion=fusion, pooling=pooling, logit_scale=logit_scale,
            v_hidden_size=v_hidden_size, v_num_attention_heads=v_num_attention_heads, bi_hidden_size=bi_hidden_size,
            bi_num_attention_heads=bi_num_attention_heads, v_feature_dim=v_feature_dim, v_spatial_dim=v_spatial_dim,
            max_regions=max_regions, v_num_hidden_layers=v_num_hidden_layers,
        )
        co_attention_layers, v_co_attention_layers = _co_attention_schedule(
            int(text_config.num_hidden_layers), co_attention_layers, v_co_attention_layers, v_num_hidden_layers
        )
        self.v_feature_dim = int(v_feature_dim)
        self.v_spatial_dim = int(v_spatial_dim)
        self.v_hidden_size = int(v_hidden_size)
        self.v_num_attention_heads = int(v_num_attention_heads)
        self.v_intermediate_size = int(v_intermediate_size)
        self.v_num_hidden_layers = int(v_num_hidden_layers)
        self.v_hidden_act = v_hidden_act
        self.v_hidden_dropout_prob = float(v_hidden_dropout_prob)
        self.v_attention_probs_dropout_prob = float(v_attention_probs_dropout_prob)
        self.co_attention_layers = co_attention_layers
        self.v_co_attention_layers = v_co_attention_layers
        self.bi_hidden_size = int(bi_hidden_size)
        self.bi_num_attention_heads = int(bi_num_attention_heads)
        self.fusion = fusion
        self.pooling = pooling
        self.normalize_embeddings = bool(normalize_embeddings)
        self.logit_scale = float(logit_scale)
        self.modality_gate_init = float(modality_gate_init)
        self.special_token_init = dict(DEFAULT_SPECIAL_TOKEN_INIT if special_token_init is None else special_token_init)
        self.poly_m = int(poly_m)
        self.scoring = scoring
        self.max_regions = int(max_regions)
        if loss_type not in ZEMEL_LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {list(ZEMEL_LOSS_TYPES)}")
        self.loss_type = loss_type
        self.mention_start_token = mention_start_token
        self.mention_end_token = mention_end_token
        self.entity_token = entity_token
        self.mention_start_token_id = mention_start_token_id
        self.mention_end_token_id = mention_end_token_id
        self.entity_token_id = entity_token_id
        self.layer_norm_eps = float(layer_norm_eps if layer_norm_eps is not None else text_config.layer_norm_eps)
        self.initializer_range = float(
            initializer_range if initializer_range is not None else text_config.initializer_range
        )
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Size of the context and candidate vectors (the text hidden size)."""
        return int(self.text_config.hidden_size)

    def architecture_dict(self) -> dict[str, Any]:
        """The settings that decide the shapes and the function of the network (not dropout, not token ids)."""
        arch = {key: getattr(self, key) for key in _ARCH_KEYS}
        arch["text_config"] = {key: getattr(self.text_config, key, None) for key in _TEXT_ARCH_KEYS}
        return arch

    def config_hash(self) -> str:
        """SHA-1 of :meth:`architecture_dict` as sorted JSON, for cache / index compatibility checks."""
        return config_hash(self)


def config_hash(config: ZemelConfig) -> str:
    """SHA-1 hex digest of the architecture-relevant part of a :class:`ZemelConfig`.

    Two models with the same hash produce candidate vectors of the same size and meaning-compatible layout; a
    candidate cache or FAISS index stores it and is refused by a model with another hash.
    """
    payload = json.dumps(config.architecture_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def _as_text_config(text_config: dict | PretrainedConfig | None) -> PretrainedConfig:
    """The text-stream config: the MiniLM-sized default for ``None``, a :class:`BertConfig` built from a ``dict``
    (its ``model_type`` dropped), or the given config itself; ``ValueError`` for anything else."""
    if text_config is None:
        text_config = BertConfig(**DEFAULT_TEXT_CONFIG)
    elif isinstance(text_config, dict):
        text_config = BertConfig(**{k: v for k, v in text_config.items() if k != "model_type"})
    elif not isinstance(text_config, PretrainedConfig):
        raise ValueError(f"text_config must be a dict or a BertConfig, got {type(text_config).__name__}")
    return text_config


def _check_settings(
    *,
    poly_m: int,
    scoring: str,
    fusion: str,
    pooling: str,
    logit_scale: float,
    v_hidden_size: int,
    v_num_attention_heads: int,
    bi_hidden_size: int,
    bi_num_attention_heads: int,
    v_feature_dim: int,
    v_spatial_dim: int,
    max_regions: int,
    v_num_hidden_layers: int,
) -> None:
    """``ValueError`` naming the first of these :class:`ZemelConfig` settings that is out of range or unknown."""
    if int(poly_m) < 1:
        raise ValueError(f"poly_m must be >= 1, got {poly_m!r}")
    if scoring not in SCORING_MODES:
        raise ValueError(f"unknown scoring {scoring!r}; expected one of {SCORING_MODES}")
    if fusion not in FUSION_MODES:
        raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSION_MODES}")
    if pooling not in POOLING_MODES:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLING_MODES}")
    if not float(logit_scale) > 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale!r}")
    for name, size, heads in (
        ("v_hidden_size", v_hidden_size, v_num_attention_heads),
        ("bi_hidden_size", bi_hidden_size, bi_num_attention_heads),
    ):
        if int(heads) < 1 or int(size) % int(heads) != 0:
            raise ValueError(f"{name}={size!r} is not a multiple of its number of attention heads ({heads!r})")
    for name, value in (("v_feature_dim", v_feature_dim), ("v_spatial_dim", v_spatial_dim), ("max_regions", max_regions)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if int(v_num_hidden_layers) < 0:
        raise ValueError(f"v_num_hidden_layers must be >= 0, got {v_num_hidden_layers!r}")


def _co_attention_schedule(
    n_text: int,
    co_attention_layers: list[int] | None,
    v_co_attention_layers: list[int] | None,
    v_num_hidden_layers: int,
) -> tuple[list[int], list[int]]:
    """``(co_attention_layers, v_co_attention_layers)`` with their defaults filled in (see :class:`ZemelConfig`), as
    lists of ints; ``ValueError`` when they are not increasing layer indices of the two streams, one per block."""
    if co_attention_layers is None:
        co_attention_layers = list(range(max(0, n_text - 2), n_text))
    co_attention_layers = [int(i) for i in co_attention_layers]
    if any(i < 0 or i >= n_text for i in co_attention_layers) or co_attention_layers != sorted(set(co_attention_layers)):
        raise ValueError(
            f"co_attention_layers {co_attention_layers!r} must be strictly increasing text-layer indices in [0, {n_text})"
        )
    n_co = len(co_attention_layers)
    if v_co_attention_layers is None:
        last = list(range(max(0, v_num_hidden_layers - n_co), v_num_hidden_layers))
        v_co_attention_layers = [-1] * (n_co - len(last)) + last
    v_co_attention_layers = [int(i) for i in v_co_attention_layers]
    if len(v_co_attention_layers) != n_co:
        raise ValueError(
            f"v_co_attention_layers {v_co_attention_layers!r} must have one entry per co-attention block ({n_co})"
        )
    for a, b in zip(v_co_attention_layers, v_co_attention_layers[1:]):
        if b < a or (b == a and b != -1):
            raise ValueError(f"v_co_attention_layers {v_co_attention_layers!r} must be increasing")
    if any(i < -1 or i >= v_num_hidden_layers for i in v_co_attention_layers):
        raise ValueError(
            f"v_co_attention_layers {v_co_attention_layers!r} must be visual-layer indices in [-1, {v_num_hidden_layers})"
        )
    return co_attention_layers, v_co_attention_layers



__all__ = [
    "ZemelConfig",
    "POOLING_MODES",
    "DEFAULT_SPECIAL_TOKEN_INIT",
    "config_hash",
    "DEFAULT_MENTION_START_TOKEN",
    "DEFAULT_MENTION_END_TOKEN",
    "DEFAULT_ENTITY_TOKEN",
]
