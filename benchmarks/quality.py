#!/usr/bin/env python
"""Linking quality on real data (WikiMEL dev by default), every stage through the package's own commands.

    python benchmarks/quality.py --data_dir ../shared/data/wikimel                 # all stages, ~60 min on 2 cores
    python benchmarks/quality.py --data_dir D --stages candidates,st,zemel_zero_shot   # the untrained stages only
    python benchmarks/quality.py --data_dir D --train_mentions 2000 --dev_mentions 500  # a quick look
    python benchmarks/quality.py --dataset mimic_mel --data_dir RichpediaMEL --split test --image_model M  # MIMIC layout

Stages (each on the dev split, whole KB, every gold mention of the split counted: a mention the linker could not
use, a NIL mention and a gold outside the KB count as wrong). Metrics: the field's H@1, H@3, H@5, H@10, H@20, MR
(mean rank) and MRR (``modeling_mel.metrics.ranking_metrics``): ``st`` ranks the whole KB (exact MR); the ``mel link``
stages return their top 100, so a gold below it counts as ranked after every entity (MR is then an upper bound,
``n_unranked`` says how many).

``--dataset mimic_mel`` reads WikiMEL, RichpediaMEL or WikiDiverse in the layout MIMIC released (one dataset folder as
``--data_dir``). With ``--image_model M`` and a corpus with images, the trained stages (``zemel``, ``zemel_bm25``,
``pfmel``, ``rerank``) train with image features of ``M`` and their ``mel index`` / ``mel link`` read the KB and
mention images with ``M``; without it (or without images) every stage is text only.

* ``candidates``: PFMEL's name rule (candidate recall, mean candidates), the shortest-matching-name baseline (H@1),
  ZEMEL's BM25 + name-rule generator (R@1/10/100).
* ``st``: zero-shot sentence-transformers ``encode`` of the same all-MiniLM-L6-v2 (``"<mention>. <text>"`` against
  ``"<name>. <description>"``, cosine), exact search over the whole KB.
* ``zemel_zero_shot``: the untrained text-only ``ZemelPolyEncoder.from_text_backbone("minilm", scoring="bi")``
  through ``mel index`` + ``mel link --candidates dense``.
* ``zemel``: ZEMEL (poly) trained by ``mel train-zemel`` (hard negatives mined with the model, in-batch
  negatives) on the train split, then ``mel index`` + ``mel link --candidates dense``.
* ``pfmel``: the PFMEL NSP cross-encoder fine-tuned by ``mel finetune`` over name-rule candidates
  (text only, from the MiniLM backbone, no pre-training), linked by ``mel link`` (name-rule candidates).
* ``rerank``: retrieve-then-rerank: the NSP cross-encoder fine-tuned by ``finetune_linking.py --retriever <the zemel
  stage's index> --loss listwise`` on the retriever's top-k + closest names, then
  ``mel link --model NSP --retriever INDEX`` (needs the ``zemel`` stage, or ``--zemel_model`` and its index).

* ``transfer`` (with ``--transfer_from DIR``, the ``--work_dir`` of a quality.py run on another dataset): that run's
  ZEMEL (``DIR/zemel``, else ``DIR/zemel_bm25``) indexes this dataset's KB and links its dev split, and that run's
  reranker (``DIR/rerank``, when present) reranks it, through the same ``mel index`` / ``mel link`` commands; nothing
  is trained on this dataset. Compare with ``zemel_zero_shot``, the untrained backbone on the same split.
* ``mixing`` (with ``--mixing A [A ...]``): the trained ZEMEL (``--zemel_model``, else the ``zemel`` stage's) with its
  text streams brought to each ``--backbone_mixing A`` (``remix_with_backbone``: from the mixing its config records,
  no retraining; what ``mel train-zemel --backbone_mixing A`` would have saved), each through ``mel index`` +
  ``mel link``: the curve behind ZEMEL's default mixing.

The last ``--holdout_mentions`` (1000) train mentions are trained on by neither ZEMEL nor the reranker; they choose
the reranker's retriever-score weight (``finetune_linking.py --calibration_mentions``), where the retriever's
scores are as confident as on unseen mentions.

Writes ``benchmarks/results/<name>.json`` and ``.md`` (``--name``, default ``quality_<dataset>``). Mentions/s are
end-to-end ``mel link`` figures (model loading excluded, KB/index loading included) on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Sequence

from common import REPO_ROOT, RESULTS_DIR, machine_info  # noqa: E402  (sets sys.path and the offline env)

STAGES = ("candidates", "st", "zemel_zero_shot", "zemel", "pfmel", "rerank", "zemel_bm25", "transfer", "mixing")
#: the stages of a plain run (zemel_bm25, ZEMEL trained with the paper's BM25 + rule negatives, on request; transfer
#: when ``--transfer_from`` names the models of another dataset; mixing when ``--mixing`` names alphas)
DEFAULT_STAGES = STAGES[:-3]


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
    """One JSON object per line (UTF-8, ``\\n`` line ends)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare(args: argparse.Namespace, work: str) -> dict[str, Any]:
    """Build the corpus with its builder; write ``kb.jsonl`` and ``<split>.jsonl`` (mel_jsonl layout) into ``work``."""
    import datasets

    from modeling_mel.corpus import load_mel_corpus
    from modeling_mel.image_features import image_source
    from modeling_mel.nil import is_nil_gold

    mentions = load_mel_corpus(args.dataset, args.data_dir)
    kb = load_mel_corpus(args.dataset, args.data_dir, config="kb")
    if args.split not in mentions:
        raise SystemExit(f"quality.py: split {args.split!r} not in the corpus (splits: {list(mentions)})")

    def paths(values) -> list[str]:  # the image files of undecoded datasets.Image values
        return [p for p in (image_source(v) for v in values or []) if isinstance(p, str)]

    kb_images = (paths(v) for v in kb.cast_column("images", datasets.List(datasets.Image(decode=False)))["images"])
    kb_rows = [
        {"entity_id": e, "name": n, "description": d or "", "images": im}
        for e, n, d, im in zip(kb["entity_id"], kb["name"], kb["description"], kb_images)
    ]
    dev = mentions[args.split]
    dev = dev.cast_column("image", datasets.Image(decode=False)) if "image" in dev.column_names else dev
    rows = []
    for r in dev:
        row = {"id": r["id"], "text": r["text"], "mention": r["mention"], "entity_id": r["entity_id"]}
        if r.get("mention_start") is not None and r.get("mention_end") is not None:
            row["mention_start"], row["mention_end"] = int(r["mention_start"]), int(r["mention_end"])
        image = paths([r.get("image")])
        if image:
            row["image"] = image[0]
        rows.append(row)
    has_images = any(e["images"] for e in kb_rows) or any("image" in r for r in rows)
    use_images = bool(args.image_model) and has_images
    if args.image_model and not has_images:
        print(f"quality.py: --image_model given but {args.dataset} in {args.data_dir} has no image: text only", flush=True)
    if not use_images:  # text only: no image path in the files mel index / mel link read
        kb_rows = [{k: v for k, v in e.items() if k != "images"} for e in kb_rows]
        rows = [{k: v for k, v in r.items() if k != "image"} for r in rows]
    write_jsonl(os.path.join(work, "kb.jsonl"), kb_rows)
    if args.dev_mentions:
        import random

        rows = sorted(random.Random(args.seed).sample(rows, min(args.dev_mentions, len(rows))), key=lambda r: r["id"])
    write_jsonl(os.path.join(work, "dev.jsonl"), rows)
    return {"kb": kb_rows, "dev": rows, "n_train": len(mentions["train"]) if "train" in mentions else 0,
            "use_images": use_images, "n_nil": sum(is_nil_gold(r["entity_id"]) for r in rows)}


def ranking_metrics(ranked: Sequence[Sequence[str]], gold: Sequence[str], kb_size: int,
                    ks: Sequence[int] | None = None) -> dict[str, float]:
    """The field's H@k, MR and MRR (``modeling_mel.metrics.ranking_metrics``, the one shared definition) of the
    gold's position in each ranked list, every gold mention counted (a gold outside its list has no rank)."""
    from modeling_mel.metrics import HIT_KS, gold_ranks
    from modeling_mel.metrics import ranking_metrics as shared

    return shared(gold_ranks(ranked, gold), kb_size, HIT_KS if ks is None else ks)


# ----------------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------------


def stage_candidates(data: dict[str, Any]) -> dict[str, Any]:
    """Name rule, shortest matching name, BM25 + rules."""
    from modeling_mel.candidates import Bm25RuleCandidates, NameRuleCandidates

    kb, dev = data["kb"], data["dev"]
    gold = [r["entity_id"] for r in dev]
    t0 = time.perf_counter()
    rule = NameRuleCandidates(kb)
    names = {e["entity_id"]: e["name"] for e in kb}
    cands = [rule(r["mention"]) for r in dev]
    shortest = [sorted(c, key=lambda e: (names[e].lower() != r["mention"].lower(), len(names[e])))[:1] for c, r in zip(cands, dev)]
    rule_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    bm25 = Bm25RuleCandidates([e["entity_id"] for e in kb], [e["name"] for e in kb])
    ranked = [bm25(r["mention"], 100) for r in dev]
    bm25_s = time.perf_counter() - t0
    n = len(dev)
    return {
        "name_rule": {
            "candidate_recall": sum(g in c for c, g in zip(cands, gold)) / n,
            "mean_candidates": sum(map(len, cands)) / n,
            "no_candidate": sum(not c for c in cands),
        },
        "shortest_name": dict(ranking_metrics(shortest, gold, len(kb), (1,)), mentions_per_s=n / rule_s),
        "bm25_rules": dict(
            ranking_metrics(ranked, gold, len(kb), (1, 3, 5, 10, 20, 100)), mentions_per_s=n / bm25_s,
            note="BM25 over entity names + the three name rules (ZEMEL's generator), index build included",
        ),
    }


def stage_st(data: dict[str, Any], batch_size: int = 128) -> dict[str, Any]:
    """Zero-shot sentence-transformers baseline: exact cosine search over the whole KB; each gold's exact rank among
    every entity (ties go to the gold)."""
    from sentence_transformers import SentenceTransformer

    from modeling_mel.backbones import embedded_minilm_path

    kb, dev = data["kb"], data["dev"]
    model = SentenceTransformer(embedded_minilm_path(), device="cpu")
    t0 = time.perf_counter()
    ent = model.encode([f"{e['name']}. {e['description']}" for e in kb], batch_size=batch_size,
                       convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=True)
    kb_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx = model.encode([f"{r['mention']}. {r['text']}" for r in dev], batch_size=batch_size,
                       convert_to_tensor=True, normalize_embeddings=True)
    position = {e["entity_id"]: i for i, e in enumerate(kb)}
    gold = [position.get(r["entity_id"]) for r in dev]
    ranks: list[int | None] = []
    for a in range(0, len(dev), 256):  # (256, KB) similarities at a time
        sims = ctx[a : a + 256] @ ent.T
        for row, g in zip(sims, gold[a : a + 256]):
            ranks.append(None if g is None else int((row > row[g]).sum()) + 1)
    link_s = time.perf_counter() - t0
    from modeling_mel.metrics import ranking_metrics as shared

    return dict(shared(ranks, len(kb)), entities_per_s=len(kb) / kb_s, mentions_per_s=len(dev) / link_s)


def run(cmd: list[str], log: str) -> str:
    """Run a command (stdout+stderr to ``log``); SystemExit naming the log when it fails. Returns stdout."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    print("$", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env, cwd=REPO_ROOT)
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"quality.py: {cmd[1:3]} failed with exit code {proc.returncode}; see {log}")
    return proc.stdout


def image_feature_mode(script: str) -> str:
    """The ``--image_features`` value of a training script that extracts features with its ``--image_model`` (the
    default of its data arguments)."""
    import dataclasses

    if script == "train_zemel":
        from modeling_mel.zemel_training import ZemelDataArguments as DataArguments
    else:
        from modeling_mel.pfmel_training import PFMELDataArguments as DataArguments
    return next(f.default for f in dataclasses.fields(DataArguments) if f.name == "image_features")


def image_options(args: argparse.Namespace, data: dict[str, Any], script: str | None = None) -> list[str]:
    """What makes a command use images: ``--image_model M`` (and, for a training script, its feature mode) when
    ``--image_model`` was given and the corpus has images; else text only (``--image_features none`` for a training
    script, ``--no_images`` for ``mel index`` / ``mel link``)."""
    if data.get("use_images"):
        mode = ["--image_features", image_feature_mode(script)] if script else []
        return [*mode, "--image_model", args.image_model]
    return ["--image_features", "none"] if script else ["--no_images"]


def train_minutes(script: str, args: argparse.Namespace, model_dir: str, options: list[str], log: str,
                  data: dict[str, Any] | None = None) -> float:
    """Run ``modeling_mel.scripts.<script>`` (= ``train/<script>.py``) on the CPU, into ``model_dir`` with ``options``
    beside the settings every stage shares (``--bf16`` when asked; images as :func:`image_options` says, text only
    by default); its wall time in minutes."""
    cmd = [sys.executable, "-m", f"modeling_mel.scripts.{script}", "--dataset", args.dataset, "--data_dir",
           args.data_dir, "--output_dir", model_dir, "--overwrite_output_dir", *image_options(args, data or {}, script),
           "--save_strategy", "no", "--report_to", "none", "--seed", str(args.seed), "--use_cpu", *options]
    t0 = time.perf_counter()
    run(cmd + (["--bf16"] if args.bf16 else []), log)
    return round((time.perf_counter() - t0) / 60, 1)


MEL = [sys.executable, "-c", "import sys; from modeling_mel.cli import main; sys.exit(main())"]


def mel_link_metrics(
    model_dir: str, work: str, tag: str, data: dict[str, Any], dense: bool, retriever: str | None = None,
    retriever_k: int | None = None, images: list[str] | None = None,
) -> dict[str, Any]:
    """``mel index`` (ZEMEL) + ``mel link`` over the dev file; H@1/3/5/10/20, MR and MRR from its top 100, every gold
    counted. ``images``: the image options of both commands (default ``--no_images``, text only)."""
    out: dict[str, Any] = {}
    images = ["--no_images"] if images is None else list(images)
    kb_arg = ["--kb", os.path.join(work, "kb.jsonl")]
    if dense:
        index = os.path.join(work, f"{tag}_index")
        t0 = time.perf_counter()
        run(MEL + ["index", "--model", model_dir, "--kb", os.path.join(work, "kb.jsonl"), "--out", index, *images],
            os.path.join(work, f"{tag}_index.log"))
        out["index_seconds"] = round(time.perf_counter() - t0, 1)
        kb_arg = ["--index", index]
    links = os.path.join(work, f"{tag}_links.jsonl")
    extra = ["--candidates", "dense", "--num_candidates", "100"] if dense else ["--num_candidates", "100"]
    if retriever:
        extra += ["--retriever", retriever] + (["--retriever_k", str(retriever_k)] if retriever_k else [])
    stdout = run(MEL + ["link", "--model", model_dir, *kb_arg, "--input", os.path.join(work, "dev.jsonl"),
                        "--output", links, "--top_k", "100", "--batch_size", "32", *images, *extra],
                 os.path.join(work, f"{tag}_link.log"))
    summary = json.loads(stdout.strip().splitlines()[-1])
    by_line = {}
    with open(links, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            by_line[rec["line"]] = [p["entity_id"] for p in rec.get("predictions", [])]
    ranked = [by_line.get(i + 1, []) for i in range(len(data["dev"]))]
    out.update(ranking_metrics(ranked, [r["entity_id"] for r in data["dev"]], len(data["kb"])))
    out["errors"] = summary.get("errors", 0)
    out["mentions_per_s"] = round(len(data["dev"]) / summary["seconds"], 2) if summary.get("seconds") else None
    return out


def stage_zemel_zero_shot(data: dict[str, Any], work: str) -> dict[str, Any]:
    """The untrained text-only ZEMEL (bi), saved, then ``mel index`` + ``mel link``."""
    import modeling_mel  # noqa: F401 - registers the Auto classes
    from modeling_mel.modeling_zemel import ZemelPolyEncoder
    from modeling_mel.processing_zemel import ZemelProcessor

    model_dir = os.path.join(work, "zemel_zero_shot")
    processor = ZemelProcessor.from_backbone("minilm", context_template="mention_first")
    model = ZemelPolyEncoder.from_text_backbone("minilm", scoring="bi")
    model.resize_for_processor(processor)
    model.config.image_features = "none"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return mel_link_metrics(model_dir, work, "zemel_zero_shot", data, dense=True)


def stage_zemel(args: argparse.Namespace, data: dict[str, Any], work: str, negatives: str = "dense") -> dict[str, Any]:
    """Train ZEMEL (poly) with train_zemel.py on the train split, then ``mel index`` + ``mel link``; ``negatives``:
    ``dense`` (the package default, mined with the model) or ``bm25`` (the paper's BM25 + rules, stage zemel_bm25)."""
    tag = "zemel" if negatives == "dense" else f"zemel_{negatives}"
    given = args.zemel_model if negatives == "dense" else None
    model_dir = given or os.path.join(work, tag)
    minutes = None
    if not given:
        options = ["--eval_splits", "", "--num_train_epochs", str(args.zemel_epochs), "--learning_rate", str(args.zemel_lr),
                   "--per_device_train_batch_size", "32", "--num_candidates", "4", "--negatives", negatives,
                   "--context_max_length", "48", "--candidate_max_length", "48", "--logging_steps", "50"]
        limit = min(args.train_mentions or data["n_train"], data["n_train"] - args.holdout_mentions)
        if limit < data["n_train"]:
            options += ["--max_train_samples", str(limit)]
        minutes = train_minutes("train_zemel", args, model_dir, options, os.path.join(work, f"{tag}_train.log"), data)
    out = mel_link_metrics(model_dir, work, tag, data, dense=True, images=image_options(args, data))
    out["train_minutes"] = minutes
    return out


def stage_rerank(args: argparse.Namespace, data: dict[str, Any], work: str) -> dict[str, Any]:
    """Fine-tune the NSP reranker listwise on the ZEMEL index's candidates, then ``mel link --retriever``."""
    index = os.path.join(work, "zemel_index")
    if not os.path.isfile(os.path.join(index, "index_config.json")):
        raise SystemExit("quality.py: the rerank stage needs the zemel stage's index (run it first, same --work_dir)")
    model_dir = args.rerank_model or os.path.join(work, "rerank")
    minutes = None
    if not args.rerank_model:
        options = ["--backbone", "minilm", "--retriever", index, "--loss", "listwise", "--list_size",
                   str(args.rerank_list_size), "--retriever_k", str(args.rerank_k), "--num_train_epochs",
                   str(args.rerank_epochs), "--learning_rate", str(args.rerank_lr), "--per_device_train_batch_size", "16",
                   "--max_length", "128", "--eval_splits", args.split, "--max_eval_samples", "1", "--bf16_eval",
                   "--logging_steps", "25", "--max_train_samples", str(args.rerank_train_mentions),
                   "--calibration_mentions", str(args.holdout_mentions)]
        minutes = train_minutes("finetune_linking", args, model_dir, options, os.path.join(work, "rerank_train.log"),
                                data)
    out = mel_link_metrics(model_dir, work, "rerank", data, dense=False, retriever=index, retriever_k=args.rerank_link_k,
                           images=image_options(args, data))
    out["train_minutes"] = minutes
    out["link_retriever_k"] = args.rerank_link_k
    with open(os.path.join(model_dir, "eval_results.json"), encoding="utf-8") as f:
        train = json.load(f).get("train", {})
    out["retriever_score_weight"] = train.get("retriever_score_weight")
    out["calibration_accuracy"] = train.get("calibration_accuracy")
    return out


def transfer_models(folder: str) -> tuple[str, str | None]:
    """The ZEMEL (``zemel``, else ``zemel_bm25``) and the reranker (``rerank``, or None) of a quality.py work dir."""
    zemel = next((os.path.join(folder, t) for t in ("zemel", "zemel_bm25")
                  if os.path.isfile(os.path.join(folder, t, "config.json"))), None)
    if zemel is None:
        raise SystemExit(f"quality.py: --transfer_from {folder!r} holds no trained ZEMEL (zemel/ or zemel_bm25/ with a "
                         "config.json); give the --work_dir of a quality.py run of the zemel or zemel_bm25 stage")
    rerank = os.path.join(folder, "rerank")
    return zemel, rerank if os.path.isfile(os.path.join(rerank, "config.json")) else None


def trained_on(model_dir: str) -> str | None:
    """The corpus a model was trained on (``config.training_dataset``, recorded by the training scripts)."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f).get("training_dataset")


def stage_transfer(args: argparse.Namespace, data: dict[str, Any], work: str) -> dict[str, Any]:
    """Zero-shot transfer: the ZEMEL and reranker of another dataset's quality.py run (``--transfer_from``) index this
    dataset's KB and link its dev split; no training on this dataset."""
    if not args.transfer_from:
        raise SystemExit("quality.py: the transfer stage needs --transfer_from DIR (another dataset's --work_dir)")
    zemel, rerank = transfer_models(args.transfer_from)
    out: dict[str, Any] = {"zemel": mel_link_metrics(zemel, work, "transfer_zemel", data, dense=True,
                                                     images=image_options(args, data))}
    out["zemel"].update(model=zemel, trained_on=trained_on(zemel))
    if rerank is None:
        print(f"quality.py: no reranker in {args.transfer_from} (rerank/): the transfer stage links with ZEMEL only",
              flush=True)
    else:
        out["rerank"] = mel_link_metrics(rerank, work, "transfer_rerank", data, dense=False,
                                         retriever=os.path.join(work, "transfer_zemel_index"),
                                         retriever_k=args.rerank_link_k, images=image_options(args, data))
        out["rerank"].update(model=rerank, trained_on=trained_on(rerank), link_retriever_k=args.rerank_link_k)
    return out


def stage_mixing(args: argparse.Namespace, data: dict[str, Any], work: str) -> dict[str, Any]:
    """The trained ZEMEL remixed with its backbone to each ``--mixing`` alpha, each through ``mel index`` + ``mel
    link``: ``{"model": the source, "alphas": {alpha: metrics}}``."""
    import modeling_mel  # noqa: F401 - registers the Auto classes
    from transformers import AutoModel, AutoProcessor

    from modeling_mel.backbone_interpolation import backbone_state, remix_with_backbone

    source = args.zemel_model or os.path.join(work, "zemel")
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise SystemExit(f"quality.py: the mixing stage needs a trained ZEMEL: --zemel_model, or the zemel stage in the "
                         f"same --work_dir (no config.json in {source!r})")
    out: dict[str, Any] = {"model": source, "alphas": {}}
    state = backbone_state("minilm")  # the backbone every ZEMEL of quality.py starts from
    processor = AutoProcessor.from_pretrained(source)
    for alpha in args.mixing:
        model = AutoModel.from_pretrained(source)  # fresh each time: remixing works from the recorded mixing
        remix_with_backbone(model, alpha, processor=processor, state=state)
        tag = f"zemel_mixed{alpha:g}"
        folder = os.path.join(work, tag)
        # the processor, shipped code and config beside the new weights (save_pretrained writes both of the latter)
        shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors"))
        model.save_pretrained(folder)
        out["alphas"][f"{alpha:g}"] = mel_link_metrics(folder, work, tag, data, dense=True, images=image_options(args, data))
    return out


def stage_pfmel(args: argparse.Namespace, data: dict[str, Any], work: str) -> dict[str, Any]:
    """Fine-tune the PFMEL NSP linker over name-rule candidates (text only), then ``mel link`` (name rule)."""
    model_dir = args.pfmel_model or os.path.join(work, "pfmel")
    minutes = None
    if not args.pfmel_model:
        options = ["--backbone", "minilm", "--num_train_epochs", "1", "--learning_rate", str(args.pfmel_lr),
                   "--max_length", "128", "--num_negatives", "8", "--eval_splits", args.split,
                   "--max_train_samples", str(args.pfmel_train_mentions), "--max_eval_samples", "1"]
        minutes = train_minutes("finetune_linking", args, model_dir, options, os.path.join(work, "pfmel_train.log"), data)
    out = mel_link_metrics(model_dir, work, "pfmel", data, dense=False, images=image_options(args, data))
    out["train_minutes"] = minutes
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    """The README table: one row per linker."""
    s = result["stages"]
    images = f"images of {result['image_model']} in the trained stages" if result.get("use_images") else "text only"
    nil = f", {result['n_nil']} of them NIL" if result.get("n_nil") else ""
    lines = [
        f"{result['dataset']} {result['split']} ({result['n']} gold mentions, every one counted{nil}), whole KB of "
        f"{result['kb_size']} entities, {images}, all-MiniLM-L6-v2 backbone, {machine_info_line(result['machine'])}",
        "",
        "| linker | H@1 | H@3 | H@5 | H@10 | H@20 | MR | MRR | R@100 | train min | mentions/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def hits(r: dict[str, Any]) -> str:
        return " | ".join(_fmt(r.get(k)) for k in ("H@1", "H@3", "H@5", "H@10", "H@20")) + \
            f" | {_fmt(r.get('MR'), 1)} | {_fmt(r.get('MRR'))}"

    if "candidates" in s:
        c = s["candidates"]
        lines.append(f"| name rule: candidate recall {_fmt(c['name_rule']['candidate_recall'])}, mean "
                     f"{_fmt(c['name_rule']['mean_candidates'], 1)} candidates | - | - | - | - | - | - | - | - | - | - |")
        sh = c["shortest_name"]
        lines.append(f"| shortest matching name | {_fmt(sh['H@1'])} | - | - | - | - | - | - | - | - | "
                     f"{_fmt(sh['mentions_per_s'], 0)} |")
        b = c["bm25_rules"]
        lines.append(f"| BM25 + name rules (ZEMEL candidates) | {hits(b)} | {_fmt(b['H@100'])} | - | "
                     f"{_fmt(b['mentions_per_s'], 0)} |")
    rows = (
        ("st", "sentence-transformers all-MiniLM-L6-v2 encode, zero-shot"),
        ("zemel_zero_shot", "ZEMEL untrained (bi), `mel index` + `mel link`"),
        ("zemel", "ZEMEL trained (poly), `mel index` + `mel link`"),
        ("zemel_bm25", "ZEMEL trained (poly) with the paper's BM25 + rule negatives, `mel index` + `mel link`"),
        ("pfmel", "PFMEL NSP over name-rule candidates, `mel link`"),
        ("rerank", "retrieve-then-rerank: ZEMEL top-k + closest names, NSP reranker, `mel link --retriever`"),
    )
    for key, label in rows:
        if key in s:
            r = s[key]
            lines.append(f"| {label} | {hits(r)} | - | {_fmt(r.get('train_minutes'), 1)} | "
                         f"{_fmt(r.get('mentions_per_s'), 1)} |")
    for key, label in (("zemel", "ZEMEL trained on {} (transfer, no training here), `mel index` + `mel link`"),
                       ("rerank", "retrieve-then-rerank trained on {} (transfer, no training here), `mel link --retriever`")):
        r = s.get("transfer", {}).get(key)
        if r:
            lines.append(f"| {label.format(r.get('trained_on') or r.get('model'))} | {hits(r)} | - | - | "
                         f"{_fmt(r.get('mentions_per_s'), 1)} |")
    for alpha, r in s.get("mixing", {}).get("alphas", {}).items():
        lines.append(f"| ZEMEL trained, remixed to `--backbone_mixing {alpha}`, `mel index` + `mel link` | {hits(r)} | "
                     f"- | - | {_fmt(r.get('mentions_per_s'), 1)} |")
    lines.append("")
    lines.append(f"Total wall time {result['minutes']:.1f} min. Command: `{result['command']}`")
    return "\n".join(lines) + "\n"


def machine_info_line(info: dict[str, Any]) -> str:
    return f"{info.get('cpu_count')} cores ({info.get('cpu_capability')}, bf16 fast: {info.get('bf16_is_fast')})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="folder of the released corpus files (e.g. ../shared/data/wikimel)")
    parser.add_argument("--dataset", default="wikimel",
                        help="builder: wikimel, richpedia_mel, mimic_mel (WikiMEL / RichpediaMEL / WikiDiverse in the "
                             "layout MIMIC released: --data_dir is one dataset folder) or mel_jsonl")
    parser.add_argument("--image_model", default=None,
                        help="image encoder (checkpoint name or folder) of the trained stages and of mel index / mel "
                             "link, used when the corpus has images (default: every stage text only)")
    parser.add_argument("--split", default="dev", help="evaluated split")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (default: all but zemel_bm25)")
    parser.add_argument("--train_mentions", type=int, default=None, help="ZEMEL: first N train mentions (default all)")
    parser.add_argument("--zemel_epochs", type=float, default=2.0, help="ZEMEL training epochs")
    parser.add_argument("--zemel_lr", type=float, default=3e-5, help="ZEMEL learning rate")
    parser.add_argument("--zemel_model", default=None, help="evaluate this trained ZEMEL folder instead of training one")
    parser.add_argument("--pfmel_train_mentions", type=int, default=1500, help="PFMEL: first N train mentions")
    parser.add_argument("--pfmel_lr", type=float, default=3e-5, help="PFMEL fine-tuning learning rate")
    parser.add_argument("--pfmel_model", default=None, help="evaluate this fine-tuned PFMEL folder instead of training one")
    parser.add_argument("--rerank_train_mentions", type=int, default=1500, help="reranker: first N train mentions")
    parser.add_argument("--rerank_epochs", type=float, default=1.0, help="reranker epochs")
    parser.add_argument("--rerank_lr", type=float, default=3e-5, help="reranker learning rate")
    parser.add_argument("--rerank_list_size", type=int, default=8, help="reranker: candidates per training list")
    parser.add_argument("--rerank_k", type=int, default=10, help="dense candidates per mention for the reranker")
    parser.add_argument("--rerank_link_k", type=int, default=8,
                        help="mel link --retriever_k: dense candidates per mention at link time (8: same dev H@1 as "
                             "the 10 of training, 23.2 against 18.6 mentions/s; 0: the reranker's config.retriever_k)")
    parser.add_argument("--rerank_model", default=None, help="evaluate this reranker folder instead of training one")
    parser.add_argument("--transfer_from", default=None,
                        help="the --work_dir of a quality.py run on another dataset: its ZEMEL and reranker link this "
                             "dataset's dev split, untrained on it (adds the transfer stage)")
    parser.add_argument("--mixing", type=float, nargs="+", default=None, metavar="ALPHA",
                        help="link with the trained ZEMEL remixed to each --backbone_mixing ALPHA (adds the mixing "
                             "stage; the model: --zemel_model, else the zemel stage's)")
    parser.add_argument("--holdout_mentions", type=int, default=1000,
                        help="the last N train mentions: never trained on by ZEMEL or the reranker; they choose the "
                             "reranker's retriever-score weight (finetune_linking.py --calibration_mentions)")
    parser.add_argument("--dev_mentions", type=int, default=None, help="evaluate a seeded sample of N mentions (default all)")
    parser.add_argument("--budget_minutes", type=float, default=60.0, help="warn when the whole run exceeds this")
    parser.add_argument("--no_bf16", dest="bf16", action="store_false", help="train in fp32 (default: bf16 autocast)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default=None, help="where models, indexes and logs go (default: a temp dir)")
    parser.add_argument("--name", default=None, help="result file name (default quality_<dataset>)")
    parser.add_argument("--out_dir", default=RESULTS_DIR, help="where the result files go (default benchmarks/results)")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if args.transfer_from and "transfer" not in stages:
        stages.append("transfer")
    if args.mixing and "mixing" not in stages:
        stages.append("mixing")
    if "mixing" in stages and not args.mixing:
        parser.error("the mixing stage needs --mixing ALPHA [ALPHA ...]")
    bad = [a for a in args.mixing or () if not 0.0 <= a <= 1.0]
    if bad:
        parser.error(f"--mixing: each alpha must be in [0, 1] (1: the trained model, 0: the backbone), got {bad}")
    if "transfer" in stages and not (args.transfer_from and os.path.isdir(args.transfer_from)):
        parser.error(f"the transfer stage needs --transfer_from DIR, a quality.py --work_dir (got {args.transfer_from!r})")
    if not os.path.isdir(args.data_dir):
        parser.error(f"--data_dir {args.data_dir!r} is not a folder")
    import tempfile

    work = args.work_dir or tempfile.mkdtemp(prefix="mel_quality_")
    os.makedirs(work, exist_ok=True)
    start = time.perf_counter()
    data = prepare(args, work)
    result: dict[str, Any] = {
        "dataset": args.dataset, "split": args.split, "n": len(data["dev"]), "kb_size": len(data["kb"]),
        "n_nil": data["n_nil"], "use_images": data["use_images"], "image_model": args.image_model,
        "machine": machine_info(), "stages": {}, "work_dir": work,
        "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    for stage in stages:
        t0 = time.perf_counter()
        print(f"== {stage}", flush=True)
        if stage == "candidates":
            out = stage_candidates(data)
        elif stage == "st":
            out = stage_st(data)
        elif stage == "zemel_zero_shot":
            out = stage_zemel_zero_shot(data, work)
        elif stage == "zemel":
            out = stage_zemel(args, data, work)
        elif stage == "zemel_bm25":
            out = stage_zemel(args, data, work, negatives="bm25")
        elif stage == "pfmel":
            out = stage_pfmel(args, data, work)
        elif stage == "transfer":
            out = stage_transfer(args, data, work)
        elif stage == "mixing":
            out = stage_mixing(args, data, work)
        else:
            out = stage_rerank(args, data, work)
        out["stage_minutes"] = round((time.perf_counter() - t0) / 60, 2)
        result["stages"][stage] = out
        print(json.dumps({stage: out}, indent=1), flush=True)
    result["minutes"] = (time.perf_counter() - start) / 60
    if result["minutes"] > args.budget_minutes:
        print(f"WARNING: the run took {result['minutes']:.1f} min, over --budget_minutes {args.budget_minutes}", flush=True)
    name = args.name or f"quality_{args.dataset}"
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    md = markdown(result)
    with open(os.path.join(args.out_dir, f"{name}.md"), "w") as f:
        f.write(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
