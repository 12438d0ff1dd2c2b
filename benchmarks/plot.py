"""Plots of the benchmark results: latency vs KB size (scale) and latency vs linking mode (zemel_latency).

Reads ``scale*.json`` and ``zemel_latency*.json`` from ``--results_dir`` and writes ``scale_latency.png`` and
``zemel_latency_modes.png`` into ``--out_dir`` (matplotlib, Agg backend: no display needed).

    python benchmarks/plot.py
"""

from __future__ import annotations

import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import RESULTS_DIR, base_parser  # noqa: E402


def load(results_dir: str, prefix: str) -> dict[str, dict]:
    out = {}
    for path in sorted(glob.glob(os.path.join(results_dir, f"{prefix}*.json"))):
        with open(path) as f:
            out[os.path.splitext(os.path.basename(path))[0]] = json.load(f)
    return out


def plot_scale(runs: dict[str, dict], path: str) -> str | None:
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        kinds = dict.fromkeys(r.get("kind", "") for r in run["rows"])  # one line per index type (older runs: one)
        for kind in kinds:
            rows = [r for r in run["rows"] if r.get("kind", "") == kind]
            x = [r["entities"] for r in rows]
            label = f"{name} {kind}".strip()
            ax.plot(x, [r["ms/mention"] for r in rows], marker="o", label=f"{label}: total")
            ax.plot(x, [r["search ms"] for r in rows], marker="x", linestyle="--", label=f"{label}: index search")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("KB entities")
    ax.set_ylabel("ms per mention (median)")
    ax.set_title("Linking latency vs KB size (encode + top-k search + poly rerank)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_modes(runs: dict[str, dict], path: str) -> str | None:
    if not runs:
        return None
    bars = []  # (label, naive ms, fast ms)
    for name, run in runs.items():
        by = {(r["size"], r["mode"], r["path"]): r["T_cpu ms/example"] for r in run["rows"]}
        for size, mode, path_ in sorted(by):
            if path_ == "fast":
                bars.append((f"{name.replace('zemel_latency', '').strip('_') or 'full'}\n{size} {mode}", by.get((size, mode, "naive")), by[(size, mode, "fast")]))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(bars)), 4.5))
    xs = range(len(bars))
    ax.bar([x - 0.2 for x in xs], [b[1] or 0 for b in bars], width=0.4, label="naive (fp32)")
    ax.bar([x + 0.2 for x in xs], [b[2] for b in bars], width=0.4, label="fast (bf16, inference_mode)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([b[0] for b in bars], fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("ms per example, 1k candidates")
    ax.set_title("ZEMEL linking latency by mode (Table 3)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--results_dir", default=RESULTS_DIR, help="where the benchmark JSON files are")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    written = [p for p in (
        plot_scale(load(args.results_dir, "scale"), os.path.join(args.out_dir, "scale_latency.png")),
        plot_modes(load(args.results_dir, "zemel_latency"), os.path.join(args.out_dir, "zemel_latency_modes.png")),
    ) if p]
    for p in written:
        print(f"wrote {p}")
    return {"written": written}


if __name__ == "__main__":
    main()
