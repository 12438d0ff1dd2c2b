"""The one place where model families and the linking pipeline are registered with transformers.

``register_family(config_cls, model_cls, processor_cls)`` makes ``AutoConfig`` / ``AutoModel`` / ``AutoProcessor``
load a family's saved folders without remote code and marks its classes for Hub-style saving (``save_pretrained``
writes ``auto_map`` and copies the code files). ``register_all()`` registers the package's families and the
``"multimodal-entity-linking"`` pipeline now. Both are idempotent.

Importing :mod:`modeling_mel` calls :func:`install`, which registers without importing torch or transformers: each
piece is registered as soon as both of its sides are loaded, whoever loads them and in whatever order. The
``AutoConfig`` piece of a family when ``transformers.models.auto.configuration_auto`` is (and the family's config
module, imported then if nobody is importing it), ``AutoModel`` with ``modeling_auto``, ``AutoProcessor`` with
``processing_auto``, the pipeline with ``transformers.pipelines``; a class is marked for Hub-style saving as soon as its
module is loaded. So ``import modeling_mel`` stays fast (``mel --help`` needs neither torch nor transformers), and
``AutoModel.from_pretrained(zemel_dir)`` works after it as before. The trigger is a post-import hook on those modules
(a ``sys.meta_path`` finder that wraps their loaders); modules already loaded are registered at once.

A new family adds one line to :data:`FAMILIES` (or calls :func:`register_family` from its own code).
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import sys
import threading
from typing import Any

logger = logging.getLogger(__name__)

#: ("module:ConfigClass", "module:ModelClass", "module:ProcessorClass") of each family of the package.
FAMILIES: list[tuple[str, str, str]] = [
    ("modeling_mel.configuration_multimodal_nsp:MultimodalNSPConfig",
     "modeling_mel.modeling_multimodal_nsp:BertForMultimodalNSP",
     "modeling_mel.processing_multimodal_nsp:MultimodalNSPProcessor"),
    ("modeling_mel.configuration_zemel:ZemelConfig",
     "modeling_mel.modeling_zemel:ZemelPolyEncoder",
     "modeling_mel.processing_zemel:ZemelProcessor"),
]
PIPELINE = "modeling_mel.pipeline_entity_linking:register_pipeline"

_AUTO_CONFIG = "transformers.models.auto.configuration_auto"
_AUTO_MODEL = "transformers.models.auto.modeling_auto"
_AUTO_PROCESSOR = "transformers.models.auto.processing_auto"
_PIPELINES = "transformers.pipelines"
# completing one of these may be what a pending piece waited for (a transformers module half-loaded when it was tried)
_TRANSFORMERS_BASES = ("transformers.configuration_utils", "transformers.modeling_utils", "transformers.processing_utils")


def _module_of(target: str) -> str:
    return target.partition(":")[0]


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _loaded(module: str) -> bool:
    """``module`` is in ``sys.modules`` and done executing (not half-way through its own import)."""
    mod = sys.modules.get(module)
    return mod is not None and not getattr(getattr(mod, "__spec__", None), "_initializing", False)


def _importable_now(module: str) -> bool:
    """Loaded, or not started (importing it now is safe); ``False`` while it is half-way through its import."""
    return module not in sys.modules or _loaded(module)


def _try(register: Any, *args: Any) -> None:
    try:
        register(*args)
    except ValueError:  # already registered
        pass


# -- the pieces: (transformers module it needs, our modules it needs, action) --------------------------------------
def _pieces() -> list[tuple[str, str | None, tuple[str, ...], Any]]:
    """Every piece as ``(key, transformers module or None, our targets, action(*loaded targets))``."""
    pieces: list[tuple[str, str | None, tuple[str, ...], Any]] = []
    for config_t, model_t, processor_t in FAMILIES:
        pieces += [
            (f"save:{config_t}", None, (config_t,), lambda c: c.register_for_auto_class()),
            (f"save:{model_t}", None, (model_t,), lambda m: m.register_for_auto_class("AutoModel")),
            (f"save:{processor_t}", None, (processor_t,), lambda p: p.register_for_auto_class("AutoProcessor")),
            (f"auto:{config_t}", _AUTO_CONFIG, (config_t,),
             lambda c: _try(sys.modules[_AUTO_CONFIG].AutoConfig.register, c.model_type, c)),
            (f"auto:{model_t}", _AUTO_MODEL, (config_t, model_t),
             lambda c, m: _try(sys.modules[_AUTO_MODEL].AutoModel.register, c, m)),
            (f"auto:{processor_t}", _AUTO_PROCESSOR, (config_t, processor_t),
             lambda c, p: _try(sys.modules[_AUTO_PROCESSOR].AutoProcessor.register, c, p)),
        ]
    pieces.append(("pipeline", _PIPELINES, (PIPELINE,), lambda register: register()))
    return pieces


_done: set[str] = set()
_lock = threading.RLock()
_state = {"running": False, "again": False}


def _ready(key: str, needs: str | None, targets: tuple[str, ...]) -> bool:
    if key in _done:
        return False
    if key.startswith("save:"):  # marked once the class's own module is loaded; never imports it
        return all(_loaded(_module_of(t)) for t in targets)
    return needs is not None and _loaded(needs) and all(_importable_now(_module_of(t)) for t in targets)


def register_pending() -> None:
    """Register every piece whose two sides are loaded (importing our side when nobody is importing it)."""
    with _lock:
        if _state["running"]:  # an import below finished a watched module: go round once more
            _state["again"] = True
            return
        _state["running"] = True
        try:
            _state["again"] = True
            while _state["again"]:
                _state["again"] = False
                for key, needs, targets, action in _pieces():
                    if not _ready(key, needs, targets):
                        continue
                    try:
                        action(*[_load(t) for t in targets])
                    except (ImportError, AttributeError) as err:  # a module on the way is half-loaded: retried later
                        logger.debug("registration of %s deferred: %s", key, err)
                        continue
                    _done.add(key)
        finally:
            _state["running"] = False


class _HookedLoader(importlib.abc.Loader):
    """Runs the wrapped loader, then :func:`register_pending` (everything else is the wrapped loader's)."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec._initializing = False  # done executing (the import system clears it right after us)
        register_pending()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds the watched modules with the other finders and wraps their loaders in :class:`_HookedLoader`."""

    def __init__(self, watched: set[str]) -> None:
        self.watched = watched

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.watched:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Register what can be registered now and the rest as soon as its modules load (what ``import modeling_mel``
    does; idempotent)."""
    with _lock:
        if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
            watched = {_AUTO_CONFIG, _AUTO_MODEL, _AUTO_PROCESSOR, _PIPELINES, *_TRANSFORMERS_BASES}
            watched |= {_module_of(t) for family in FAMILIES for t in family} | {_module_of(PIPELINE)}
            sys.meta_path.insert(0, _PostImportFinder(watched))
    register_pending()


def register_family(config_cls: Any, model_cls: Any, processor_cls: Any = None) -> None:
    """Register one family with the Auto classes and for Hub-style saving now; safe to call twice."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    _try(AutoConfig.register, config_cls.model_type, config_cls)
    _try(AutoModel.register, config_cls, model_cls)
    config_cls.register_for_auto_class()
    model_cls.register_for_auto_class("AutoModel")
    if processor_cls is not None:
        _try(AutoProcessor.register, config_cls, processor_cls)
        processor_cls.register_for_auto_class("AutoProcessor")


def register_all() -> None:
    """Register every family of :data:`FAMILIES` and the linking pipeline now (idempotent; imports them)."""
    for config_t, model_t, processor_t in FAMILIES:
        register_family(_load(config_t), _load(model_t), _load(processor_t))
    _load(PIPELINE)()


__all__ = ["FAMILIES", "register_family", "register_all", "register_pending", "install"]
