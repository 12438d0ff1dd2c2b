#!/usr/bin/env python
"""Does a pair's bf16 score depend on its batch? The cross linker's scores of the same pairs in batches of 1 to 16
pairs against one batch of 64, with and without the fill of every bf16 CPU forward pass to
``linking_cross.MIN_BF16_CPU_ROWS`` token rows.

    python benchmarks/bf16_batch_invariance.py --model W/rerank

Why it matters: the evaluation, ``mel link`` and ``pipeline()`` score the same pairs in differently sized batches; a
score that rounds with the batch can swap near-tied candidates between them (``benchmarks/eval_equals_product.py``).
Pairs are random token ids of fixed widths (the kernels' behaviour does not depend on the words). Writes
``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import time

from common import RESULTS_DIR, write_lines  # noqa: E402  (sets sys.path and the offline env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", required=True, help="an NSP reranker or PFMEL folder (BertForMultimodalNSP)")
    parser.add_argument("--widths", type=int, nargs="+", default=[24, 48, 72, 96, 128], help="pair lengths in tokens")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2, 3, 5, 7, 11, 16])
    parser.add_argument("--pairs", type=int, default=64, help="pairs per width (the reference batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="bf16_batch_invariance")
    parser.add_argument("--out_dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModel, AutoProcessor

    import modeling_mel  # noqa: F401 - registers the model types
    from modeling_mel import linking_cross
    from modeling_mel.linking_cross import CrossLinker

    torch.manual_seed(args.seed)
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    floor = linking_cross.MIN_BF16_CPU_ROWS
    t0 = time.perf_counter()
    rows = []
    for label, rows_floor in (("no fill", 0), (f"filled to {floor} token rows (default)", floor)):
        linking_cross.MIN_BF16_CPU_ROWS = rows_floor
        differ = cases = 0
        worst = 0.0
        for width in args.widths:
            ids = torch.randint(1000, model.config.vocab_size - 1, (args.pairs, width)).tolist()
            features = [{"input_ids": r, "token_type_ids": [0] * width, "attention_mask": [1] * width} for r in ids]
            ref = CrossLinker(model, processor, bf16=True, pair_batch_size=args.pairs).score_features(features)
            for size in args.batch_sizes:
                got = CrossLinker(model, processor, bf16=True, pair_batch_size=size).score_features(features)
                gap = float((got - ref).abs().max())
                cases += 1
                differ += gap > 0
                worst = max(worst, gap)
        rows.append({"batches": label, "differ": differ, "cases": cases, "worst": worst})
        print(f"{label}: {differ} / {cases} (width, batch size) cases differ from one batch of {args.pairs}, "
              f"largest gap {worst:.2g}", flush=True)
    linking_cross.MIN_BF16_CPU_ROWS = floor
    lines = [f"bf16 scores of the same pairs in batches of {args.batch_sizes} pairs against one batch of {args.pairs} "
             f"(widths {args.widths} tokens, `{args.model}`, CrossLinker.score_features)", "",
             "| bf16 CPU forward passes | (width, batch size) cases that differ | largest gap |", "|---|---|---|"]
    lines += [f"| {r['batches']} | {r['differ']} / {r['cases']} | {r['worst']:.2g} |" for r in rows]
    lines += ["", f"Wall time {time.perf_counter() - t0:.1f} s. Command: `python benchmarks/bf16_batch_invariance.py "
              f"--model {args.model}`"]
    write_lines(args.out_dir, args.name, {"rows": rows, "model": args.model, "widths": args.widths,
                                          "batch_sizes": args.batch_sizes, "pairs": args.pairs}, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
