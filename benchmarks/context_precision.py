#!/usr/bin/env python
"""What float32 mention contexts would cost ZEMEL's bf16 ``pipeline()``: mentions/s with bf16 and float32 context
encoding, alternated in one process over the same mentions, KB index and bf16 KB selection.

    python benchmarks/context_precision.py --model W/zemel --index W/zemel_index --input W/dev.jsonl --mentions 600

Why it matters: under bf16 a context's encoding depends (in its last bits) on the other contexts of its batch, so
``pipeline()``, ``mel link`` and the evaluation, which batch differently, can swap near-tied neighbours
(``benchmarks/eval_equals_product.py``: 298 / 300 in bf16, 300 / 300 in float32). Encoding contexts in float32 (what
the retriever of a two-stage linker does, ``EntityIndex.dense_linker``) removes that; this prints its price.
Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from common import RESULTS_DIR, write_lines  # noqa: E402  (sets sys.path and the offline env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", required=True, help="a trained ZEMEL folder")
    parser.add_argument("--index", required=True, help="its entity index (mel index)")
    parser.add_argument("--input", required=True, help="mentions JSONL with text, mention, entity_id")
    parser.add_argument("--mentions", type=int, default=600, help="first N mentions of --input")
    parser.add_argument("--repeats", type=int, default=3, help="alternated pairs (bf16 contexts, float32 contexts)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--name", default="context_precision")
    parser.add_argument("--out_dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)

    import modeling_mel  # noqa: F401 - registers the task
    from transformers import pipeline

    with open(args.input, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][: args.mentions]
    items = [{"text": r["text"], "mention": r["mention"]} for r in rows]
    pipe = pipeline("multimodal-entity-linking", model=args.model, kb=args.index, use_images=False, bf16=True)
    pipe(items[: args.batch_size], top_k=10, candidates="dense", batch_size=args.batch_size)  # warm-up
    speed: dict[str, list[float]] = {"bf16": [], "float32": []}
    accuracy: dict[str, float] = {}
    for _ in range(args.repeats):
        for mode in ("bf16", "float32"):
            pipe._dense_linker(None).context_bf16 = mode == "bf16"  # the only difference between the two runs
            t0 = time.perf_counter()
            out = pipe(items, top_k=10, candidates="dense", batch_size=args.batch_size)
            speed[mode].append(len(items) / (time.perf_counter() - t0))
            accuracy[mode] = sum(bool(o) and o[0]["entity_id"] == r["entity_id"] for o, r in zip(out, rows)) / len(rows)
            print(f"contexts {mode}: {speed[mode][-1]:.1f} mentions/s, accuracy@1 {accuracy[mode]:.4f}", flush=True)
    median = {m: statistics.median(v) for m, v in speed.items()}
    lines = [f"ZEMEL `pipeline(bf16=True)` (bf16 KB selection, float32 rescoring), {len(items)} mentions, batch "
             f"{args.batch_size}, median of {args.repeats} alternated runs", "",
             "| contexts | mentions/s | accuracy@1 |", "|---|---|---|",
             f"| bf16 (default) | {median['bf16']:.1f} | {accuracy['bf16']:.4f} |",
             f"| float32 | {median['float32']:.1f} | {accuracy['float32']:.4f} |", "",
             f"bf16 / float32 contexts: **{median['bf16'] / median['float32']:.2f}x**", "",
             "Command: `python benchmarks/context_precision.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`"]
    write_lines(args.out_dir, args.name, {"speed": speed, "median": median, "accuracy": accuracy, "args": vars(args)},
                lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
