"""modeling-mel: multimodal entity linking (PFMEL and ZEMEL) as transformers models.

Importing the package registers the model families with the ``Auto*`` classes (no remote code
needed) and for Hub-style saving (``save_pretrained`` writes ``auto_map`` and the code files).
"""

from __future__ import annotations

import logging

from .backbones import DEFAULT_BACKBONE, load_tokenizer, resolve_backbone
from .candidates import Bm25RuleCandidates
from .configuration_multimodal_nsp import MultimodalNSPConfig
from .configuration_zemel import ZemelConfig
from .modeling_multimodal_nsp import BertForMultimodalNSP, MultimodalNSPOutput
from .modeling_zemel import ZemelContextOutput, ZemelOutput, ZemelPolyEncoder
from .processing_multimodal_nsp import (
    MultimodalNSPProcessor,
    entity_context,
    entity_prompt,
    generic_entity_prompt,
    mention_prompt,
    recent_tweets,
)
from .processing_zemel import ZemelProcessor
from .entity_index import EntityIndex
from .pipeline_entity_linking import MultimodalEntityLinkingPipeline, register_pipeline
from .registry import register_all, register_family

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

register_all()  # the Auto classes and the pipeline (modeling_mel/registry.py)

__all__ = [
    "DEFAULT_BACKBONE",
    "resolve_backbone",
    "load_tokenizer",
    "MultimodalNSPConfig",
    "BertForMultimodalNSP",
    "MultimodalNSPOutput",
    "MultimodalNSPProcessor",
    "entity_context",
    "mention_prompt",
    "entity_prompt",
    "generic_entity_prompt",
    "recent_tweets",
    "ZemelConfig",
    "ZemelPolyEncoder",
    "ZemelOutput",
    "ZemelContextOutput",
    "ZemelProcessor",
    "Bm25RuleCandidates",
    "EntityIndex",
    "MultimodalEntityLinkingPipeline",
    "register_pipeline",
    "register_all",
    "register_family",
]
