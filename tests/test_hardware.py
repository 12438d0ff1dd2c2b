"""bf16_is_fast: bf16 autocast only where this machine has native bf16 kernels (else it is ~70x slower on CPU), decided
from the hardware, never by timing."""

import pytest
import torch

from modeling_mel import hardware


@pytest.fixture(autouse=True)
def _fresh_cache():
    hardware.bf16_is_fast.cache_clear()
    yield
    hardware.bf16_is_fast.cache_clear()


def _fake_cpu(monkeypatch, mkldnn_bf16: bool, flags: set[str]) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn_bf16)
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: set(flags))


def test_cpu_without_bf16_kernels_says_no(monkeypatch):
    _fake_cpu(monkeypatch, False, {"avx512_bf16", "amx_bf16"})
    assert hardware.bf16_is_fast("cpu") is False


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, True),  # AVX512-BF16 (Cooper Lake, Zen 4)
    ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, True),  # AMX (Sapphire Rapids)
    ({"asimd", "bf16"}, True),  # aarch64 with the BF16 extension
    ({"avx2", "avx512f", "avx512bw"}, False),  # AVX-512 without BF16: emulated
    ({"avx2", "fma"}, False),  # AVX2 only: about 70x slower in bf16
])
def test_cpu_decision_follows_the_cpu_flags(monkeypatch, flags, expected):
    _fake_cpu(monkeypatch, True, flags)
    assert hardware.bf16_is_fast("cpu") is expected


def test_cpu_decision_reads_proc_cpuinfo_flags(monkeypatch, tmp_path):
    """The /proc/cpuinfo flags line counts as well as torch's cpuinfo capabilities."""
    import builtins

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: {"avx2": True, "avx512_bf16": False})
    assert "avx512_bf16" in hardware._cpu_flags()


def test_cuda_needs_a_gpu_and_other_devices_say_no(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.bf16_is_fast("cuda") is False
    assert hardware.bf16_is_fast("mps") is False
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert hardware.bf16_is_fast() is False  # default device: the CPU here


def test_result_is_cached(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: calls.append(1) or False)
    hardware.bf16_is_fast("cpu")
    hardware.bf16_is_fast("cpu")
    assert len(calls) == 1
