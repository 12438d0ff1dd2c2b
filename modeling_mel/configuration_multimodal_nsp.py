"""Configuration of :class:`BertForMultimodalNSP` (PFMEL, Li et al. 2022)."""

from __future__ import annotations

from transformers import BertConfig

DEFAULT_IMAGE_TOKEN = "[IMG]"


class MultimodalNSPConfig(BertConfig):
    r"""Configuration of a BERT next-sentence-prediction model whose sentences may hold image tokens.

    It is a :class:`~transformers.BertConfig` (every BERT argument applies) plus the image slot.

    Args:
        image_feature_dim (`int`, *optional*, defaults to 2048):
            Size of one image feature vector (ResNet-50 pooled output). A single
            ``Linear(image_feature_dim, hidden_size)`` (the paper's ``W, b``) maps it to the hidden size,
            shared by mention and entity images.
        image_token (`str`, *optional*, defaults to ``"[IMG]"``):
            Placeholder token whose word embedding is replaced by a projected image feature.
        image_placeholder_id (`int`, *optional*):
            Vocabulary id of ``image_token``. Set by :class:`MultimodalNSPProcessor` when it registers the
            token; ``None`` means the model has no image token yet (text-only use).
        kwargs: passed to :class:`~transformers.BertConfig`.
    """

    model_type = "multimodal_nsp_bert"

    def __init__(
        self,
        image_feature_dim: int = 2048,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        image_placeholder_id: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(image_feature_dim) < 1:
            raise ValueError(f"image_feature_dim must be >= 1, got {image_feature_dim!r}")
        self.image_feature_dim = int(image_feature_dim)
        self.image_token = image_token
        self.image_placeholder_id = image_placeholder_id


__all__ = ["MultimodalNSPConfig", "DEFAULT_IMAGE_TOKEN"]
