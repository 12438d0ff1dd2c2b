"""bf16_is_fast: bf16 autocast only where this machine has fast bf16 kernels (else it is ~70x slower on CPU)."""

import itertools

import pytest
import torch

from modeling_mel import hardware


@pytest.fixture(autouse=True)
def _fresh_cache():
    hardware.bf16_is_fast.cache_clear()
    yield
    hardware.bf16_is_fast.cache_clear()


def test_cpu_without_bf16_kernels_says_no(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(hardware, "_best_time", lambda fn, repeats: pytest.fail("no timing when the kernels are missing"))
    assert hardware.bf16_is_fast("cpu") is False


@pytest.mark.parametrize("bf16_s, fp32_s, expected", [(0.001, 0.004, True), (0.2, 0.004, False), (0.004, 0.004, False)])
def test_cpu_decision_follows_the_timed_products(monkeypatch, bf16_s, fp32_s, expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    times = itertools.cycle([fp32_s, bf16_s])  # interleaved: fp32, bf16, fp32, ...
    monkeypatch.setattr(hardware, "_best_time", lambda fn, repeats: next(times))
    assert hardware.bf16_is_fast("cpu") is expected


def test_cpu_decision_survives_a_busy_machine(monkeypatch):
    """Another process on the cores inflates most timings at random: the best interleaved timing of each kind
    decides (a single timing per kind once switched bf16 off on an AVX-512 machine during a training run)."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    fp32 = [0.004] * 15
    bf16 = [0.03] * 12 + [0.001, 0.03, 0.03]  # bf16 is 4x faster, but was preempted in 14 of 15 tries
    times = iter([t for pair in zip(fp32, bf16) for t in pair])
    monkeypatch.setattr(hardware, "_best_time", lambda fn, repeats: next(times))
    assert hardware.bf16_is_fast("cpu") is True


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
