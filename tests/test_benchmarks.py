"""Every benchmark's ``--quick`` mode runs and writes JSON + markdown with finite, positive ratios.

Sizes are shrunk further where a benchmark has flags for it (``--tiny``: tiny random models or fewer entities, the
same code paths). No timing thresholds: timings on shared CPUs are noise; the ratios are only checked to exist.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def run_benchmark(name: str, out_dir, *flags: str) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, os.path.join(BENCH_DIR, f"{name}.py"), "--quick", "--out_dir", str(out_dir), *flags]
    proc = subprocess.run(cmd, cwd=BENCH_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def load(out_dir, stem: str) -> dict:
    assert os.path.isfile(os.path.join(out_dir, stem + ".md"))
    with open(os.path.join(out_dir, stem + ".json")) as f:
        payload = json.load(f)
    assert payload["quick"] is True and payload["machine"]["cpu_count"] >= 1
    return payload


def assert_positive_finite(values: dict, keys) -> None:
    for key in keys:
        assert key in values, f"missing ratio {key!r} in {sorted(values)}"
        value = values[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def test_zemel_latency_quick(tmp_path):
    run_benchmark("zemel_latency", tmp_path, "--tiny")
    payload = load(tmp_path, "zemel_latency_tiny_quick")
    ratios = payload["ratios"]["tiny"]
    assert_positive_finite(ratios, ["poly_over_bi", "cross_over_poly", "poly_speedup_naive_over_fast",
                                    "cross_speedup_naive_over_fast", "poly_gflops_achieved", "poly_ms"])
    assert {(r["mode"], r["path"]) for r in payload["rows"]} >= {("poly", "fast"), ("bi", "fast"), ("cross", "fast"),
                                                                ("poly", "naive")}
    for mode in ("poly", "bi", "cross"):
        acc = payload["accuracy_bf16"]["tiny"][mode]
        assert math.isfinite(acc["max_abs_diff"]) and 0 <= acc["top1_agreement"] <= 1


def test_zemel_latency_trained_models_on_a_real_split(tmp_path):
    """--eval_data with saved bi / poly / cross models (tiny, random here; trained ones in real use): every row links
    the same mentions against the same candidate set and reports precision (H@1) beside its latency."""
    from inference_fixtures import tiny_nsp, tiny_zemel

    from modeling_mel.builders import sample

    data = str(tmp_path / "data")
    sample.generate_jsonl_sample(data, seed=0, n_entities=12, n_mentions=40, image_size=32)
    models = {}
    for mode, (model, processor) in (("poly", tiny_zemel()), ("bi", tiny_zemel(scoring="bi")), ("cross", tiny_nsp())):
        model.config.image_features = "none"
        model.save_pretrained(tmp_path / mode)
        processor.save_pretrained(tmp_path / mode)
        models[mode] = str(tmp_path / mode)
    run_benchmark("zemel_latency", tmp_path, "--eval_data", data, "--eval_dataset", "mel_jsonl", "--eval_split", "train",
                  "--eval_mentions", "6", "--poly_model", models["poly"], "--bi_model", models["bi"], "--cross_model",
                  models["cross"], "--dataset_cache_dir", str(tmp_path / "cache"))
    payload = load(tmp_path, "zemel_latency_trained_quick")
    rows = {r["mode"]: r for r in payload["rows"]}
    assert list(rows) == ["bi", "poly", "cross"] and payload["n_candidates"] == 12 and payload["mentions"] == 6
    for row in rows.values():
        assert 0.0 <= row["H@1"] <= 1.0 and row["ms_median"] > 0 and row["candidates"] == 12 and row["mentions"] == 6
    table = open(os.path.join(tmp_path, "zemel_latency_trained_quick.md")).read()
    assert "precision (H@1)" in table and "| cross |" in table


def test_scale_quick(tmp_path):
    run_benchmark("scale", tmp_path, "--tiny")
    payload = load(tmp_path, "scale_tiny_quick")
    kinds = ("flat", "ivf", "ivfpq", "ivfsq8")
    assert [(r["entities"], r["kind"]) for r in payload["rows"]] == [(n, k) for n in (1000, 4000) for k in kinds]
    assert_positive_finite(payload["ratios"], [f"{m}_4000_{k}" for m in ("growth", "recall", "memory_over_flat") for k in kinds])
    rows = {r["kind"]: r for r in payload["rows"] if r["entities"] == 4000}
    assert rows["flat"]["recall@64"] == 1.0 and rows["flat"]["memory / flat"] == 1.0
    assert rows["ivfpq"]["memory / flat"] < rows["ivfsq8"]["memory / flat"] < 0.5  # codes: 8 and 32 bytes vs 128
    assert all(0 < r["recall@64"] <= 1 for r in rows.values()) and payload["target_check"]
    for row in payload["rows"]:
        assert 0 < row["recall@64 mention q"] <= 1 and row["index MB"] > 0


def test_index_build_quick(tmp_path):
    run_benchmark("index_build", tmp_path, "--tiny")
    payload = load(tmp_path, "index_build_tiny_quick")
    assert_positive_finite(payload["ratios"], ["fast_over_sentence_transformers", "fast_over_naive",
                                               "naive_over_sentence_transformers"])
    assert payload["accuracy"]["bf16_cosine_min"] > 0.99
    assert payload["accuracy"]["fast_fp32_max_abs_diff"] < 1e-4
    assert_positive_finite(payload["ratios"], ["product_over_sentence_transformers", "product_over_fast"])
    assert payload["accuracy"]["product_cosine_min"] > 0.99  # mel index's vectors are the model's


def test_link_path_quick(tmp_path):
    run_benchmark("link_path", tmp_path, "--tiny")
    payload = load(tmp_path, "link_path_tiny_quick")
    assert_positive_finite(payload["ratios"], ["pipeline_over_fast", "mel_link_over_fast", "index_entities_per_s"])
    # the three paths link alike (bf16 may swap near ties on random captions)
    assert payload["agreement"]["pipeline_top1_agrees_with_fast"] >= 0.75
    assert payload["agreement"]["mel_link_top1_agrees_with_fast"] >= 0.75


def test_link_path_images_quick(tmp_path):
    """--images: mentions with an image and 2 boxes go through pipeline() (raw images, tiny extractor) and the
    model-level path (the same regions precomputed); both rank alike."""
    run_benchmark("link_path", tmp_path, "--tiny", "--images")
    payload = load(tmp_path, "link_path_tiny_images_quick")
    assert payload["images"] is True and [r["path"] for r in payload["rows"]] == ["model-level fast path", "pipeline()"]
    assert_positive_finite(payload["ratios"], ["pipeline_over_fast"])
    assert payload["agreement"]["pipeline_top1_agrees_with_fast"] >= 0.75


def test_pfmel_throughput_quick(tmp_path):
    run_benchmark("pfmel_throughput", tmp_path, "--tiny", "--n_pairs", "16", "--repeats", "1")
    payload = load(tmp_path, "pfmel_throughput_quick")
    for row in payload["overhead"]:
        assert_positive_finite(row, ["overhead (mm/plain)"])
    for row in payload["padding"]:
        assert_positive_finite(row, ["speed-up (fixed/dynamic)"])


def test_features_quick(tmp_path):
    run_benchmark("features", tmp_path, "--tiny", "--n_images", "8")
    payload = load(tmp_path, "features_quick")
    for row in payload["rows"]:
        assert_positive_finite(row, ["images/s", "ratio vs batch 1"])


def test_plot(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    scale = {"rows": [{"entities": n, "ms/mention": 10.0 + i, "search ms": 0.1 * (i + 1)} for i, n in enumerate([1000, 10000])]}
    latency = {"rows": [{"size": "tiny", "mode": m, "path": p, "T_cpu ms/example": t}
                        for m, base in (("bi", 10.0), ("poly", 11.0), ("cross", 2000.0))
                        for p, t in (("naive", 2 * base), ("fast", base))]}
    (results / "scale_quick.json").write_text(json.dumps(scale))
    (results / "zemel_latency_quick.json").write_text(json.dumps(latency))
    run_benchmark("plot", tmp_path / "plots", "--results_dir", str(results))
    for name in ("scale_latency.png", "zemel_latency_modes.png"):
        path = tmp_path / "plots" / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_serve_quick(tmp_path):
    run_benchmark("serve", tmp_path, "--tiny")
    payload = load(tmp_path, "serve_tiny_quick")
    assert_positive_finite(payload["ratios"], ["batching_speedup_at_1", "batching_speedup_at_4"])
    rows = {(r["clients"], r["dynamic batching"]): r for r in payload["rows"]}
    assert rows[(1, "off")]["mentions per forward"] == 1.0 and rows[(4, "off")]["mentions per forward"] == 1.0
    # 4 concurrent clients: the batching server merges requests, the other never does
    assert rows[(4, "on")]["mentions per forward"] > 1.0
    assert min(payload["agreement"].values()) >= 0.75  # both servers link alike (bf16 may swap near ties)


def test_device_check_dry_run(tmp_path):
    """device_check.py --dry-run: every row of the device check (ZEMEL latency, training steps through mel
    train-zemel / mel finetune, mel index / mel link and pipeline() against the CPU) on the CPU at tiny sizes, one
    markdown table on stdout and the results files; without an accelerator a normal run exits 2."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    script = os.path.join(BENCH_DIR, "device_check.py")
    proc = subprocess.run([sys.executable, script, "--dry-run", "--out_dir", str(tmp_path)], cwd=BENCH_DIR, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"device_check --dry-run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    rows = ["zemel bi", "zemel poly", "zemel cross", "zemel train", "pfmel train", "mel index", "mel link", "pipeline"]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) and proc.stdout.strip().splitlines() == table  # stdout: the table only
    assert [line.split("|")[1].strip() for line in table[2:]] == rows
    payload = load(tmp_path, "device_check_quick")
    assert payload["dry_run"] is True and payload["device"] == "cpu" and not payload["failed"]
    by_row = {r["row"]: r for r in payload["rows"]}
    assert list(by_row) == rows
    for name in rows:
        assert_positive_finite(by_row[name], ["device"])
    for name in ("zemel bi", "zemel poly", "zemel cross"):
        assert_positive_finite(by_row[name], ["paper (2080Ti)", "paper / device"])
    for name in ("zemel train", "pfmel train"):
        assert_positive_finite(by_row[name], ["wall s"])
    for name in ("mel index", "mel link", "pipeline"):
        assert_positive_finite(by_row[name], ["cpu", "device / cpu"])
    markdown = (tmp_path / "device_check_quick.md").read_text()
    assert all(f"| {name} |" in markdown for name in rows)
    # no accelerator here: a normal run says so and exits 2 (before loading anything)
    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, script, "--out_dir", str(tmp_path / "none")], cwd=BENCH_DIR, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "no accelerator" in proc.stderr and not proc.stdout.strip()


def tiny_index_and_mentions(tmp_path, name: str) -> tuple[str, list[dict]]:
    """A tiny ZEMEL saved in ``tmp_path/name``, the test KB, its index (``mel index`` into ``tmp_path/index``) and the
    text-only mentions written to ``tmp_path/m.jsonl`` (gold ``nasa``): the KB path and the mention rows."""
    from inference_fixtures import mentions, tiny_zemel, write_kb
    from modeling_mel.cli import main as mel

    model, processor = tiny_zemel()
    model.save_pretrained(tmp_path / name)
    processor.save_pretrained(tmp_path / name)
    kb = write_kb(str(tmp_path))
    assert mel(["index", "--model", str(tmp_path / name), "--kb", kb, "--out", str(tmp_path / "index"),
                "--no_images"]) == 0
    rows = [dict(m, entity_id="nasa") for m in mentions(str(tmp_path)) if m.get("mention")]
    with open(tmp_path / "m.jsonl", "w") as f:
        f.writelines(json.dumps({k: v for k, v in r.items() if k != "image"}) + "\n" for r in rows)
    return kb, rows


def test_context_precision_on_a_tiny_zemel(tmp_path):
    """benchmarks/context_precision.py on a tiny ZEMEL and its index: both context precisions run and their speeds are
    written (no timing threshold)."""
    _, rows = tiny_index_and_mentions(tmp_path, "model")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, os.path.join(BENCH_DIR, "context_precision.py"), "--model", str(tmp_path / "model"),
           "--index", str(tmp_path / "index"), "--input", str(tmp_path / "m.jsonl"), "--repeats", "1",
           "--batch_size", "2", "--out_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=BENCH_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    payload = json.load(open(tmp_path / "out" / "context_precision.json"))
    assert set(payload["median"]) == {"bf16", "float32"}
    assert_positive_finite(payload["median"], ["bf16", "float32"])
    assert payload["args"]["mentions"] == 600 and len(rows) == 4
    assert "bf16 / float32 contexts" in (tmp_path / "out" / "context_precision.md").read_text()


def test_bf16_batch_invariance_on_a_tiny_reranker(tmp_path):
    """benchmarks/bf16_batch_invariance.py on a tiny NSP model: both batchings are counted over every (width, batch
    size) case; with the fill no case differs (this small model's bf16 scores do not depend on the batch anyway)."""
    from inference_fixtures import tiny_nsp

    model, processor = tiny_nsp()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, os.path.join(BENCH_DIR, "bf16_batch_invariance.py"), "--model", str(tmp_path / "model"),
           "--widths", "16", "40", "--batch_sizes", "1", "3", "--pairs", "8", "--out_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=BENCH_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    payload = json.load(open(tmp_path / "out" / "bf16_batch_invariance.json"))
    assert [r["cases"] for r in payload["rows"]] == [4, 4]
    assert payload["rows"][1]["differ"] == 0 and payload["rows"][1]["worst"] == 0.0
    assert "filled to 512 token rows (default)" in (tmp_path / "out" / "bf16_batch_invariance.md").read_text()


def test_two_stage_speed_on_tiny_models(tmp_path):
    """benchmarks/two_stage_speed.py (this checkout against itself) on a tiny ZEMEL index and NSP reranker, in whole
    runs and side by side in chunks: every --top_k row, both sides linking the same mentions alike."""
    from inference_fixtures import tiny_nsp

    model, processor = tiny_nsp()
    model.save_pretrained(tmp_path / "nsp")
    processor.save_pretrained(tmp_path / "nsp")
    kb, rows = tiny_index_and_mentions(tmp_path, "zemel")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for chunk in ("0", "3"):
        cmd = [sys.executable, os.path.join(BENCH_DIR, "two_stage_speed.py"), "--old_repo", os.path.dirname(BENCH_DIR),
               "--model", str(tmp_path / "nsp"), "--kb", kb, "--retriever", str(tmp_path / "index"), "--input",
               str(tmp_path / "m.jsonl"), "--top_k", *(["1", "3"] if chunk != "0" else ["3"]),
               *(["--batch_size", "2"] if chunk == "0" else []),  # side by side: each checkout's default batch
               "--chunk", chunk, "--name", f"speed{chunk}", "--out_dir", str(tmp_path / "out")]
        proc = subprocess.run(cmd, cwd=BENCH_DIR, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        payload = json.load(open(tmp_path / "out" / f"speed{chunk}.json"))
        assert [r["top_k"] for r in payload["rows"]] == ([1, 3] if chunk != "0" else [3])
        for r in payload["rows"]:
            assert r["lines"] == len(rows) == 4
            assert r["old_accuracy@1"] == r["new_accuracy@1"]  # the same code on both sides
            assert_positive_finite(r, ["old_mentions_per_s", "new_mentions_per_s", "ratio"])
            if chunk == "3":  # 4 mentions in chunks of 3: two chunks a side
                assert len(r["old_chunk_seconds"]) == len(r["new_chunk_seconds"]) == 2
        text = (tmp_path / "out" / f"speed{chunk}.md").read_text()
        assert ("alternating every 3 mentions" in text) == (chunk == "3")
        assert ("(batch 2)" in text) == (chunk == "0") and ("each checkout's default --batch_size" in text) == (chunk == "3")
