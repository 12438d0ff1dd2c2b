"""Low-precision inference helpers shared by the model files (shipped with each model; imports torch only).

Under CPU autocast every ``nn.Linear`` weight is cast to bf16 again on every call, which costs as much as the
products themselves on small batches. :func:`low_precision_copy` keeps one inference copy of a submodule, rebuilt when
a parameter of the original changes: either with its linear weights already in the autocast dtype (what autocast would
cast them to: the results are those of plain autocast), or wholly in the low dtype (``whole=True``: every floating
parameter and buffer, run without autocast; no cast of an activation between two operations, so faster again, and
layer norms and softmaxes round in bf16 too).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
from torch import nn


def autocast_context(dtype: torch.dtype | None, device: torch.device | str):
    """``torch.autocast`` for ``dtype`` on ``device``'s type, or a no-op context when ``dtype`` is None / float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """Eval mode for the block, the module's mode restored after; ``train()`` / ``eval()`` walk every submodule (about
    a millisecond a call on these models), so only when the module was training."""
    was_training = module.training
    if was_training:
        module.eval()
    try:
        yield module
    finally:
        if was_training:
            module.train()


def low_precision_copy(
    owner: nn.Module,
    name: str,
    dtype: torch.dtype,
    prepare: Callable[[nn.Module], None] | None = None,
    whole: bool = False,
) -> nn.Module:
    """Inference copy of ``owner``'s submodule ``name`` with its ``nn.Linear`` weights in ``dtype``, to run under
    autocast, or (``whole``) with every floating parameter and buffer in ``dtype``, to run without autocast;
    ``prepare(copy)`` adjusts the copy once when it is built. Kept outside the module tree (not saved, not trained);
    rebuilt when any parameter of the original changes (tensor, device or in-place version)."""
    module = getattr(owner, name)
    key = (dtype, bool(whole), tuple((p.data_ptr(), p._version) for p in module.parameters()))
    store = owner.__dict__.setdefault("_low_precision_copies", {})
    hit = store.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        low = copy.deepcopy(module).requires_grad_(False).eval()
        targets = [low] if whole else [sub for sub in low.modules() if isinstance(sub, nn.Linear)]
        for sub in targets:
            sub.to(dtype)
        if prepare is not None:
            prepare(low)
    store[name] = (key, low)
    return low


__all__ = ["autocast_context", "evaluating", "low_precision_copy"]
