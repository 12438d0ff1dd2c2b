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
        retriever_score_weight (`float`, *optional*, defaults to 0.0):
            Retrieve-then-rerank: the linking score of a candidate is ``log p(is next) + retriever_score_weight *
            retriever score`` (the ZEMEL retriever's cosine). Chosen on held-out training mentions by
            ``finetune_linking.py --retriever``; 0 ranks by the NSP model alone (the paper).
        retriever_k (`int`, *optional*):
            Dense (and closest-name) candidates per mention taken when the model reranks a retriever's output; set
            by ``finetune_linking.py --retriever``. ``None``: the pipeline's ``num_candidates``.
        nsp_head_pretrained (`bool`, *optional*):
            Whether the NSP head (``cls.seq_relationship``) started from the backbone's pre-trained weights (PFMEL's
            premise: mining BERT's pre-trained next-sentence prediction) or was initialised at random because the
            backbone has none (e.g. all-MiniLM-L6-v2). Set by training; ``None``: not recorded. The model card
            states it.
        max_candidates (`int`, *optional*):
            The name-rule candidate cap the model was fine-tuned and evaluated with (``--max_candidates``, 32); the
            pipeline scores as many unless called with ``num_candidates``. ``None``: the pipeline's 100.
        kwargs: passed to :class:`~transformers.BertConfig`.
    """

    model_type = "multimodal_nsp_bert"
    #: the family's model-card facts (read by `modeling_mel.hub.render_model_card`)
    model_card_facts = {
        "architecture": "BertForMultimodalNSP",
        "family": "PFMEL (BERT next-sentence prediction over text and image tokens)",
        "dataset_id": "twitter_mel",
        "dataset_name": "Twitter MEL (Adjali et al. 2020)",
        "paper": "pfmel",
    }

    def __init__(
        self,
        image_feature_dim: int = 2048,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        image_placeholder_id: int | None = None,
        retriever_score_weight: float = 0.0,
        retriever_k: int | None = None,
        nsp_head_pretrained: bool | None = None,
        max_candidates: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(image_feature_dim) < 1:
            raise ValueError(f"image_feature_dim must be >= 1, got {image_feature_dim!r}")
        self.image_feature_dim = int(image_feature_dim)
        self.image_token = image_token
        self.image_placeholder_id = image_placeholder_id
        self.retriever_score_weight = float(retriever_score_weight)
        self.retriever_k = int(retriever_k) if retriever_k is not None else None
        self.nsp_head_pretrained = None if nsp_head_pretrained is None else bool(nsp_head_pretrained)
        self.max_candidates = None if max_candidates is None else int(max_candidates)


__all__ = ["MultimodalNSPConfig", "DEFAULT_IMAGE_TOKEN"]
