#!/usr/bin/env python
"""Evaluation equals the product, on real data: the same mentions ranked by every path a user or a paper table meets.

    python benchmarks/eval_equals_product.py --data_dir ../shared/data/wikimel --work_dir W \\
        --zemel_model W/zemel --zemel_index W/zemel_index --rerank_model W/rerank

For the first ``--n`` mentions of the dev split (every one, against the whole KB) it ranks

* the trained ZEMEL through ``mel evaluate-zemel --predictions_top_k`` (the evaluation script), ``mel link --index
  --candidates dense``, ``pipeline(kb=index, candidates="dense")`` and the dense part of
  ``EntityIndex.retrieve_scored`` (the first stage of every two-stage ``mel link``; it encodes contexts in float32
  because a reranker fuses its scores, so under ``--precision bf16`` it is compared with the float32 ``pipeline()``
  over the same index, in its own row ``zemel_retriever``);
* the NSP reranker through ``mel evaluate --retriever`` (the evaluation script, ``--predictions_file``), ``mel link
  --retriever`` and ``pipeline(retriever=index)``, with the same ``--retriever_k`` (``mel link`` and ``pipeline()``
  with the same batch size, 32);

and counts the mentions whose top ``--top_k`` ids are in the same order on every path (and the largest score
difference). The index, the models and ``kb.jsonl`` are those of ``benchmarks/quality.py``'s work dir (its ``zemel``
and ``rerank`` stages). Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from common import RESULTS_DIR, machine_info  # noqa: E402  (sets sys.path and the offline env)


def _mel(args: list[str], log: str) -> None:
    cmd = [sys.executable, "-c", "import sys; from modeling_mel.cli import main; sys.exit(main())", *args]
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"eval_equals_product.py: `mel {args[0]}` failed ({done.returncode}); see {log}")


def _read_lines(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _ranking(preds: list[dict], top_k: int) -> list[tuple[str, float]]:
    return [(p["entity_id"], float(p["score"])) for p in preds if p.get("entity_id") is not None][:top_k]


def compare(paths: dict[str, dict[str, list[tuple[str, float]]]], ids: list[str]) -> dict[str, Any]:
    """Mentions ranked identically (ids and order) by every path, and the largest score difference to the first."""
    names = list(paths)
    same, worst, first_diff = 0, 0.0, None
    for mid in ids:
        rankings = [paths[n][mid] for n in names]
        ok = all([e for e, _ in r] == [e for e, _ in rankings[0]] for r in rankings[1:])
        same += ok
        if ok:
            for r in rankings[1:]:
                worst = max([worst] + [abs(a - b) for (_, a), (_, b) in zip(r, rankings[0])])
        elif first_diff is None:
            first_diff = {"id": mid, **{n: [e for e, _ in paths[n][mid]] for n in names}}
    return {"paths": names, "mentions": len(ids), "identical": same, "max_score_diff": worst, "first_difference": first_diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="the WikiMEL release folder (as for quality.py)")
    parser.add_argument("--dataset", default="wikimel")
    parser.add_argument("--work_dir", required=True, help="where the outputs go (quality.py's work dir holds kb.jsonl)")
    parser.add_argument("--zemel_model", required=True)
    parser.add_argument("--zemel_index", required=True, help="the zemel model's entity index (mel index)")
    parser.add_argument("--rerank_model", default=None, help="the NSP reranker (quality.py's rerank stage)")
    parser.add_argument("--kb", default=None, help="kb.jsonl of the index (default: WORK_DIR/kb.jsonl)")
    parser.add_argument("--n", type=int, default=300, help="the first N dev mentions")
    parser.add_argument("--top_k", type=int, default=10, help="ranks compared per mention")
    parser.add_argument("--retriever_k", type=int, default=8)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="every path in bf16 autocast (the default of mel link on a CPU with bf16 kernels) or fp32")
    parser.add_argument("--name", default=None, help="result file name (default eval_equals_product_<dataset>_<precision>)")
    parser.add_argument("--out_dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.name = args.name or f"eval_equals_product_{args.dataset}_{args.precision}"
    bf16 = args.precision == "bf16"
    flag = "true" if bf16 else "false"
    link_precision = ["--bf16"] if bf16 else ["--fp32"]
    os.makedirs(args.work_dir, exist_ok=True)
    kb_path = args.kb or os.path.join(args.work_dir, "kb.jsonl")
    t0 = time.perf_counter()

    from modeling_mel.zemel_evaluation import load_zemel_data

    rows = load_zemel_data(args.dataset, args.data_dir).split("dev")[: args.n]
    ids = [str(r["id"]) for r in rows]
    inputs = [{k: r.get(k) for k in ("id", "text", "mention", "mention_start", "mention_end", "entity_id")} for r in rows]
    mentions_path = os.path.join(args.work_dir, "eq_dev.jsonl")
    with open(mentions_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in inputs)
    pipe_inputs = [{k: r[k] for k in ("text", "mention", "mention_start", "mention_end")} for r in inputs]
    results: dict[str, Any] = {"machine": machine_info(), "n": len(rows), "top_k": args.top_k}

    # ZEMEL: evaluation script, mel link, pipeline(), retrieve_scored
    ev_dir = os.path.join(args.work_dir, "eq_eval_zemel")
    _mel(["evaluate-zemel", "--model_path", args.zemel_model, "--dataset", args.dataset, "--data_dir", args.data_dir,
          "--eval_splits", "dev", "--max_eval_samples", str(args.n), "--predictions_top_k", str(args.top_k),
          "--image_features", "none", "--bf16", flag, "--output_dir", ev_dir], os.path.join(args.work_dir, "eq_eval_zemel.log"))
    zemel: dict[str, dict] = {"mel evaluate-zemel": {str(r["id"]): _ranking(r["predictions"], args.top_k)
                                                     for r in _read_lines(os.path.join(ev_dir, "predictions_dev.jsonl"))}}
    out = os.path.join(args.work_dir, "eq_link_zemel.jsonl")
    for leftover in (out, out + ".partial", out + ".meta.json"):
        if os.path.exists(leftover):
            os.remove(leftover)
    _mel(["link", "--model", args.zemel_model, "--index", args.zemel_index, "--input", mentions_path, "--output", out,
          "--top_k", str(args.top_k), "--candidates", "dense", "--no_images", "--batch_size", "32", *link_precision], os.path.join(args.work_dir, "eq_link_zemel.log"))
    zemel["mel link"] = {str(r["id"]): _ranking(r["predictions"], args.top_k) for r in _read_lines(out)}

    from transformers import pipeline

    from modeling_mel.entity_index import load_retriever

    pipe = pipeline("multimodal-entity-linking", model=args.zemel_model, kb=args.zemel_index, use_images=False,
                    bf16=bf16)
    outputs = pipe(pipe_inputs, top_k=args.top_k, candidates="dense", batch_size=32)
    zemel["pipeline()"] = {i: _ranking(o, args.top_k) for i, o in zip(ids, outputs)}
    index = load_retriever(args.zemel_index, args.zemel_model)
    index.bf16 = bf16
    spans = [{"mention": r["mention"], "mention_start": r["mention_start"], "mention_end": r["mention_end"]} for r in inputs]
    scored = index.retrieve_scored([r["text"] for r in inputs], spans, args.top_k)
    retrieved = {i: row[: args.top_k] for i, row in zip(ids, scored)}
    if bf16:
        # retrieve_scored encodes contexts in float32 (a reranker fuses its scores: EntityIndex.dense_linker) over a
        # bf16 selection: it must rank as the float32 product over the same index vectors does
        pipe32 = pipeline("multimodal-entity-linking", model=args.zemel_model, kb=args.zemel_index, use_images=False,
                          bf16=False)
        outputs = pipe32(pipe_inputs, top_k=args.top_k, candidates="dense", batch_size=32)
        results["zemel_retriever"] = compare({
            "pipeline(kb=index, bf16=False)": {i: _ranking(o, args.top_k) for i, o in zip(ids, outputs)},
            "EntityIndex.retrieve_scored (float32 contexts, bf16 selection)": retrieved}, ids)
    else:
        zemel["EntityIndex.retrieve_scored"] = retrieved
    results["zemel"] = compare(zemel, ids)

    if args.rerank_model:  # the reranker: evaluation script, mel link, pipeline()
        preds_path = os.path.join(args.work_dir, "eq_eval_rerank.jsonl")
        subprocess.run([sys.executable, "-m", "modeling_mel.scripts.evaluate_linking", "--model", args.rerank_model,
                        "--dataset", args.dataset, "--data_dir", args.data_dir, "--split", "dev", "--image_features",
                        "none", "--max_eval_samples", str(args.n), "--retriever", args.zemel_index, "--retriever_k",
                        str(args.retriever_k), "--bf16", flag, "--predictions_file", preds_path, "--output_file",
                        os.path.join(args.work_dir, "eq_eval_rerank_results.json")],
                       stdout=open(os.path.join(args.work_dir, "eq_eval_rerank.log"), "w"), stderr=subprocess.STDOUT,
                       check=True)
        rerank: dict[str, dict] = {"mel evaluate --retriever": {
            str(r["mention_id"]): [(e, float(s)) for e, s in r["ranked"]][: args.top_k] for r in _read_lines(preds_path)}}
        out = os.path.join(args.work_dir, "eq_link_rerank.jsonl")
        for leftover in (out, out + ".partial", out + ".meta.json"):
            if os.path.exists(leftover):
                os.remove(leftover)
        _mel(["link", "--model", args.rerank_model, "--kb", kb_path, "--input", mentions_path, "--output", out,
              "--top_k", str(args.top_k), "--no_images", "--batch_size", "32", "--retriever", args.zemel_index, "--retriever_k",
              str(args.retriever_k), *link_precision], os.path.join(args.work_dir, "eq_link_rerank.log"))
        rerank["mel link --retriever"] = {str(r["id"]): _ranking(r["predictions"], args.top_k) for r in _read_lines(out)}
        pipe = pipeline("multimodal-entity-linking", model=args.rerank_model, kb=kb_path, retriever=args.zemel_index,
                        use_images=False, bf16=bf16)
        outputs = pipe(pipe_inputs, top_k=args.top_k, retriever_k=args.retriever_k, batch_size=32)
        rerank["pipeline(retriever=)"] = {i: _ranking(o, args.top_k) for i, o in zip(ids, outputs)}
        results["rerank"] = compare(rerank, ids)

    results["wall_s"] = round(time.perf_counter() - t0, 1)
    lines = [f"{args.dataset} dev, first {len(rows)} mentions, top {args.top_k} compared, whole KB, text only, "
             f"{args.precision}, 2 cores", "",
             "| linker | paths | mentions ranked identically (ids and order) | max score difference |", "|---|---|---|---|"]
    for name in ("zemel", "zemel_retriever", "rerank"):
        if name in results:
            r = results[name]
            lines.append(f"| {name} | {', '.join(r['paths'])} | {r['identical']} / {r['mentions']} | "
                         f"{r['max_score_diff']:.2e} |")
    lines += ["", f"Wall time {results['wall_s']} s. Command: `python benchmarks/eval_equals_product.py "
              + " ".join(sys.argv[1:] if argv is None else argv) + "`"]
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, args.name + ".json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out_dir, args.name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    for name in ("zemel", "zemel_retriever", "rerank"):
        if name in results and results[name]["first_difference"]:
            print(f"first difference ({name}):", json.dumps(results[name]["first_difference"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
