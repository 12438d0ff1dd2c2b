#!/usr/bin/env python
"""Two-stage ``mel link`` (ZEMEL retriever + NSP reranker) against another checkout of the package, in one run.

    python benchmarks/two_stage_speed.py --old_repo /tmp/old --model W/rerank --kb W/kb.jsonl \\
        --retriever W/zemel_index --input W/dev.jsonl --top_k 1 5 100

For each ``--top_k`` it runs ``mel link --retriever`` of the old checkout (``PYTHONPATH=OLD_REPO``) and of this one,
alternately (``--repeats`` pairs), on the same input, and reports mentions/s (``mel link``'s own timing: model
loading excluded, KB and index loading included), the new/old ratio of the medians and ``accuracy@1`` of both. Writes
``benchmarks/results/<name>.{json,md}``. Without ``--batch_size`` each side links with its own ``mel link`` default
(what a user runs: 8 mentions a batch in older checkouts, 64 now); with it, both with that one.

With ``--chunk N`` the two ``mel link`` processes run side by side instead, each built once as ``mel link`` builds it
(same arguments, same pipeline) and then linking the input ``N`` mentions at a time through ``mel link``'s own
``link_file``, old and new alternating chunk by chunk (the first of each pair alternating too): the machine's speed
changes within minutes here (up to 1.8x), and chunks of a few seconds see the same machine on both sides. Mentions/s
are then the lines over the summed ``link_file`` seconds of each side (loading excluded), the ratio theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from common import REPO_ROOT, RESULTS_DIR, write_lines  # noqa: E402  (sets sys.path and the offline env)


def link_command(program: str, args: argparse.Namespace, top_k: int, input_path: str, out: str) -> list[str]:
    """``python -c PROGRAM link ...``: the two-stage ``mel link`` of this benchmark's arguments."""
    batch = ["--batch_size", str(args.batch_size)] if args.batch_size else []  # else each checkout's default
    return [sys.executable, "-c", program, "link", "--model", args.model, "--kb", args.kb, "--retriever", args.retriever,
            "--retriever_k", str(args.retriever_k), "--input", input_path, "--output", out, "--top_k", str(top_k),
            *batch, "--no_images"]


def checkout_env(repo: str) -> dict[str, str]:
    """The environment that imports the package of the checkout at ``repo``, offline."""
    return dict(os.environ, PYTHONPATH=repo, HF_HUB_OFFLINE="1")


def run_link(repo: str, args: argparse.Namespace, top_k: int, out: str) -> dict:
    """One ``mel link`` run of the checkout at ``repo``; its summary line (seconds, accuracy@1, ...)."""
    cmd = link_command("import sys; from modeling_mel.cli import main; sys.exit(main())", args, top_k, args.input, out)
    done = subprocess.run(cmd, cwd=repo, env=checkout_env(repo), capture_output=True, text=True)
    for line in done.stdout.splitlines()[::-1]:
        if line.startswith("{") and '"seconds"' in line:
            return json.loads(line)
    raise SystemExit(f"two_stage_speed.py: mel link of {repo} failed ({done.returncode}): {done.stderr[-800:]}")


#: the ``mel link`` of a worker: its ``link_file`` (``cli_link``, or ``cli_inference`` in older checkouts) replaced by
#: a loop that links the chunk files named on stdin with the pipeline ``mel link`` built, one JSON line each
WORKER = r"""
import json, os, sys, time
import modeling_mel
from modeling_mel import cli
here = os.path.dirname(modeling_mel.__file__)  # this checkout's package (an editable install may map other modules)
for name in ("modeling_mel.cli_link", "modeling_mel.cli_inference"):
    try:
        module = __import__(name, fromlist=["link_file"])
    except ImportError:
        continue
    if hasattr(module, "link_file") and os.path.dirname(module.__file__) == here:
        break
else:
    sys.exit(f"no link_file in the mel link modules of {here}")
original = module.link_file

def serve(pipe, input_path, output_path, batch_size=8, resume=False, fingerprint=None, **call):
    for line in sys.stdin:
        paths = line.split()
        if not paths:
            break
        start = time.perf_counter()
        counts = original(pipe, paths[0], paths[1], batch_size=batch_size, **call)
        print(json.dumps(dict(counts, seconds=time.perf_counter() - start)), flush=True)
    return {"lines": 0, "linked": 0, "errors": 0, "correct@1": 0, "with_gold": 0}

module.link_file = serve
sys.exit(cli.main())
"""


def run_chunks(args: argparse.Namespace, top_k: int, tmp: str) -> dict[str, dict]:
    """Old and new ``mel link`` side by side, linking the input ``--chunk`` mentions at a time, alternately; per side
    the summed counts and ``link_file`` seconds, and the per-chunk seconds."""
    with open(args.input, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    chunks = []
    for n in range(0, len(lines), args.chunk):
        path = os.path.join(tmp, f"chunk_{n // args.chunk}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines[n:n + args.chunk])
        chunks.append(path)
    procs, logs = {}, {}
    for name, repo in (("old", os.path.abspath(args.old_repo)), ("new", REPO_ROOT)):
        cmd = link_command(WORKER, args, top_k, chunks[0], os.path.join(tmp, f"{name}_{top_k}_unused.jsonl"))
        logs[name] = open(os.path.join(tmp, f"{name}_{top_k}.log"), "w", encoding="utf-8")
        procs[name] = subprocess.Popen(cmd, cwd=repo, env=checkout_env(repo), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=logs[name], text=True)
    totals = {n: {"lines": 0, "correct@1": 0, "with_gold": 0, "seconds": 0.0, "chunks": []} for n in procs}
    try:
        for c, path in enumerate(chunks):
            for name in (("old", "new") if c % 2 == 0 else ("new", "old")):
                proc = procs[name]
                proc.stdin.write(f"{path} {os.path.join(tmp, f'{name}_{top_k}_{c}.jsonl')}\n")
                proc.stdin.flush()
                while True:
                    line = proc.stdout.readline()
                    if not line:
                        logs[name].flush()
                        with open(logs[name].name, encoding="utf-8") as f:
                            raise SystemExit(f"two_stage_speed.py: the {name} mel link stopped: {f.read()[-800:]}")
                    if line.startswith("{") and '"seconds"' in line:
                        break
                got = json.loads(line)
                for key in ("lines", "correct@1", "with_gold", "seconds"):
                    totals[name][key] += got[key]
                totals[name]["chunks"].append(got["seconds"])
    finally:
        for name, proc in procs.items():
            proc.stdin.close()
            proc.wait()
            logs[name].close()
    for t in totals.values():
        t["accuracy@1"] = t["correct@1"] / t["with_gold"] if t["with_gold"] else None
    return totals


def result_row(top_k: int, speed: dict[str, float], old_accuracy: float, new_accuracy: float, lines: int,
               **extra: Any) -> dict[str, Any]:
    """One ``--top_k`` row of the result: both sides' mentions/s, their ratio, accuracy@1, plus ``extra``."""
    return {"top_k": top_k, "old_mentions_per_s": speed["old"], "new_mentions_per_s": speed["new"],
            "ratio": speed["new"] / speed["old"], "old_accuracy@1": old_accuracy, "new_accuracy@1": new_accuracy,
            "lines": lines, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old_repo", required=True, help="a checkout of the commit to compare with (git worktree)")
    parser.add_argument("--model", required=True, help="the NSP reranker")
    parser.add_argument("--kb", required=True)
    parser.add_argument("--retriever", required=True, help="the ZEMEL entity index")
    parser.add_argument("--input", required=True, help="mentions JSONL (with entity_id for accuracy@1)")
    parser.add_argument("--top_k", type=int, nargs="+", default=[1, 5, 100])
    parser.add_argument("--retriever_k", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=None,
                        help="mentions per batch on both sides (default: each checkout's own `mel link` default)")
    parser.add_argument("--repeats", type=int, default=1, help="old/new pairs per top_k")
    parser.add_argument("--chunk", type=int, default=0,
                        help="N > 0: old and new side by side, alternating every N mentions (see above)")
    parser.add_argument("--name", default="two_stage_speed")
    parser.add_argument("--out_dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.top_k:
            if args.chunk > 0:
                totals = run_chunks(args, k, tmp)
                speed = {n: t["lines"] / t["seconds"] for n, t in totals.items()}
                ratios = [o / n for o, n in zip(totals["old"]["chunks"], totals["new"]["chunks"])]  # old s / new s
                print(f"top_k {k}: {speed}, chunk ratios (old s / new s) {[round(r, 2) for r in ratios]}", flush=True)
                rows.append(result_row(k, speed, totals["old"]["accuracy@1"], totals["new"]["accuracy@1"],
                                       totals["new"]["lines"], median_chunk_ratio=statistics.median(ratios),
                                       old_chunk_seconds=totals["old"]["chunks"],
                                       new_chunk_seconds=totals["new"]["chunks"]))
                continue
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            for r in range(args.repeats):
                for name, repo in (("old", os.path.abspath(args.old_repo)), ("new", REPO_ROOT)):
                    out = os.path.join(tmp, f"{name}_{k}_{r}.jsonl")
                    runs[name].append(run_link(repo, args, k, out))
                    print(f"top_k {k} {name}: {runs[name][-1]}", flush=True)
            speed = {n: statistics.median(x["lines"] / x["seconds"] for x in v) for n, v in runs.items()}
            rows.append(result_row(k, speed, runs["old"][0]["accuracy@1"], runs["new"][0]["accuracy@1"],
                                   runs["new"][0]["lines"]))
    how = (f"side by side, alternating every {args.chunk} mentions (`link_file` seconds, loading excluded)"
           if args.chunk > 0 else f"median of {args.repeats} alternated pair(s)")
    batch = f"batch {args.batch_size}" if args.batch_size else "each checkout's default --batch_size"
    lines = [f"two-stage `mel link --retriever --retriever_k {args.retriever_k}` ({batch}), "
             f"{rows[0]['lines']} mentions, old = {args.old_repo}, {how}", "",
             "| --top_k | old mentions/s | new mentions/s | new / old | old accuracy@1 | new accuracy@1 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['top_k']} | {r['old_mentions_per_s']:.1f} | {r['new_mentions_per_s']:.1f} | "
                     f"**{r['ratio']:.2f}x** | {r['old_accuracy@1']:.4f} | {r['new_accuracy@1']:.4f} |")
    for r in rows:
        if "median_chunk_ratio" in r:
            lines.append(f"\n--top_k {r['top_k']}: median of the per-chunk ratios {r['median_chunk_ratio']:.2f}x")
    lines += ["", "Command: `python benchmarks/two_stage_speed.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`"]
    write_lines(args.out_dir, args.name, {"rows": rows, "args": vars(args)}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
