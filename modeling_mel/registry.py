"""The one place where model families and the linking pipeline are registered with transformers.

``register_family(config_cls, model_cls, processor_cls)`` makes ``AutoConfig`` / ``AutoModel`` / ``AutoProcessor``
load a family's saved folders without remote code and marks its classes for Hub-style saving (``save_pretrained``
writes ``auto_map`` and copies the code files). ``register_all()`` registers the package's families and the
``"multimodal-entity-linking"`` pipeline; importing :mod:`modeling_mel` calls it. Both are idempotent.

A new family adds one line to :data:`FAMILIES` (or calls :func:`register_family` from its own code).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_multimodal_nsp import MultimodalNSPConfig
from .configuration_zemel import ZemelConfig
from .modeling_multimodal_nsp import BertForMultimodalNSP
from .modeling_zemel import ZemelPolyEncoder
from .pipeline_entity_linking import register_pipeline
from .processing_multimodal_nsp import MultimodalNSPProcessor
from .processing_zemel import ZemelProcessor

#: (config class, model class, processor class) of each family of the package.
FAMILIES: list[tuple[Any, Any, Any]] = [
    (MultimodalNSPConfig, BertForMultimodalNSP, MultimodalNSPProcessor),
    (ZemelConfig, ZemelPolyEncoder, ZemelProcessor),
]


def register_family(config_cls: Any, model_cls: Any, processor_cls: Any = None) -> None:
    """Register one family with the Auto classes and for Hub-style saving; safe to call twice."""
    for register, args in ((AutoConfig.register, (config_cls.model_type, config_cls)),
                           (AutoModel.register, (config_cls, model_cls))):
        try:
            register(*args)
        except ValueError:  # already registered
            pass
    config_cls.register_for_auto_class()
    model_cls.register_for_auto_class("AutoModel")
    if processor_cls is not None:
        try:
            AutoProcessor.register(config_cls, processor_cls)
        except ValueError:
            pass
        processor_cls.register_for_auto_class("AutoProcessor")


def register_all() -> None:
    """Register every family of :data:`FAMILIES` and the linking pipeline (idempotent)."""
    for family in FAMILIES:
        register_family(*family)
    register_pipeline()


__all__ = ["FAMILIES", "register_family", "register_all"]
