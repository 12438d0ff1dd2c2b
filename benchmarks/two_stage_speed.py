#!/usr/bin/env python
"""Two-stage ``mel link`` (ZEMEL retriever + NSP reranker) against another checkout of the package, in one run.

    python benchmarks/two_stage_speed.py --old_repo /tmp/old --model W/rerank --kb W/kb.jsonl \\
        --retriever W/zemel_index --input W/dev.jsonl --top_k 1 5 100

For each ``--top_k`` it runs ``mel link --retriever`` of the old checkout (``PYTHONPATH=OLD_REPO``) and of this one,
alternately (``--repeats`` pairs), on the same input, and reports mentions/s (``mel link``'s own timing: model
loading excluded, KB and index loading included), the new/old ratio of the medians and ``accuracy@1`` of both. Writes
``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from common import REPO_ROOT, RESULTS_DIR, write_lines  # noqa: E402  (sets sys.path and the offline env)


def run_link(repo: str, args: argparse.Namespace, top_k: int, out: str) -> dict:
    """One ``mel link`` run of the checkout at ``repo``; its summary line (seconds, accuracy@1, ...)."""
    env = dict(os.environ, PYTHONPATH=repo, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-c", "import sys; from modeling_mel.cli import main; sys.exit(main())", "link",
           "--model", args.model, "--kb", args.kb, "--retriever", args.retriever, "--retriever_k", str(args.retriever_k),
           "--input", args.input, "--output", out, "--top_k", str(top_k), "--batch_size", str(args.batch_size),
           "--no_images"]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines()[::-1]:
        if line.startswith("{") and '"seconds"' in line:
            return json.loads(line)
    raise SystemExit(f"two_stage_speed.py: mel link of {repo} failed ({done.returncode}): {done.stderr[-800:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old_repo", required=True, help="a checkout of the commit to compare with (git worktree)")
    parser.add_argument("--model", required=True, help="the NSP reranker")
    parser.add_argument("--kb", required=True)
    parser.add_argument("--retriever", required=True, help="the ZEMEL entity index")
    parser.add_argument("--input", required=True, help="mentions JSONL (with entity_id for accuracy@1)")
    parser.add_argument("--top_k", type=int, nargs="+", default=[1, 5, 100])
    parser.add_argument("--retriever_k", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="old/new pairs per top_k")
    parser.add_argument("--name", default="two_stage_speed")
    parser.add_argument("--out_dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.top_k:
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            for r in range(args.repeats):
                for name, repo in (("old", os.path.abspath(args.old_repo)), ("new", REPO_ROOT)):
                    out = os.path.join(tmp, f"{name}_{k}_{r}.jsonl")
                    runs[name].append(run_link(repo, args, k, out))
                    print(f"top_k {k} {name}: {runs[name][-1]}", flush=True)
            speed = {n: statistics.median(x["lines"] / x["seconds"] for x in v) for n, v in runs.items()}
            rows.append({"top_k": k, "old_mentions_per_s": speed["old"], "new_mentions_per_s": speed["new"],
                         "ratio": speed["new"] / speed["old"], "old_accuracy@1": runs["old"][0]["accuracy@1"],
                         "new_accuracy@1": runs["new"][0]["accuracy@1"], "lines": runs["new"][0]["lines"]})
    lines = [f"two-stage `mel link --retriever --retriever_k {args.retriever_k}` (batch {args.batch_size}), "
             f"{rows[0]['lines']} mentions, old = {args.old_repo}, median of {args.repeats} alternated pair(s)", "",
             "| --top_k | old mentions/s | new mentions/s | new / old | old accuracy@1 | new accuracy@1 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['top_k']} | {r['old_mentions_per_s']:.1f} | {r['new_mentions_per_s']:.1f} | "
                     f"**{r['ratio']:.2f}x** | {r['old_accuracy@1']:.4f} | {r['new_accuracy@1']:.4f} |")
    lines += ["", "Command: `python benchmarks/two_stage_speed.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`"]
    write_lines(args.out_dir, args.name, {"rows": rows, "args": vars(args)}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
