"""Device check: the package's hot paths on an accelerator, in one table (issue 27 point 5).

Run on a machine with a GPU (one H200 here; no hub, no internet: every model is a random config, the tokenizer the
embedded MiniLM's), it measures in a few minutes:

* **zemel bi / poly / cross**: ZEMEL per-example latency against 1000 cached candidates at BERT-base size (random
  weights: hidden 768, 12 layers; ZEMEL's visual stream at its defaults; 3 image regions of precomputed 2048-d
  features), bf16 autocast on the device: ``model.link`` (tokenise, context encoder, score the cached (1000, H) candidate
  matrix) in bi and poly mode; cross = ``BertForMultimodalNSP`` of the same size scoring all 1000 (context,
  candidate) pairs in length-sorted batches. Beside them the paper's Table 3 GPU figures (2080Ti): bi 20 ms, poly
  23 ms, cross 3.9 s.
* **zemel train / pfmel train**: a few hundred training steps through the package's entry points, ``mel train-zemel``
  (ZEMELD sample corpus, images through a small random 2048-d ResNet) and ``mel finetune`` (Twitter MEL sample
  corpus), bf16, from a random BERT-base backbone: steps/s (the Trainer's own ``train_runtime``: the training loop,
  hard-negative mining included) and the wall time of the whole command (corpus loading, image features, saving).
  The Trainer picks its own accelerator (the first visible GPU): for ``cuda:N`` set ``CUDA_VISIBLE_DEVICES`` instead.
* **mel index / mel link**: ``mel index`` (entities/s: ``EntityIndex.build``, the KB encoding and the FAISS index) and
  ``mel link --candidates dense`` (mentions/s: the linking loop after the model and index are loaded) with
  ``--device <device>`` against the same commands with ``--device cpu`` (on the CPU a subset is timed: rates).
* **pipeline**: ``pipeline("multimodal-entity-linking", model=<dir>, kb=<index>, device=...)`` mentions/s on the
  device against the CPU.

Prints one markdown table on stdout (everything else goes to stderr) and writes it with ``common.write_results``
into ``benchmarks/results/device_check.{json,md}`` (``device_check_quick`` with ``--quick`` / ``--dry-run``).

``--dry-run`` runs every row on the CPU with tiny sizes (a tiny random config, 8 candidates, 3 training steps, a
handful of entities and mentions) in well under a minute, so this script cannot rot (``tests/test_benchmarks.py``);
``--quick`` runs the same tiny sizes on the device (a smoke test of the device paths before the full run). Without
an accelerator, a normal run stops with exit code 2 unless ``--device cpu`` is given. A row that fails is reported
as FAILED in the table (traceback on stderr), the other rows still run, and the exit code is 1.

    python benchmarks/device_check.py                  # on the GPU machine
    python benchmarks/device_check.py --quick          # tiny sizes on the GPU first (seconds)
    python benchmarks/device_check.py --dry-run        # tiny sizes on the CPU (tests)
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MEL_LOG_LEVEL", "WARNING")  # mel's INFO lines would drown the table

import torch
from common import base_parser, machine_info, markdown_table, setup_threads, write_results
from synthetic import captions, entities, regions, text_config, timeit_many, zemel_model

#: The paper's Table 3 (ZEMEL, per example against 1000 candidates, one RTX 2080Ti), milliseconds.
PAPER_GPU_MS = {"bi": 20.0, "poly": 23.0, "cross": 3900.0}
ROWS = ("zemel bi", "zemel poly", "zemel cross", "zemel train", "pfmel train", "mel index", "mel link", "pipeline")

FULL = dict(size="bert-base", n_candidates=1000, repeats=30, cross_repeats=5, cross_batch=128, train_steps=300,
            zemel_batch=32, pfmel_batch=16, pfmel_max_length=128, n_entities=4000, n_mentions=1000,
            cpu_entities=512, cpu_mentions=128, link_batch=32)
TINY = dict(size="tiny", n_candidates=8, repeats=3, cross_repeats=2, cross_batch=4, train_steps=3, zemel_batch=4,
            pfmel_batch=4, pfmel_max_length=64, n_entities=16, n_mentions=6, cpu_entities=16, cpu_mentions=6,
            link_batch=4)
TINY_ZEMEL_ARGS = ["--v_hidden_size", "32", "--v_intermediate_size", "32", "--v_num_attention_heads", "4",
                   "--v_num_hidden_layers", "1", "--bi_hidden_size", "32", "--bi_num_attention_heads", "4",
                   "--poly_m", "4", "--max_regions", "3", "--max_entity_images", "1", "--context_max_length", "24",
                   "--candidate_max_length", "24", "--num_candidates", "3"]


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Set-up helpers
# ----------------------------------------------------------------------------------------------------------------------
def resolve_device(requested: str, dry_run: bool) -> str | None:
    """The device to run on: cpu for a dry run; ``auto`` = cuda (then mps) when available; ``None`` when the
    requested accelerator is not there."""
    if dry_run:
        return "cpu"
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return None
    if requested.startswith("cuda") and not torch.cuda.is_available():
        return None
    if requested == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        return None
    return requested


def device_label(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
    elif device == "mps":
        torch.mps.synchronize()


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def generate_samples(work: str) -> tuple[str, str]:
    """The seeded Twitter MEL sample (PFMEL) and ZEMELD sample (ZEMEL) in raw layout under ``work``."""
    twitter, zemeld = os.path.join(work, "twitter_sample"), os.path.join(work, "zemeld_sample")
    from modeling_mel.builders import sample, zemeld_sample

    sample.generate_twitter_sample(twitter, seed=0)
    zemeld_sample.generate(zemeld, seed=0)
    return twitter, zemeld


def save_backbone(size: str, out: str) -> str:
    """A random BERT of ``size`` (``text_config``) with the embedded MiniLM tokenizer (its vocabulary), saved."""
    from transformers import BertConfig, BertModel

    from modeling_mel.backbones import load_tokenizer

    torch.manual_seed(0)
    BertModel(BertConfig(**text_config(size))).save_pretrained(out)
    load_tokenizer("minilm").save_pretrained(out)
    return out


def save_resnet(out: str) -> str:
    """A small random ResNet with 2048-d features (the image features are not what is timed here), saved."""
    from transformers import ResNetModel

    from modeling_mel.image_encoders import tiny_resnet_config

    torch.manual_seed(0)
    ResNetModel(tiny_resnet_config(2048)).save_pretrained(out)
    return out


def save_zemel(size: str, out: str) -> str:
    """A random ZEMEL model of ``size`` with its processor, saved (what ``mel index`` / ``mel link`` load)."""
    from modeling_mel import ZemelProcessor
    from modeling_mel.backbones import load_tokenizer

    processor = ZemelProcessor(load_tokenizer("minilm"))
    model = zemel_model(size, processor)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def mel(argv: list[str]) -> int:
    """``mel <argv>`` in this process (its stdout goes to stderr; a SystemExit becomes the exit code)."""
    from modeling_mel.cli import main

    with contextlib.redirect_stdout(sys.stderr):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if code:
        raise RuntimeError(f"mel {' '.join(argv)} exited with {code}")
    return code


def mel_has_option(command: str, option: str) -> bool:
    """Whether ``mel <command> --help`` lists ``option``."""
    from modeling_mel.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([command, "--help"])
        except SystemExit:
            pass
    return option in out.getvalue()


def device_flag(command: str, device: str) -> list[str]:
    """``["--device", device]`` for ``mel <command>``; on a checkout without the option, nothing for the CPU (its
    default) and an error for an accelerator."""
    if mel_has_option(command, "--device"):
        return ["--device", device]
    if device == "cpu":
        return []
    raise RuntimeError(f"mel {command} has no --device option in this checkout: cannot run it on {device}")


@contextlib.contextmanager
def timed_calls(owner: Any, name: str):
    """Record the duration of every call of ``owner.<name>`` (a function of a module, or a plain / class method of
    a class) while the block runs; yields the list of seconds (empty when the attribute does not exist)."""
    times: list[float] = []
    raw = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if raw is None:
        yield times
        return
    func = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    setattr(owner, name, classmethod(wrapper) if isinstance(raw, classmethod)
            else staticmethod(wrapper) if isinstance(raw, staticmethod) else wrapper)
    try:
        yield times
    finally:
        setattr(owner, name, raw)


@contextlib.contextmanager
def trainer_metrics():
    """The ``TrainOutput.metrics`` (``train_runtime``, ...) and ``global_step`` of every ``Trainer.train`` call made
    while the block runs (ZemelTrainer / PFMELTrainer inherit ``train``)."""
    from transformers import Trainer

    runs: list[dict] = []
    original = Trainer.__dict__["train"]

    def train(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        runs.append(dict(output.metrics, global_step=output.global_step))
        return output

    Trainer.train = train
    try:
        yield runs
    finally:
        Trainer.train = original


# ----------------------------------------------------------------------------------------------------------------------
# (a) ZEMEL per-example latency: bi / poly / cross against the cached candidates
# ----------------------------------------------------------------------------------------------------------------------
def cross_scores(model, processor, cand_ids, cand_images, caption, mention, region, batch_size, dtype, device):
    """All (context, candidate) pairs scored by the cross-encoder on ``device``: cached candidate token ids,
    length-sorted batches, autocast (``zemel_latency.CrossLinker.fast`` with the batches on the device)."""
    import numpy as np

    from modeling_mel.modeling_zemel import _autocast
    from modeling_mel.processing_multimodal_nsp import mention_prompt

    ids_a = processor._token_ids([mention_prompt(caption, mention)])[0]
    img_a = region["features"].numpy()
    feats = []
    for i, ids_b in enumerate(cand_ids):
        input_ids, types = processor.encode_pair(ids_a, ids_b, len(img_a), 1, processor.max_length)
        feats.append({"input_ids": input_ids, "token_type_ids": types, "attention_mask": [1] * len(input_ids),
                      "image_features": np.concatenate([img_a, cand_images[i][None]], 0)})
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
    scores = torch.empty(len(feats))
    with torch.inference_mode(), _autocast(dtype, device):
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = {k: v.to(device) for k, v in processor.pad([feats[i] for i in idx]).items()}
            scores[torch.tensor(idx)] = model.link_scores(model(**batch).logits).float().cpu()
    return scores


def bi_poly_seconds(device: str, sizes: dict, dtype, processor, kb, caption, mention, region) -> dict[str, float]:
    """Median seconds of ``model.link`` per example in bi and poly mode (same weights, ``config.scoring`` switched),
    tokenisation included, against the candidate encoder's (K, H) cache of ``kb`` on ``device``."""
    from zemel_latency import context_inputs

    model = zemel_model(sizes["size"], processor, scoring="poly").to(device)
    ids = processor.tokenize_candidates([e["name"] for e in kb], [e["description"] for e in kb], max_length=64)
    cache = model.fast_encode_candidates(ids, batch_size=64, autocast_dtype=dtype).to(device)

    def link(scoring: str) -> Callable[[], Any]:
        def run():
            model.config.scoring = scoring
            enc = {k: v.to(device) for k, v in context_inputs(processor, caption, mention, region, trim=True).items()}
            scores = model.link(cache, autocast_dtype=dtype, **enc)
            sync(device)
            return scores

        return run

    return timeit_many({"bi": link("bi"), "poly": link("poly")}, repeats=sizes["repeats"], warmup=3)


def cross_seconds(device: str, sizes: dict, dtype, tokenizer, kb, caption, mention, region) -> float:
    """Median seconds of scoring all (context, candidate) pairs of ``kb`` with the cross-encoder on ``device``."""
    from zemel_latency import cross_model

    from modeling_mel.processing_multimodal_nsp import generic_entity_prompt

    model, processor = cross_model(sizes["size"], tokenizer)
    model = model.to(device)
    cand_ids = processor._token_ids([generic_entity_prompt(e["name"], e["description"]) for e in kb])
    g = torch.Generator().manual_seed(5)
    cand_images = torch.rand(len(kb), 2048, generator=g).numpy()

    def cross():
        out = cross_scores(model, processor, cand_ids, cand_images, caption, mention, region, sizes["cross_batch"],
                           dtype, device)
        sync(device)
        return out

    return timeit_many({"cross": cross}, repeats=sizes["cross_repeats"], warmup=1)["cross"]


def latency_rows(device: str, sizes: dict, dtype) -> list[dict]:
    from modeling_mel import ZemelProcessor
    from modeling_mel.backbones import load_tokenizer

    size, n_cand = sizes["size"], sizes["n_candidates"]
    tokenizer = load_tokenizer("minilm")
    processor = ZemelProcessor(tokenizer)
    kb = entities(n_cand, seed=1)
    caption, mention = captions(1, seed=2)[0]
    region = regions(2)
    times = bi_poly_seconds(device, sizes, dtype, processor, kb, caption, mention, region)
    free_memory(device)
    times["cross"] = cross_seconds(device, sizes, dtype, tokenizer, kb, caption, mention, region)
    free_memory(device)
    rows = []
    for mode in ("bi", "poly", "cross"):
        ms = times[mode] * 1e3
        reps = sizes["cross_repeats"] if mode == "cross" else sizes["repeats"]
        setting = f"{size}, {n_cand} cached candidates, 3 regions, {'bf16' if dtype else 'fp32'}, median of {reps}"
        if mode == "cross":
            setting += f", all {n_cand} pairs in batches of {sizes['cross_batch']}"
        rows.append({"row": f"zemel {mode}", "unit": "ms/example", "device": ms, "paper (2080Ti)": PAPER_GPU_MS[mode],
                     "paper / device": PAPER_GPU_MS[mode] / ms, "setting": setting})
        log(f"zemel {mode}: {ms:.2f} ms/example")
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# (b) Training steps through mel train-zemel and mel finetune
# ----------------------------------------------------------------------------------------------------------------------
def train_flags(device: str, dtype, steps: int, batch: int, out: str) -> list[str]:
    flags = ["--output_dir", out, "--max_steps", str(steps), "--per_device_train_batch_size", str(batch),
             "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "True", "--logging_steps",
             str(max(1, steps // 5)), "--seed", "0"]
    if device == "cpu":
        flags += ["--use_cpu", "True"]
    if dtype is not None:
        flags += ["--bf16", "True"]
    return flags


def run_training(name: str, argv: list[str], steps: int, setting: str) -> dict:
    start = time.perf_counter()
    with trainer_metrics() as runs:
        mel(argv)
    wall = time.perf_counter() - start
    if not runs:
        raise RuntimeError(f"{name}: no Trainer.train call was seen")
    metrics = runs[-1]
    done = int(metrics["global_step"])
    if done != steps:
        raise RuntimeError(f"{name}: {done} steps run, {steps} asked")
    rate = done / float(metrics["train_runtime"])
    log(f"{name}: {done} steps, {rate:.2f} steps/s, train_runtime {metrics['train_runtime']:.1f} s, wall {wall:.1f} s")
    return {"row": name, "unit": "steps/s", "device": rate, "wall s": wall, "setting": setting}


def zemel_train_row(device: str, sizes: dict, dtype, work: str, data: dict) -> dict:
    steps, batch = sizes["train_steps"], sizes["zemel_batch"]
    argv = ["train-zemel", "--dataset", "zemeld", "--data_dir", data["zemeld"], "--backbone", data["backbone"],
            "--image_model", data["resnet"], "--image_size", "64", "--eval_splits", "",
            "--dataset_cache_dir", os.path.join(work, "ds_cache_zemel"),
            *(TINY_ZEMEL_ARGS if sizes["size"] == "tiny" else []),
            *train_flags(device, dtype, steps, batch, os.path.join(work, "zemel_out"))]
    setting = (f"{sizes['size']} backbone, ZEMELD sample, batch {batch}, {steps} steps, mined + in-batch negatives, "
               f"{'bf16' if dtype else 'fp32'}")
    return run_training("zemel train", argv, steps, setting)


def pfmel_train_row(device: str, sizes: dict, dtype, work: str, data: dict) -> dict:
    steps, batch = sizes["train_steps"], sizes["pfmel_batch"]
    argv = ["finetune", "--dataset", "twitter_mel", "--data_dir", data["twitter"], "--backbone", data["backbone"],
            "--image_model", data["resnet"], "--image_size", "64", "--image_cache_dir", os.path.join(work, "img_cache"),
            "--dataset_cache_dir", os.path.join(work, "ds_cache_pfmel"), "--max_length", str(sizes["pfmel_max_length"]),
            "--eval_splits", "dev", "--max_eval_samples", "2",
            *(["--max_train_samples", "8", "--num_negatives", "1"] if sizes["size"] == "tiny" else []),
            *train_flags(device, dtype, steps, batch, os.path.join(work, "pfmel_out"))]
    setting = (f"{sizes['size']} backbone, Twitter MEL sample, batch {batch} pairs, max length "
               f"{sizes['pfmel_max_length']}, {steps} steps, {'bf16' if dtype else 'fp32'}")
    return run_training("pfmel train", argv, steps, setting)


# ----------------------------------------------------------------------------------------------------------------------
# (c) mel index / mel link, (d) pipeline(): device against CPU
# ----------------------------------------------------------------------------------------------------------------------
def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def link_inputs(work: str, sizes: dict) -> dict:
    """The saved ZEMEL model, the KB files (all entities; the CPU's subset) and the mention files."""
    model_dir = save_zemel(sizes["size"], os.path.join(work, "zemel_model"))
    kb = entities(sizes["n_entities"], seed=7)
    mentions = [{"id": f"m{i}", "text": t, "mention": m} for i, (t, m) in enumerate(captions(sizes["n_mentions"], seed=3))]
    return {
        "model": model_dir,
        "kb": write_jsonl(os.path.join(work, "kb.jsonl"), kb), "n_kb": len(kb),
        "kb_cpu": write_jsonl(os.path.join(work, "kb_cpu.jsonl"), kb[: sizes["cpu_entities"]]),
        "n_kb_cpu": min(len(kb), sizes["cpu_entities"]),
        "mentions": mentions,
        "input": write_jsonl(os.path.join(work, "mentions.jsonl"), mentions),
        "input_cpu": write_jsonl(os.path.join(work, "mentions_cpu.jsonl"), mentions[: sizes["cpu_mentions"]]),
        "n_cpu_mentions": min(len(mentions), sizes["cpu_mentions"]),
        "warmup": {"kb": write_jsonl(os.path.join(work, "kb_warmup.jsonl"), kb[: 2 * sizes["link_batch"]]),
                   "input": write_jsonl(os.path.join(work, "mentions_warmup.jsonl"), mentions[: sizes["link_batch"]])},
    }


def mel_index_seconds(device: str, model: str, kb: str, out: str) -> float:
    from modeling_mel.entity_index import EntityIndex

    flag = device_flag("index", device)
    argv = ["index", "--model", model, "--kb", kb, "--out", out, "--index_type", "flat", "--no_images", *flag]
    start = time.perf_counter()
    with timed_calls(EntityIndex, "build") as times:
        mel(argv)
    return sum(times) if times else time.perf_counter() - start  # the build (encoding + index) when it was seen


def mel_link_seconds(device: str, model: str, index: str, input_path: str, out: str, batch: int) -> float:
    from modeling_mel import cli_link

    flag = device_flag("link", device)
    argv = ["link", "--model", model, "--index", index, "--input", input_path, "--output", out, "--no_images",
            "--top_k", "5", "--candidates", "dense", "--batch_size", str(batch), *flag]
    start = time.perf_counter()
    with timed_calls(cli_link, "link_file") as times:
        mel(argv)
    with open(out, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    if not lines or any("error" in r for r in lines):
        raise RuntimeError(f"mel link on {device}: {sum('error' in r for r in lines)} of {len(lines)} lines failed")
    return sum(times) if times else time.perf_counter() - start  # the linking loop when it was seen


def index_link_rows(device: str, sizes: dict, work: str, inputs: dict) -> list[dict]:
    """``mel index`` and ``mel link`` on the device and on the CPU, each timed after an untimed warm-up run of the
    same command on a few entities / mentions (first-call costs: kernels, autocast weight copies)."""
    index_dev, index_cpu = os.path.join(work, "index_device"), os.path.join(work, "index_cpu")
    warm = inputs["warmup"]
    rows = []
    try:
        mel_index_seconds(device, inputs["model"], warm["kb"], os.path.join(work, "index_warmup_device"))
        dev_s = mel_index_seconds(device, inputs["model"], inputs["kb"], index_dev)
        mel_index_seconds("cpu", inputs["model"], warm["kb"], os.path.join(work, "index_warmup_cpu"))
        cpu_s = mel_index_seconds("cpu", inputs["model"], inputs["kb_cpu"], index_cpu)
        dev_rate, cpu_rate = inputs["n_kb"] / dev_s, inputs["n_kb_cpu"] / cpu_s
        rows.append({"row": "mel index", "unit": "entities/s", "device": dev_rate, "cpu": cpu_rate,
                     "device / cpu": dev_rate / cpu_rate, "wall s": dev_s,
                     "setting": f"{sizes['size']} ZEMEL, flat index, {inputs['n_kb']} entities "
                                f"({inputs['n_kb_cpu']} on the CPU), bf16 where fast"})
        log(f"mel index: {dev_rate:.1f} entities/s on {device}, {cpu_rate:.1f} on cpu")
    except Exception as err:  # noqa: BLE001 - mel link still runs when the device index was written
        rows.append(failed_row("mel index", err))
        if not os.path.isfile(os.path.join(index_dev, "index_config.json")):
            rows.append(failed_row("mel link", RuntimeError("no index (mel index failed)")))
            return rows
    try:
        n_dev, n_cpu, batch = len(inputs["mentions"]), inputs["n_cpu_mentions"], sizes["link_batch"]
        mel_link_seconds(device, inputs["model"], index_dev, warm["input"], os.path.join(work, "links_warmup_dev.jsonl"),
                         batch)
        dev_s = mel_link_seconds(device, inputs["model"], index_dev, inputs["input"], os.path.join(work, "links_dev.jsonl"),
                                 batch)
        mel_link_seconds("cpu", inputs["model"], index_dev, warm["input"], os.path.join(work, "links_warmup_cpu.jsonl"),
                         batch)
        cpu_s = mel_link_seconds("cpu", inputs["model"], index_dev, inputs["input_cpu"],
                                 os.path.join(work, "links_cpu.jsonl"), batch)
        dev_rate, cpu_rate = n_dev / dev_s, n_cpu / cpu_s
        rows.append({"row": "mel link", "unit": "mentions/s", "device": dev_rate, "cpu": cpu_rate,
                     "device / cpu": dev_rate / cpu_rate, "wall s": dev_s,
                     "setting": f"{sizes['size']} ZEMEL poly, dense top 5 of {inputs['n_kb']} entities, text only, "
                                f"batch {batch}, {n_dev} mentions ({n_cpu} on the CPU)"})
        log(f"mel link: {dev_rate:.1f} mentions/s on {device}, {cpu_rate:.1f} on cpu")
    except Exception as err:  # noqa: BLE001
        rows.append(failed_row("mel link", err))
    return rows


def pipeline_seconds(device: str, model: str, index: str, mentions: list[dict], batch: int) -> float:
    from transformers import pipeline

    import modeling_mel  # noqa: F401 - registers the task

    with contextlib.redirect_stdout(sys.stderr):
        pipe = pipeline("multimodal-entity-linking", model=model, kb=index, device=device, use_images=False)
        pipe([dict(m) for m in mentions[:batch]], top_k=5, candidates="dense", batch_size=batch)  # warm-up
        sync(device)
        start = time.perf_counter()
        out = pipe([dict(m) for m in mentions], top_k=5, candidates="dense", batch_size=batch)
        sync(device)
        seconds = time.perf_counter() - start
    if len(out) != len(mentions) or not all(out):
        raise RuntimeError(f"pipeline on {device}: {len(out)} results for {len(mentions)} mentions")
    del pipe
    free_memory(device)
    return seconds


def pipeline_row(device: str, sizes: dict, work: str, inputs: dict) -> dict:
    index = os.path.join(work, "index_device")
    if not os.path.isfile(os.path.join(index, "index_config.json")):
        raise RuntimeError("no index (mel index failed)")
    mentions, batch = inputs["mentions"], sizes["link_batch"]
    dev_rate = len(mentions) / pipeline_seconds(device, inputs["model"], index, mentions, batch)
    cpu_mentions = mentions[: inputs["n_cpu_mentions"]]
    cpu_rate = len(cpu_mentions) / pipeline_seconds("cpu", inputs["model"], index, cpu_mentions, batch)
    log(f"pipeline: {dev_rate:.1f} mentions/s on {device}, {cpu_rate:.1f} on cpu")
    return {"row": "pipeline", "unit": "mentions/s", "device": dev_rate, "cpu": cpu_rate, "device / cpu": dev_rate / cpu_rate,
            "wall s": len(mentions) / dev_rate,
            "setting": f"pipeline(model=dir, kb=index, device=...), dense top 5 of {inputs['n_kb']} entities, batch "
                       f"{batch}, {len(mentions)} mentions ({len(cpu_mentions)} on the CPU), after a warm-up batch"}


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------
def failed_row(name: str, err: BaseException) -> dict:
    message = " ".join(f"{type(err).__name__}: {err}".split())[:200].replace("|", "/")
    return {"row": name, "unit": "", "device": "FAILED", "setting": message, "error": message}


def guarded(name: str, fn: Callable[[], Any]) -> list[dict]:
    """``fn()``'s rows, or one FAILED row per name in ``name`` (traceback on stderr)."""
    log(f"--- {name}")
    try:
        out = fn()
        return out if isinstance(out, list) else [out]
    except Exception as err:  # noqa: BLE001 - one broken row must not cost the others (device time is scarce)
        traceback.print_exc(file=sys.stderr)
        return [failed_row(n, err) for n in name.split(" + ")]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(device="auto")
    for action in parser._actions:
        if action.dest == "quick":
            action.help = "tiny sizes (a tiny random config, 8 candidates, 3 training steps) on the device: a smoke test"
        elif action.dest == "device":
            action.help = "auto (cuda, else mps, when available), cpu, cuda, cuda:N or mps"
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="every row on the CPU with tiny sizes, well under a minute (tests)")
    parser.add_argument("--rows", nargs="+", default=None, choices=("latency", "zemel-train", "pfmel-train", "index-link",
                                                                     "pipeline"),
                        help="run only these groups of rows (None: all)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (models, corpora, indexes)")
    args = parser.parse_args(argv)
    # dry run: one torch thread unless told (tiny matrices on a shared 2-core machine run many times slower on two)
    setup_threads(args.threads or (1 if args.dry_run else None))

    device = resolve_device(args.device, args.dry_run)
    if device is None:
        log(f"device_check: no accelerator found (asked for --device {args.device}; torch {torch.__version__}, "
            f"cuda available: {torch.cuda.is_available()}). Run it on the GPU machine, or pass --device cpu to time "
            "the CPU, or --dry-run for the tiny CPU check.")
        return 2
    tiny = args.dry_run or args.quick
    sizes = dict(TINY if tiny else FULL)
    if args.repeats:
        sizes["repeats"] = sizes["cross_repeats"] = args.repeats
    from modeling_mel.hardware import bf16_is_fast

    dtype = torch.bfloat16 if bf16_is_fast(device) else None
    groups = args.rows or ["latency", "zemel-train", "pfmel-train", "index-link", "pipeline"]
    work = tempfile.mkdtemp(prefix="device_check-")
    log(f"device_check on {device_label(device)} ({'dry run, ' if args.dry_run else ''}{'tiny' if tiny else 'full'} sizes, "
        f"bf16 {dtype is not None}), work folder {work}")
    random.seed(0)
    torch.manual_seed(0)
    begin = time.perf_counter()
    rows: list[dict] = []
    data: dict[str, str] = {}

    def train_data() -> dict:
        if not data:
            data["twitter"], data["zemeld"] = generate_samples(work)
            data["backbone"] = save_backbone(sizes["size"], os.path.join(work, "backbone"))
            data["resnet"] = save_resnet(os.path.join(work, "resnet"))
        return data

    try:
        if "latency" in groups:
            rows += guarded("zemel bi + zemel poly + zemel cross", lambda: latency_rows(device, sizes, dtype))
        if "zemel-train" in groups:
            rows += guarded("zemel train", lambda: zemel_train_row(device, sizes, dtype, work, train_data()))
            shutil.rmtree(os.path.join(work, "zemel_out"), ignore_errors=True)
        if "pfmel-train" in groups:
            rows += guarded("pfmel train", lambda: pfmel_train_row(device, sizes, dtype, work, train_data()))
            shutil.rmtree(os.path.join(work, "pfmel_out"), ignore_errors=True)
        free_memory(device)
        inputs: dict = {}
        if "index-link" in groups or "pipeline" in groups:
            log("--- saved ZEMEL model, KB and mentions")
            try:
                inputs = link_inputs(work, sizes)
            except Exception as err:  # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                names = (["mel index", "mel link"] if "index-link" in groups else []) + \
                    (["pipeline"] if "pipeline" in groups else [])
                rows += [failed_row(n, err) for n in names]
        if inputs and "index-link" in groups:
            rows += guarded("mel index + mel link", lambda: index_link_rows(device, sizes, work, inputs))
        if inputs and "pipeline" in groups:
            if "index-link" not in groups:  # the pipeline reads the index mel index writes
                guarded("mel index", lambda: mel_index_seconds(device, inputs["model"], inputs["kb"],
                                                              os.path.join(work, "index_device")))
            rows += guarded("pipeline", lambda: pipeline_row(device, sizes, work, inputs))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - begin
    rows.sort(key=lambda r: ROWS.index(r["row"]))
    label = device_label(device)
    for row in rows:
        row["device"] = row["device"] if isinstance(row["device"], str) else float(row["device"])
    columns = ["row", "unit", "device", "cpu", "device / cpu", "paper (2080Ti)", "paper / device", "wall s", "setting"]
    table = markdown_table(rows, columns).replace("| device | cpu |", f"| on {label}{' (dry run)' if args.dry_run else ''}"
                                                                     " | on cpu |", 1)
    print(table, flush=True)
    failed = [r["row"] for r in rows if "error" in r]
    payload = {"rows": rows, "device": device, "device_name": label, "dry_run": bool(args.dry_run), "sizes": sizes,
               "bf16": dtype is not None, "paper_gpu_ms": PAPER_GPU_MS, "failed": failed, "total_s": total,
               "machine_device": machine_info().get("cuda")}
    title = (f"Device check on {label}: ZEMEL latency vs the paper's Table 3 (2080Ti), training steps, mel index / "
             f"mel link / pipeline() against the CPU ({total:.0f} s in all)")
    path = write_results("device_check", payload, {title: table}, args.out_dir, quick=tiny)
    log(f"wrote {path} ({total:.1f} s){'; FAILED rows: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
