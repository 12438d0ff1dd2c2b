"""What the machine does fast: whether bf16 autocast pays off on this CPU (or GPU).

bf16 autocast on a CPU is only fast where the CPU has bf16 (or at least AVX-512) matrix kernels: on an
AVX-512/AMX machine a bf16 matrix product ran about 4x faster than fp32, on an AVX2-only machine about
70x SLOWER (1.2 vs 84 GFLOP/s, benchmarks/common.py matmul_gflops on an idle 2-core AVX2 EPYC). So "autocast
works" is not a reason to use it; :func:`bf16_is_fast` checks the kernels and times one small product of each kind.

Where the inference commands run: :func:`resolve_device` turns a ``--device`` value (``auto``, ``cpu``, ``cuda``,
``cuda:N``, ``mps``) into a ``torch.device``, or a one-line ``ValueError`` naming what this machine has.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time

import torch

logger = logging.getLogger(__name__)


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@functools.lru_cache(maxsize=None)
def bf16_is_fast(device: str | None = None) -> bool:
    """``True`` when bf16 autocast is supported on ``device`` and, on a CPU, a bf16 matrix product is faster than fp32.

    ``device=None``: the device training and inference use here (``cuda`` when available, else ``cpu``).

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: oneDNN must report bf16 kernels, then one 256x256 product per
    precision is timed, interleaved, best of 15 (about 0.1 s; the result is cached for the process).
    """
    device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device != "cpu":
        return False
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            logger.info("bf16 autocast off: this CPU (%s) has no bf16 kernels", torch.backends.cpu.get_cpu_capability())
            return False
    except (AttributeError, RuntimeError):  # pragma: no cover - private API moved; fall back to timing alone
        pass
    a = torch.randn(512, 512)
    b = torch.randn(512, 512)

    def bf16_product():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return a @ b

    try:
        bf16_product()  # warm-up
    except RuntimeError:  # pragma: no cover - autocast unsupported
        return False
    # Interleaved, best of many: another process on the cores (a training run, a test suite) inflates single timings
    # of either kind at random; the minimum over interleaved repeats is what each kernel can do.
    fp32 = bf16 = float("inf")
    for _ in range(15):
        fp32 = min(fp32, _best_time(lambda: a @ b, 1))
        bf16 = min(bf16, _best_time(bf16_product, 1))
    fast = bf16 < fp32
    logger.info("bf16 autocast %s: 512x512 product %.2f ms bf16 vs %.2f ms fp32", "on" if fast else "off", 1e3 * bf16, 1e3 * fp32)
    return fast


__all__ = ["autocast", "available_devices", "bf16_is_fast", "resolve_device"]


def autocast(bf16: bool, device: torch.device | str):
    """``torch.autocast`` to bfloat16 on ``device``'s type when ``bf16``, else a no-op context (package code; the
    model file ``modeling_zemel.py`` keeps its own, as files shipped with a model import only torch and transformers)."""
    if bf16:
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: The ``--device`` values of the inference commands.
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices torch can use on this machine: ``cpu``, then ``cuda:0`` ... and ``mps`` where present."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` of a ``--device`` value: ``auto`` (CUDA when available, else MPS, else CPU), ``cpu``,
    ``cuda``, ``cuda:N`` or ``mps``; CUDA devices always carry their index (``cuda`` -> the current one).

    ``local_rank`` (one process of a torchrun / accelerate launch run): ``auto`` and ``cuda`` put the process on
    ``cuda:<local_rank % device_count>``, its own GPU. ``ValueError`` (one line naming the requested device and what
    this machine has) for an unknown value, an absent accelerator or a ``cuda:N`` beyond the device count.
    """
    raw = "auto" if spec is None else str(spec)
    text = raw.strip().lower()
    match = _DEVICE_RE.match(text)
    available = ", ".join(available_devices())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda" and text != "mps:0"):
        raise ValueError(f"--device {raw}: unknown device; use {DEVICE_CHOICES} (available: {available})")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif _mps_available():
            kind = "mps"
        else:
            return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise ValueError(f"--device {raw}: MPS is not available on this machine (available: {available}); "
                             "pass --device cpu or auto")
        return torch.device("mps", 0)
    if not torch.cuda.is_available():
        raise ValueError(f"--device {raw}: CUDA is not available on this machine (available: {available}); "
                         "pass --device cpu or auto")
    count = torch.cuda.device_count()
    if index is None:
        n = int(local_rank) % count if local_rank is not None else torch.cuda.current_device()
        return torch.device("cuda", n)
    if int(index) >= count:
        raise ValueError(f"--device {raw}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                         f"(available: {available}); pass one of them, cuda or auto")
    return torch.device("cuda", int(index))
