"""Shared helpers of the benchmarks: timing, machine facts, result files.

Every comparison a benchmark prints is a ratio of two figures measured in the same run (these
machines are noisy); absolute times are reported with the machine's core count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from modeling_mel.hardware import bf16_is_fast  # noqa: E402  (after the sys.path set-up)


def machine_info() -> dict[str, Any]:
    """CPU/GPU facts printed beside every absolute figure."""
    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2 machines run bf16 autocast ~70x slower
        "bf16_is_fast": bf16_is_fast(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def timeit(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, sync: bool = False) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timeit_pair(fn_a: Callable[[], Any], fn_b: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> tuple[float, float]:
    """Median times of ``fn_a`` and ``fn_b`` measured interleaved (a, b, a, b, ...), so that load
    changes on a noisy machine hit both alike."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    ta, tb = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        fn_a()
        ta.append(time.perf_counter() - start)
        start = time.perf_counter()
        fn_b()
        tb.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 1024, device: str = "cpu") -> float:
    """Measured rate of a square matrix product on this machine, GFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timeit(lambda: a @ b, repeats=5, warmup=2, sync=device != "cpu")
    return 2 * n**3 / seconds / 1e9


def base_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark shares."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: finishes in under 2 minutes on 2 cores")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (median reported)")
    parser.add_argument("--out_dir", default=RESULTS_DIR, help="where the JSON and markdown results go")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A markdown table of ``rows`` (dicts), floats with 3 significant decimals."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], tables: dict[str, str], out_dir: str = RESULTS_DIR, quick: bool = False) -> str:
    """Write ``<name>[_quick].json`` and ``.md`` into ``out_dir``; returns the markdown path."""
    os.makedirs(out_dir, exist_ok=True)
    stem = name + ("_quick" if quick else "")
    payload = dict(payload, machine=machine_info(), command=" ".join(["python"] + sys.argv), quick=quick,
                   date=time.strftime("%Y-%m-%d %H:%M:%S"))
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump(payload, f, indent=2, default=str)
    md = [f"### {name}{' (--quick)' if quick else ''}", "", f"`{payload['command']}` on {payload['machine'].get('cpu_count')} CPU cores"
          f" ({payload['machine'].get('cpu_model', payload['machine']['processor'])}), torch threads {payload['machine']['torch_threads']}", ""]
    for title, table in tables.items():
        md += [f"**{title}**", "", table, ""]
    path = os.path.join(out_dir, stem + ".md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    return path


def write_lines(out_dir: str, name: str, payload: dict[str, Any], lines: list[str]) -> None:
    """``<name>.json`` (``payload`` plus the machine facts) and ``<name>.md`` (``lines``) into ``out_dir``; prints the
    markdown (the benchmarks on trained models, which write their table as lines)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(dict(payload, machine=machine_info()), f, indent=2)
    with open(os.path.join(out_dir, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def setup_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
