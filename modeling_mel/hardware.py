"""What the machine does fast: whether bf16 autocast pays off on this CPU (or GPU).

bf16 autocast on a CPU is only fast where the CPU has native bf16 matrix instructions: on an AVX512-BF16/AMX
machine a bf16 matrix product ran about 4x faster than fp32, on an AVX2-only machine about 70x SLOWER (1.2 vs 84
GFLOP/s, benchmarks/common.py matmul_gflops on an idle 2-core AVX2 EPYC). So "autocast works" is not a reason to use
it; :func:`bf16_is_fast` reads the CPU's flags (and oneDNN's bf16 support). It times nothing: a timing under load
once flipped between runs, so an index was built in fp32 and served in bf16. The precision an index was built with
is recorded in its ``index_config.json`` (``bf16``); ``mel link`` / ``mel serve`` / ``mel calibrate`` follow it unless
``--fp32`` / ``--bf16`` is given.

Where the inference commands run: :func:`resolve_device` turns a ``--device`` value (``auto``, ``cpu``, ``cuda``,
``cuda:N``, ``mps``) into a ``torch.device``, or a one-line ``ValueError`` naming what this machine has.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re

import torch

logger = logging.getLogger(__name__)


#: CPU flags of native bf16 matrix instructions (x86: AVX512-BF16, AMX-BF16; aarch64: the BF16 extension).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def _cpu_flags() -> set[str]:
    """The CPU's feature flags, lower case: torch's cpuinfo capabilities (``torch._C._cpu._get_cpu_capability()``,
    the true entries), plus the ``flags`` / ``Features`` lines of ``/proc/cpuinfo`` on Linux. Empty when neither is
    readable."""
    flags: set[str] = set()
    try:
        caps = torch._C._cpu._get_cpu_capability()
        flags.update(str(k).lower() for k, v in caps.items() if v is True)
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - private API moved
        for name in ("avx512_bf16", "amx_tile"):
            probe = getattr(torch.cpu, f"_is_{name}_supported", None)
            if callable(probe) and probe():
                flags.add("amx_bf16" if name == "amx_tile" else name)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    flags.update(value.lower().split())
    except OSError:
        pass
    return flags


def _mkldnn_bf16() -> bool:
    """Whether torch's oneDNN (mkldnn) backend has bf16 kernels on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - private API moved: the flags alone decide
        return True


@functools.lru_cache(maxsize=None)
def bf16_is_fast(device: str | None = None) -> bool:
    """``True`` when this machine has native bf16 matrix kernels on ``device``: a property of the hardware, no timing.

    ``device=None``: the device training and inference use here (``cuda`` when available, else ``cpu``).

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: oneDNN must report bf16 kernels and the CPU must have a native bf16
    instruction (:data:`BF16_CPU_FLAGS` among :func:`_cpu_flags`: AVX512-BF16 or AMX-BF16 on x86, BF16 on aarch64);
    AVX2-only CPUs (and AVX-512 ones without BF16, which emulate it) run fp32. The answer is the same on every run of
    the same machine, however busy it is, so ``mel index`` and ``mel link`` / ``mel serve`` choose the same precision
    (cached for the process). Other devices (MPS): ``False``.
    """
    device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device != "cpu":
        return False
    capability = torch.backends.cpu.get_cpu_capability()
    if not _mkldnn_bf16():
        logger.info("bf16 autocast off: oneDNN has no bf16 kernels on this CPU (%s)", capability)
        return False
    native = sorted(set(BF16_CPU_FLAGS) & _cpu_flags())
    logger.info("bf16 autocast %s: this CPU (%s) %s", "on" if native else "off", capability,
                f"has {', '.join(native)}" if native else "has no native bf16 instructions (avx512_bf16, amx_bf16)")
    return bool(native)


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
