"""modeling-mel: multimodal entity linking (PFMEL and ZEMEL) as transformers models.

Importing the package registers the model families with the ``Auto*`` classes and the linking pipeline (no remote
code needed; ``save_pretrained`` writes ``auto_map`` and the code files), and imports nothing heavy: the names below
load their module on first use, and the registration of each piece happens as soon as transformers' side of it is
loaded (:mod:`modeling_mel.registry`). ``import modeling_mel`` therefore needs neither torch nor transformers.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from .registry import install as _install_registration
from .registry import register_all, register_family

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "DEFAULT_BACKBONE": "backbones",
    "resolve_backbone": "backbones",
    "load_tokenizer": "backbones",
    "MultimodalNSPConfig": "configuration_multimodal_nsp",
    "BertForMultimodalNSP": "modeling_multimodal_nsp",
    "MultimodalNSPOutput": "modeling_multimodal_nsp",
    "MultimodalNSPProcessor": "processing_multimodal_nsp",
    "entity_context": "processing_multimodal_nsp",
    "mention_prompt": "processing_multimodal_nsp",
    "entity_prompt": "processing_multimodal_nsp",
    "generic_entity_prompt": "processing_multimodal_nsp",
    "recent_tweets": "processing_multimodal_nsp",
    "ZemelConfig": "configuration_zemel",
    "ZemelPolyEncoder": "modeling_zemel",
    "ZemelOutput": "modeling_zemel",
    "ZemelContextOutput": "modeling_zemel",
    "ZemelProcessor": "processing_zemel",
    "Bm25RuleCandidates": "candidates",
    "EntityIndex": "entity_index",
    "FaissIndexConfig": "faiss_index",
    "MultimodalEntityLinkingPipeline": "pipeline_entity_linking",
    "register_pipeline": "pipeline_entity_linking",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .backbones import DEFAULT_BACKBONE, load_tokenizer, resolve_backbone
    from .candidates import Bm25RuleCandidates
    from .configuration_multimodal_nsp import MultimodalNSPConfig
    from .configuration_zemel import ZemelConfig
    from .entity_index import EntityIndex
    from .faiss_index import FaissIndexConfig
    from .modeling_multimodal_nsp import BertForMultimodalNSP, MultimodalNSPOutput
    from .modeling_zemel import ZemelContextOutput, ZemelOutput, ZemelPolyEncoder
    from .pipeline_entity_linking import MultimodalEntityLinkingPipeline, register_pipeline
    from .processing_multimodal_nsp import (
        MultimodalNSPProcessor,
        entity_context,
        entity_prompt,
        generic_entity_prompt,
        mention_prompt,
        recent_tweets,
    )
    from .processing_zemel import ZemelProcessor


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modeling_mel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


logging.getLogger(__name__).addHandler(logging.NullHandler())

_install_registration()  # the Auto classes and the pipeline, as their transformers side loads (registry.py)

__all__ = [*_LAZY, "register_all", "register_family"]
