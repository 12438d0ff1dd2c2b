"""The product linking path against the model-level fast path: ZEMEL (MiniLM, poly, text only), dense candidates.

A synthetic KB (default 18,880 entities, WikiMEL's size; names + descriptions of 8-40 words) is indexed with
``EntityIndex.build`` (what ``mel index`` runs) and saved; mentions (captions of 20-30 words) are linked to their top 5
entities by exact poly scoring against the whole KB:

* ``model-level fast path``: ``processor.encode_contexts`` + ``model.inference_context`` (bf16 where fast) and the
  poly score against the cached vectors, in length-sorted batches (``zemel_training.rank_rows_dense``: what training's
  negative mining and the ranking evaluation run);
* ``pipeline()``: ``pipeline("multimodal-entity-linking", kb=<index dir>, bf16=None, use_images=False)`` called on the
  list of mentions with ``candidates="dense"`` and ``batch_size``;
* ``mel link``: the command line on a JSONL file of the same mentions (its own ``seconds``: linking time after the
  model and index are loaded; the process start-up is reported beside it).

All three rank the same top 5 (checked: the share of mentions whose top 1 agrees is printed). The first two are timed
interleaved in one process (median of ``--repeats``); ``mel link`` runs once per repeat in a subprocess between them.

``--images``: every mention also carries an image (a generated 128x96 picture) and 2 boxes, i.e. 3 image regions
(whole image + boxes, the ZEMEL processor's region builder) through the visual stream and co-attention. The pipeline
gets them as raw images with an ``ImageFeatureExtractor`` of a tiny random 2048-d ResNet (so the timing is the
linking's, not a ResNet-50's, whose cost on CPU is its own; the tiny CNN's time is inside the pipeline's figure);
the model-level path gets the same extractor's region features precomputed. ``mel link`` is left out in this mode
(its image extractor is the pretrained ResNet-50, not available offline).

    python benchmarks/link_path.py --quick
    python benchmarks/link_path.py --size bert-base --n_entities 1000 --n_mentions 240 --batch_size 1 --images
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import statistics
import time

import torch
from common import base_parser, markdown_table, setup_threads, write_results
from synthetic import captions, entities, timeit_many, zemel_model

from modeling_mel import ZemelProcessor
from modeling_mel.backbones import load_tokenizer
from modeling_mel.entity_index import EntityIndex
from modeling_mel.hardware import bf16_is_fast
from modeling_mel.pipeline_entity_linking import TASK
from modeling_mel.zemel_training import rank_rows_dense

TARGETS = {"mel_link_over_fast_min": 0.8, "bert_base_ms_per_example_max": 60.0}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n_entities", type=int, default=None, help="KB size (default 18880; 2000 with --quick)")
    parser.add_argument("--n_mentions", type=int, default=None, help="mentions linked (default 2048; 128 with --quick)")
    parser.add_argument("--batch_size", type=int, default=32, help="mentions per batch on every path")
    parser.add_argument("--tiny", action="store_true", help="64 entities, 8 mentions, 1 repeat (tests: same code paths)")
    parser.add_argument("--size", choices=("minilm", "bert-base"), default="minilm",
                        help="ZEMEL text size: the embedded MiniLM, or a random BERT-base-size model (timing only; with "
                             "--batch_size 1 --n_entities 1000 it measures issue 14's per-example BERT-base latency)")
    parser.add_argument("--images", action="store_true",
                        help="mentions carry an image and 2 boxes (3 regions); pipeline() and the model-level path only")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    n_kb = args.n_entities or (64 if args.tiny else 2000 if args.quick else 18_880)
    n_m = args.n_mentions or (8 if args.tiny else 128 if args.quick else 2048)
    repeats = args.repeats or (1 if args.tiny else 3)
    from transformers import pipeline

    processor = ZemelProcessor(load_tokenizer("minilm"))
    model = zemel_model(args.size, processor)
    bf16 = bf16_is_fast("cpu")
    work = tempfile.mkdtemp(prefix="link_path-")
    model_dir, index_dir = os.path.join(work, "model"), os.path.join(work, "index")
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    kb = entities(n_kb, seed=7)
    start = time.perf_counter()
    index = EntityIndex.build(model, processor, kb, index_type="flat", progress=False, bf16=bf16)
    index_s = time.perf_counter() - start
    index.save(index_dir)
    mentions = [{"id": f"m{i}", "text": text, "mention": mention} for i, (text, mention) in enumerate(captions(n_m, seed=3))]
    input_path = os.path.join(work, "mentions.jsonl")
    with open(input_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(m) + "\n" for m in mentions)

    extractor, regions = None, None
    if args.images:
        import numpy as np
        from PIL import Image

        from modeling_mel.image_encoders import tiny_resnet_config
        from modeling_mel.image_features import ImageFeatureExtractor
        from modeling_mel.regions import regions_from_image

        extractor = ImageFeatureExtractor(config=tiny_resnet_config(2048))
        rng = np.random.default_rng(5)
        boxes = [[4, 4, 60, 80], [50, 10, 120, 90]]
        for m in mentions:
            m["image"], m["boxes"] = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)), boxes
        regions = [regions_from_image(m["image"], boxes, extractor) for m in mentions]
    pipe = pipeline(TASK, model=model, processor=processor, kb=index_dir, use_images=args.images, bf16=None,
                    image_extractor=extractor)
    vectors = torch.from_numpy(index.vectors)
    dtype = torch.bfloat16 if bf16 else None
    out: dict = {}

    def fast():
        if regions is None:
            out["fast"] = rank_rows_dense(model, processor, mentions, vectors, 5, batch_size=args.batch_size,
                                          autocast_dtype=dtype)[0]
            return
        top = []
        for s in range(0, n_m, args.batch_size):
            batch = mentions[s : s + args.batch_size]
            enc = processor.encode_contexts([m["text"] for m in batch], [m["mention"] for m in batch],
                                            regions=regions[s : s + args.batch_size], max_length=64)
            context = model.inference_context(**enc, autocast_dtype=dtype)
            with torch.inference_mode():
                top += model.score(context, vectors).topk(5, dim=1).indices.tolist()
        out["fast"] = top

    def pipe_path():
        out["pipeline"] = pipe([dict(m) for m in mentions], top_k=5, candidates="dense", batch_size=args.batch_size)

    paths = ("model-level fast path", "pipeline()") + (() if args.images else ("mel link",))
    times = {name: [] for name in paths}
    startup = []
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for _ in range(repeats):
        t = timeit_many({"model-level fast path": fast, "pipeline()": pipe_path}, repeats=1, warmup=0 if times["pipeline()"] else 1)
        for k, v in t.items():
            times[k].append(v)
        if args.images:
            continue
        output = os.path.join(work, "links.jsonl")
        if os.path.exists(output):
            os.remove(output)
        begin = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-c", "import sys; from modeling_mel.cli import main; sys.exit(main())", "link", "--model",
             model_dir, "--index", index_dir, "--input", input_path, "--output", output, "--no_images", "--top_k", "5",
             "--candidates", "dense", "--batch_size", str(args.batch_size)],
            capture_output=True, text=True, env=env, cwd=REPO,
        )
        wall = time.perf_counter() - begin
        if run.returncode != 0:
            raise RuntimeError(f"mel link failed: {run.stderr[-2000:]}")
        seconds = json.loads(run.stdout.strip().splitlines()[-1])["seconds"]
        times["mel link"].append(seconds)
        startup.append(wall - seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    ids = index.entity_ids
    fast_top = [ids[row[0]] for row in out["fast"]]
    pipe_top = [row[0]["entity_id"] for row in out["pipeline"]]
    agree = {"pipeline_top1_agrees_with_fast": sum(a == b for a, b in zip(pipe_top, fast_top)) / n_m}
    fast_t = med["model-level fast path"]
    rows = [{"path": k, "mentions": n_m, "seconds": v, "mentions/s": n_m / v, "speed vs fast path": fast_t / v}
            for k, v in med.items()]
    ratios = {"pipeline_over_fast": fast_t / med["pipeline()"], "index_entities_per_s": n_kb / index_s}
    targets = []
    if not args.images:
        with open(os.path.join(work, "links.jsonl"), encoding="utf-8") as f:
            cli_top = [json.loads(line)["predictions"][0]["entity_id"] for line in f]
        agree["mel_link_top1_agrees_with_fast"] = sum(a == b for a, b in zip(cli_top, fast_top)) / n_m
        ratios.update(mel_link_over_fast=fast_t / med["mel link"], mel_link_startup_s=statistics.median(startup))
        targets.append({"target": "mel link >= 0.8x the mentions/s of the model-level fast path",
                        "measured": ratios["mel_link_over_fast"],
                        "met": ratios["mel_link_over_fast"] >= TARGETS["mel_link_over_fast_min"]})
    modality = "3 image regions" if args.images else "text only"
    if args.size == "bert-base" and args.batch_size == 1:
        for path in [p for p in ("pipeline()", "mel link") if p in med]:
            ms = 1000 * med[path] / n_m
            targets.append({"target": f"BERT-base poly linking <= 60 ms per example through {path} ({n_kb} candidates, "
                                      f"{modality}, batch 1)", "measured": ms, "met": ms <= TARGETS["bert_base_ms_per_example_max"]})
    tables = {f"Linking {n_m} mentions against {n_kb} entities (ZEMEL {args.size} poly, {modality}, exact dense top 5, batch "
              f"{args.batch_size}, bf16 where fast: {bf16}), median of {repeats}": markdown_table(rows),
              "Agreement and start-up": markdown_table([{**agree, **({"mel link start-up s": ratios["mel_link_startup_s"]}
                                                                    if "mel_link_startup_s" in ratios else {}),
                                                         "mel index entities/s": ratios["index_entities_per_s"]}]),
              "Targets": markdown_table(targets)}
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    payload = {"rows": rows, "ratios": ratios, "agreement": agree, "targets": TARGETS, "target_check": targets,
               "n_entities": n_kb, "n_mentions": n_m, "bf16": bf16, "images": bool(args.images)}
    name = ("link_path" + ("_tiny" if args.tiny else "") + ("_bert_base" if args.size == "bert-base" else "")
            + ("_images" if args.images else ""))
    path = write_results(name, payload, tables, args.out_dir, args.quick)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
