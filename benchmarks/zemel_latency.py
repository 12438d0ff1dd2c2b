"""ZEMEL linking latency per example against 1k cached candidates: bi, poly and cross (the paper's Table 3).

One context (a caption of 20-30 words with a mention, plus 3 image regions: the whole image and 2 boxes, given as
precomputed 2048-d features; feature extraction is benchmarked in ``features.py``) is linked against 1000 candidates:

* ``bi`` / ``poly``: ``ZemelPolyEncoder`` with a cached candidate matrix (1000, H): tokenise the context, run the
  context encoder, score (bi: dot products; poly: eq. 1-5). Both modes use the same weights (``config.scoring``).
* ``cross``: ``BertForMultimodalNSP`` (PFMEL's cross-encoder, same backbone size) scores all 1000 (context,
  candidate) pairs in batches (context + 3 image tokens | candidate name + description + 1 image token). At
  BERT-base size only a subset of pairs is timed and the time is scaled linearly to 1000 (printed).

Each mode runs a ``naive`` path (fp32, ``torch.no_grad``, regions padded to ``max_regions``, candidates of the cross
mode tokenised per call, unsorted batches) and a ``fast`` path (``model.link``: ``torch.inference_mode``, regions
padded to the real count, bf16 autocast; cross: cached candidate token ids, length-sorted batches, bf16 autocast),
plus ``fast-fp32`` (the fast path without bf16) and ``fast-1-thread`` (torch limited to one thread: on a busy machine
a batch-1 forward of many small ops waits at every thread barrier). ``link`` keeps a bf16 copy of the context
encoder's linear weights (plain autocast would cast ~130M weights again on every call at BERT-base size). All paths of a size are timed interleaved in one run (median after
warm-up). The accuracy cost of bf16 (max |score difference|, top-1 agreement over the 1000 candidates) and the
achieved GFLOP/s of the poly path (FLOPs counted from the shapes of every linear layer and attention product)
beside the measured matmul rate are printed too.

    python benchmarks/zemel_latency.py --quick

**Trained models on a real split** (``--eval_data``): Table 3 as the paper reports it, precision beside latency. Each
given model links the same mentions of the split (``--eval_mentions``, a seeded sample whose gold is in the KB)
against the same candidate set of ``--n_candidates`` entities (the golds of those mentions plus seeded random KB
entities), one mention per call through the product's ``pipeline()`` (bf16 where this machine runs it fast):
``--poly_model`` / ``--bi_model`` (ZEMEL models, e.g. ``mel train-zemel`` or ``mel zemel-ablations --keep_models``
output; exact scores against the cached candidates) and ``--cross_model`` (a trained cross-encoder: PFMEL's NSP
model fine-tuned on the same data, ``mel finetune`` output, scoring every (mention, candidate) pair). Printed per
model: H@1 over the mentions (= precision: every mention gets a prediction) and the median ms per mention; the
synthetic random-weight rows above are not run then. Text only unless ``--eval_images``:

    python benchmarks/zemel_latency.py --eval_data ../shared/data/wikimel --eval_dataset wikimel --eval_split dev \
        --poly_model runs/zemel_abl/m16-seed0 --bi_model runs/zemel_abl/bi-seed0 --cross_model runs/pfmel_wikimel
"""

from __future__ import annotations

import math

import torch
from common import base_parser, markdown_table, matmul_gflops, setup_threads, write_results
from synthetic import captions, entities, regions, text_config, timeit_many, zemel_model
from torch import nn

from modeling_mel import BertForMultimodalNSP, MultimodalNSPConfig, MultimodalNSPProcessor, ZemelProcessor
from modeling_mel.backbones import load_tokenizer, resolve_backbone
from modeling_mel.modeling_zemel import ZemelSelfAttention, _autocast
from modeling_mel.processing_multimodal_nsp import generic_entity_prompt, mention_prompt

BF16 = torch.bfloat16
TARGETS = {"poly_over_bi_max": 1.15, "cross_over_poly_min": 100.0, "bert_base_poly_ms_max": 60.0}


# -- poly / bi ---------------------------------------------------------------------------------------------------------
def context_inputs(processor: ZemelProcessor, caption: str, mention: str, region: dict, trim: bool) -> dict:
    enc = dict(processor.encode_contexts([caption], [mention], regions=[region], max_length=64))
    if trim:  # pad regions to the real count, not max_regions
        r = int(enc["visual_attention_mask"].sum(-1).max())
        for key in ("visual_features", "visual_spatial", "visual_attention_mask"):
            enc[key] = enc[key][:, :r]
    return enc


def link_naive(model, processor, caption, mention, region, cache) -> torch.Tensor:
    enc = context_inputs(processor, caption, mention, region, trim=False)
    with torch.no_grad():
        return model.score(model.encode_context(**enc), cache)


def link_fast(model, processor, caption, mention, region, cache, dtype=BF16) -> torch.Tensor:
    return model.link(cache, autocast_dtype=dtype, **context_inputs(processor, caption, mention, region, trim=True))


def with_scoring(model, scoring: str, fn):
    def run():
        old = model.config.scoring
        model.config.scoring = scoring
        try:
            return fn()
        finally:
            model.config.scoring = old

    return run


def one_thread(fn):
    """``fn`` with torch limited to one thread (batch-1 latency on a busy machine: no waiting at thread barriers)."""

    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def count_link_flops(model, enc: dict, n_candidates: int) -> int:
    """FLOPs of one ``link`` call: 2*in*out per row of every linear layer of the context encoder, 4*Tq*Tk*A per
    attention module, plus the scoring head (poly: eq. 1-5; bi: one dot product per candidate)."""
    total = [0]
    hooks = []

    def linear_hook(mod: nn.Linear, args, out):
        total[0] += 2 * mod.in_features * mod.out_features * (args[0].numel() // mod.in_features)

    def attention_hook(mod: ZemelSelfAttention, args, kwargs, out):
        hidden = args[0]
        ctx = args[2] if len(args) > 2 and args[2] is not None else kwargs.get("context_states", hidden)
        ctx = hidden if ctx is None else ctx
        total[0] += 4 * hidden.shape[0] * hidden.shape[-2] * ctx.shape[-2] * mod.all_head_size

    for mod in model.context_encoder.modules():
        if isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
        elif isinstance(mod, ZemelSelfAttention):
            hooks.append(mod.register_forward_hook(attention_hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            _, sequence, _ = model.context_encoder(**enc)
    finally:
        for h in hooks:
            h.remove()
    h, m, n = model.config.hidden_size, model.config.poly_m, sequence.shape[1]
    if model.config.scoring == "poly":
        total[0] += 4 * m * n * h + 4 * n_candidates * m * h + 2 * n_candidates * h
    else:
        total[0] += 2 * n_candidates * h
    return int(total[0])


def bf16_accuracy(model, processor, contexts, region, cache) -> dict:
    """bf16 autocast against fp32 over all candidates, for ``model.config.scoring``'s mode."""
    diffs, rel, top1, top10 = [], [], [], []
    for caption, mention in contexts:
        ref = link_fast(model, processor, caption, mention, region, cache, dtype=None)[0]
        low = link_fast(model, processor, caption, mention, region, cache, dtype=BF16)[0]
        diffs.append(float((low - ref).abs().max()))
        rel.append(diffs[-1] / float(ref.std() + 1e-12))
        top1.append(float(low.argmax() == ref.argmax()))
        k = min(10, ref.numel())
        top10.append(len(set(low.topk(k).indices.tolist()) & set(ref.topk(k).indices.tolist())) / k)
    return {"max_abs_diff": max(diffs), "max_diff_over_score_std": max(rel), "top1_agreement": sum(top1) / len(top1),
            "top10_overlap": sum(top10) / len(top10), "contexts": len(contexts)}


def candidate_cache(size: str, model, processor, kb: list[dict]) -> tuple[torch.Tensor, str]:
    """(K, H) cache: the candidate encoder's vectors (fast path), or for BERT-base random vectors with the norm of
    real ones (random weights anyway; encoding 1k entities at that size would dominate the run)."""
    if size != "bert-base":
        ids = processor.tokenize_candidates([e["name"] for e in kb], [e["description"] for e in kb], max_length=64)
        return model.fast_encode_candidates(ids, batch_size=64, autocast_dtype=BF16), "candidate encoder (bf16)"
    ids = processor.tokenize_candidates([e["name"] for e in kb[:16]], [e["description"] for e in kb[:16]])
    real = model.fast_encode_candidates(ids, autocast_dtype=BF16)
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(len(kb), real.shape[1], generator=g)
    cache = cache / cache.norm(dim=1, keepdim=True) * real.norm(dim=1).mean()
    return cache, "random vectors with the norm of 16 encoded candidates"


# -- cross ---------------------------------------------------------------------------------------------------------
def cross_model(size: str, tokenizer):
    torch.manual_seed(0)
    processor = MultimodalNSPProcessor(tokenizer, max_length=300, image_feature_dim=2048)
    base = text_config(size)
    if size == "minilm":
        model = BertForMultimodalNSP.from_pretrained(resolve_backbone("minilm"), image_feature_dim=2048,
                                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    else:
        model = BertForMultimodalNSP(MultimodalNSPConfig(**base, image_feature_dim=2048))
    processor.configure_model(model)
    return model.eval(), processor


class CrossLinker:
    """Scores one context against many candidates with the cross-encoder, naive or fast."""

    def __init__(self, model, processor, kb: list[dict], cand_images: torch.Tensor, batch_size: int):
        self.model, self.processor, self.kb, self.batch_size = model, processor, kb, batch_size
        self.cand_texts = [generic_entity_prompt(e["name"], e["description"]) for e in kb]
        self.cand_images = cand_images.numpy()
        self.cand_ids = processor._token_ids(self.cand_texts)  # cached tokenisation (fast path)

    def naive(self, caption: str, mention: str, region: dict) -> torch.Tensor:
        n = len(self.kb)
        a = mention_prompt(caption, mention)
        enc = self.processor([a] * n, self.cand_texts, images=[region["features"].numpy()] * n,
                             images_pair=[self.cand_images[i][None] for i in range(n)])
        scores = []
        with torch.no_grad():
            for s in range(0, n, self.batch_size):
                batch = {k: v[s : s + self.batch_size] for k, v in enc.items()}
                scores.append(self.model.link_scores(self.model(**batch).logits))
        return torch.cat(scores)

    def fast(self, caption: str, mention: str, region: dict, dtype=BF16) -> torch.Tensor:
        import numpy as np

        ids_a = self.processor._token_ids([mention_prompt(caption, mention)])[0]
        img_a = region["features"].numpy()
        feats = []
        for i, ids_b in enumerate(self.cand_ids):
            input_ids, types = self.processor.encode_pair(ids_a, ids_b, len(img_a), 1, self.processor.max_length)
            feats.append({"input_ids": input_ids, "token_type_ids": types, "attention_mask": [1] * len(input_ids),
                          "image_features": np.concatenate([img_a, self.cand_images[i][None]], 0)})
        order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
        scores = torch.empty(len(feats))
        with torch.inference_mode(), _autocast(dtype, "cpu"):
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                batch = self.processor.pad([feats[i] for i in idx])
                scores[torch.tensor(idx)] = self.model.link_scores(self.model(**batch).logits)
        return scores


# -- trained models on a real split ------------------------------------------------------------------------------
class AllCandidates:
    """A PFMEL pipeline ``retriever`` that returns every entity of the candidate set: the cross-encoder then scores
    all (mention, candidate) pairs (no name-rule cut), with its own scores only (no first-stage score)."""

    def __init__(self, entity_ids: list[str]):
        self.entity_ids = list(entity_ids)

    def retrieve(self, texts, mentions, k):
        return [list(self.entity_ids) for _ in texts]


def real_split_data(args) -> tuple[list[dict], list[dict]]:
    """(mentions, candidate KB): a seeded sample of ``--eval_mentions`` mentions of the split whose gold is in the KB,
    and ``--n_candidates`` entities (their golds first, then seeded random KB entities), shared by every model."""
    import random

    from modeling_mel.zemel_evaluation import load_zemel_data

    data = load_zemel_data(args.eval_dataset, args.eval_data, args.dataset_cache_dir)
    kb = data.full_kb
    pool = [r for r in data.split(args.eval_split) if r["entity_id"] in kb]
    n_mentions = args.eval_mentions or (20 if args.quick else 50)
    if not pool:
        raise SystemExit(f"zemel_latency.py: no {args.eval_split} mention of {args.eval_data} has its gold in the KB")
    rng = random.Random(args.seed)
    rows = sorted(rng.sample(pool, min(n_mentions, len(pool))), key=lambda r: str(r["id"]))
    golds = list(dict.fromkeys(r["entity_id"] for r in rows))
    if len(golds) > args.n_candidates:
        raise SystemExit(f"zemel_latency.py: {len(golds)} distinct golds exceed --n_candidates {args.n_candidates}")
    others = [e for e in kb if e not in set(golds)]
    ids = golds + rng.sample(others, min(args.n_candidates - len(golds), len(others)))
    entities = []
    for e in ids:
        ent = {"entity_id": e, "name": kb[e].get("name") or "", "description": kb[e].get("description") or ""}
        if args.eval_images and kb[e].get("images"):
            ent["images"] = list(kb[e]["images"])
        entities.append(ent)
    mentions = []
    for r in rows:
        item = {"text": r.get("text") or r.get("caption"), "mention": r["mention"], "entity_id": r["entity_id"]}
        if r.get("mention_start") is not None and r.get("mention_end") is not None:
            item["mention_start"], item["mention_end"] = int(r["mention_start"]), int(r["mention_end"])
        if args.eval_images and r.get("image") is not None:
            item["image"] = r["image"]
            if r.get("box") is not None:
                item["boxes"] = [list(r["box"])]
        mentions.append(item)
    return mentions, entities


def link_one_by_one(model_dir: str, mode: str, mentions: list[dict], entities: list[dict], args) -> dict:
    """Build the product's pipeline for ``model_dir`` over the candidate set, link each mention alone (timed, after
    one warm-up call) against all of it; H@1 and the median / mean ms per mention."""
    import statistics
    import time

    from transformers import pipeline

    from modeling_mel.cli_inference import load_model_and_processor
    from modeling_mel.knowledge_base import linking_method
    from modeling_mel.pipeline_entity_linking import MultimodalEntityLinkingPipeline

    model, processor = load_model_and_processor(model_dir, device=args.device)
    family = linking_method(model)
    if (mode == "cross") != (family == "cross"):
        raise SystemExit(f"zemel_latency.py: --{mode}_model {model_dir} is a {family} model "
                         f"({'a cross-encoder' if mode == 'cross' else 'a ZEMEL bi/poly model'} expected)")
    scoring = getattr(model.config, "scoring", "cross")
    if mode != "cross" and scoring != mode:
        print(f"note: --{mode}_model {model_dir} was trained with scoring={scoring!r}; it is scored as {mode!r}")
        model.config.scoring = mode
    init = {"kb": entities, "use_images": bool(args.eval_images), "bf16": None, "nil_threshold": None}
    if family == "cross":
        init["retriever"] = AllCandidates([e["entity_id"] for e in entities])
    t0 = time.perf_counter()
    pipe = pipeline("multimodal-entity-linking", model=model, processor=processor, device=args.device,
                    pipeline_class=MultimodalEntityLinkingPipeline, **init)
    setup_s = time.perf_counter() - t0
    call = {"top_k": 1, "num_candidates": len(entities)}
    if family == "dense":
        call["candidates"] = "dense"  # exact scores against the whole cached candidate set
    inputs = [{k: v for k, v in m.items() if k != "entity_id"} for m in mentions]
    pipe(inputs[0], **call)  # warm-up
    times, hits = [], 0
    for item, m in zip(inputs, mentions):
        start = time.perf_counter()
        out = pipe(item, **call)
        times.append(time.perf_counter() - start)
        hits += bool(out) and out[0]["entity_id"] == m["entity_id"]
    return {"mode": mode, "model": model_dir, "trained_scoring": scoring, "bf16": bool(pipe.bf16),
            "H@1": hits / len(mentions), "ms_median": 1e3 * statistics.median(times),
            "ms_mean": 1e3 * sum(times) / len(times), "mentions": len(mentions), "candidates": len(entities),
            "setup_s": setup_s}


def real_split_main(args, parser) -> dict:
    """Table 3 with trained models on a real split: precision (H@1) beside latency for each given model."""
    given = [(mode, path) for mode, path in (("bi", args.bi_model), ("poly", args.poly_model), ("cross", args.cross_model))
             if path]
    if args.eval_data is None or args.eval_dataset is None or not given:
        parser.error("the trained-model Table 3 needs --eval_data, --eval_dataset and at least one of --poly_model, "
                     "--bi_model, --cross_model")
    mentions, entities = real_split_data(args)
    print(f"{args.eval_dataset} {args.eval_split}: {len(mentions)} mentions against the same {len(entities)} candidates "
          f"({'with' if args.eval_images else 'without'} images); torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    for mode, path in given:
        row = link_one_by_one(path, mode, mentions, entities, args)
        print(mode, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows.append(row)
    table = [{"mode": r["mode"], "precision (H@1)": r["H@1"], "T ms/mention (median)": r["ms_median"],
              "mean ms": r["ms_mean"], "bf16": r["bf16"], "model": r["model"]} for r in rows]
    title = (f"Table 3 with trained models: {args.eval_dataset} {args.eval_split}, {len(mentions)} mentions, each "
             f"against the same {len(entities)} candidates, one mention per call (pipeline)")
    tables = {title: markdown_table(table)}
    print(f"\n{title}\n{tables[title]}")
    payload = {"rows": rows, "eval_dataset": args.eval_dataset, "eval_data": args.eval_data, "eval_split": args.eval_split,
               "mentions": len(mentions), "n_candidates": len(entities), "eval_images": bool(args.eval_images),
               "seed": args.seed}
    assert all(math.isfinite(r["H@1"]) and math.isfinite(r["ms_median"]) for r in rows)
    path = write_results("zemel_latency_trained", payload, tables, args.out_dir, args.quick)
    print(f"\nwrote {path}")
    return payload


# -- main ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["minilm", "bert-base", "tiny"], nargs="+", default=None,
                        help="model sizes (default: minilm and bert-base; tiny = a tiny random config for tests)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models only (tests: same code paths)")
    parser.add_argument("--n_candidates", type=int, default=1000)
    parser.add_argument("--cross_pairs", type=int, default=None,
                        help="cross pairs timed per size (scaled to n_candidates); default: all for minilm/tiny "
                             "(64 with --quick, 32 with --tiny), 128 for bert-base (16 with --quick)")
    parser.add_argument("--batch_size", type=int, default=64, help="cross-encoder batch size")
    real = parser.add_argument_group("trained models on a real split (precision beside latency)")
    real.add_argument("--eval_data", default=None, help="corpus folder: run the trained-model Table 3 on its split")
    real.add_argument("--eval_dataset", default=None, help="corpus kind of --eval_data (wikimel, zemeld, mel_jsonl, ...)")
    real.add_argument("--eval_split", default="dev", help="split whose mentions are linked")
    real.add_argument("--eval_mentions", type=int, default=None, help="mentions linked (default 50; 20 with --quick)")
    real.add_argument("--eval_images", action="store_true", help="use the corpus images (default: text only)")
    real.add_argument("--dataset_cache_dir", default=None, help="Arrow cache of the corpus builder")
    real.add_argument("--poly_model", default=None, help="trained ZEMEL model scored as the poly row")
    real.add_argument("--bi_model", default=None, help="trained ZEMEL model scored as the bi row")
    real.add_argument("--cross_model", default=None,
                      help="trained cross-encoder: a PFMEL NSP linker fine-tuned on the same data (mel finetune)")
    real.add_argument("--seed", type=int, default=0, help="seed of the mention sample and the random candidates")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    if args.eval_data is not None or any((args.poly_model, args.bi_model, args.cross_model)):
        return real_split_main(args, parser)
    sizes = ["tiny"] if args.tiny else (args.size or ["minilm", "bert-base"])
    repeats = args.repeats or (2 if args.quick else 5)  # cross loop
    repeats_short = 3 * repeats if args.tiny else (10 if args.quick else 30)  # poly / bi loop
    n_cand = args.n_candidates
    n_acc = 2 if args.tiny else (4 if args.quick else 16)

    fp32_rate, bf16_rate = matmul_gflops(torch.float32), matmul_gflops(BF16)
    print(f"matmul: fp32 {fp32_rate:.0f} GFLOP/s, bf16 {bf16_rate:.0f} GFLOP/s; torch threads {torch.get_num_threads()}")
    tokenizer = load_tokenizer("minilm")
    proc10 = ZemelProcessor(tokenizer)  # max_regions=10 (default): the naive path pads to it
    proc3 = proc10  # the fast path uses the same processor and trims the regions to the real count
    kb = entities(n_cand, seed=1)
    contexts = captions(max(n_acc, 1), seed=2)
    caption, mention = contexts[0]
    region = regions(2)
    g = torch.Generator().manual_seed(5)
    cand_images = torch.rand(n_cand, 2048, generator=g)

    rows, ratios, accuracy, flops_rows = [], {}, {}, []
    for size in sizes:
        model = zemel_model(size, proc10, scoring="poly")
        cache, cache_kind = candidate_cache(size, model, proc10, kb)
        cmodel, cproc = cross_model(size, tokenizer)
        n_cross = args.cross_pairs or {"bert-base": 16 if args.quick else 128,
                                       "tiny": 32}.get(size, 64 if args.quick else n_cand)
        n_cross = min(n_cross, n_cand)
        cross = CrossLinker(cmodel, cproc, kb[:n_cross], cand_images[:n_cross], args.batch_size)
        scale = n_cand / n_cross

        poly_fast = with_scoring(model, "poly", lambda: link_fast(model, proc3, caption, mention, region, cache))
        fns = {
            ("poly", "naive"): with_scoring(model, "poly", lambda: link_naive(model, proc10, caption, mention, region, cache)),
            ("poly", "fast-fp32"): with_scoring(model, "poly", lambda: link_fast(model, proc3, caption, mention, region, cache, None)),
            ("poly", "fast"): poly_fast,
            ("bi", "naive"): with_scoring(model, "bi", lambda: link_naive(model, proc10, caption, mention, region, cache)),
            ("bi", "fast-fp32"): with_scoring(model, "bi", lambda: link_fast(model, proc3, caption, mention, region, cache, None)),
            ("bi", "fast"): with_scoring(model, "bi", lambda: link_fast(model, proc3, caption, mention, region, cache)),
            ("poly", "fast-1-thread"): one_thread(poly_fast),
            ("bi", "fast-1-thread"): one_thread(with_scoring(model, "bi", lambda: link_fast(model, proc3, caption, mention, region, cache))),
        }
        times = timeit_many(fns, repeats=repeats_short, warmup=2)
        # the cross runs take most of the time: their own interleaved loop, with the fast poly path in it for the ratio
        cross_fns = {
            ("cross", "naive"): lambda: cross.naive(caption, mention, region),
            ("cross", "fast-fp32"): lambda: cross.fast(caption, mention, region, None),
            ("cross", "fast"): lambda: cross.fast(caption, mention, region),
            ("poly", "fast, cross loop"): poly_fast,
        }
        cross_times = timeit_many(cross_fns, repeats=repeats, warmup=1)
        poly_in_cross_loop = cross_times.pop(("poly", "fast, cross loop")) * 1e3
        times.update(cross_times)
        ms = {k: v * 1e3 * (scale if k[0] == "cross" else 1.0) for k, v in times.items()}
        for (mode, path), t in ms.items():
            rows.append({"size": size, "mode": mode, "path": path, "candidates": n_cand,
                         "T_cpu ms/example": t, "speed-up vs naive": ms[(mode, "naive")] / t,
                         "note": f"scaled from {n_cross} pairs" if mode == "cross" and scale != 1 else ""})
        r = {
            "poly_over_bi": ms[("poly", "fast")] / ms[("bi", "fast")],
            "poly_over_bi_fp32": ms[("poly", "fast-fp32")] / ms[("bi", "fast-fp32")],
            "poly_over_bi_naive": ms[("poly", "naive")] / ms[("bi", "naive")],
            "cross_over_poly": ms[("cross", "fast")] / ms[("poly", "fast")],
            "cross_over_poly_same_loop": ms[("cross", "fast")] / poly_in_cross_loop,
            "poly_over_bi_1_thread": ms[("poly", "fast-1-thread")] / ms[("bi", "fast-1-thread")],
            "poly_fast_over_fast_1_thread": ms[("poly", "fast")] / ms[("poly", "fast-1-thread")],
            "cross_over_poly_naive": ms[("cross", "naive")] / ms[("poly", "naive")],
            "poly_speedup_naive_over_fast": ms[("poly", "naive")] / ms[("poly", "fast")],
            "cross_speedup_naive_over_fast": ms[("cross", "naive")] / ms[("cross", "fast")],
            "poly_ms": ms[("poly", "fast")],
            "poly_naive_ms": ms[("poly", "naive")],
            "poly_1_thread_ms": ms[("poly", "fast-1-thread")],
            "cross_pairs_timed": n_cross,
        }
        enc = context_inputs(proc3, caption, mention, region, trim=True)
        flops = count_link_flops(model, enc, n_cand)
        r["poly_gflop_per_example"] = flops / 1e9
        r["poly_gflops_achieved"] = flops / (ms[("poly", "fast")] / 1e3) / 1e9
        r["poly_gflops_achieved_fp32"] = flops / (ms[("poly", "fast-fp32")] / 1e3) / 1e9
        r["poly_gflops_achieved_1_thread"] = flops / (ms[("poly", "fast-1-thread")] / 1e3) / 1e9
        flops_rows.append({"size": size, "tokens+regions": int(enc["input_ids"].shape[1] + enc["visual_features"].shape[1]),
                           "GFLOP/example": flops / 1e9,
                           "fast bf16 GFLOP/s": r["poly_gflops_achieved"], "fast fp32 GFLOP/s": r["poly_gflops_achieved_fp32"],
                           "fast 1-thread GFLOP/s": r["poly_gflops_achieved_1_thread"],
                           "matmul bf16 GFLOP/s": bf16_rate, "matmul fp32 GFLOP/s": fp32_rate,
                           "bf16 share of matmul rate": r["poly_gflops_achieved"] / bf16_rate})
        ratios[size] = r

        acc = {}
        for mode in ("poly", "bi"):
            acc[mode] = with_scoring(model, mode, lambda: bf16_accuracy(model, proc3, contexts[:n_acc], region, cache))()
        ref, low = cross.fast(caption, mention, region, None), cross.fast(caption, mention, region)
        acc["cross"] = {"max_abs_diff": float((low - ref).abs().max()),
                        "max_diff_over_score_std": float((low - ref).abs().max() / (ref.std() + 1e-12)),
                        "top1_agreement": float(low.argmax() == ref.argmax()), "contexts": 1, "pairs": n_cross}
        accuracy[size] = acc
        accuracy[size]["cache"] = cache_kind
        for mode in ("poly", "bi", "cross"):
            print(size, mode, {p: round(t, 2) for (m, p), t in ms.items() if m == mode}, "ms", flush=True)
        print(size, {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
        print(size, "bf16 accuracy", acc, flush=True)
        del model, cmodel, cross, cache

    table3 = [{"size": row["size"], "mode": row["mode"], "T_cpu (fast)": f"{row['T_cpu ms/example']:.1f} ms",
               "naive": f"{ms_naive:.1f} ms", "note": row["note"]}
              for row in rows if row["path"] == "fast"
              for ms_naive in [next(x["T_cpu ms/example"] for x in rows
                                    if x["size"] == row["size"] and x["mode"] == row["mode"] and x["path"] == "naive")]]
    ratio_rows = [{"size": s, "poly/bi": r["poly_over_bi"], "poly/bi fp32": r["poly_over_bi_fp32"],
                   "cross/poly": r["cross_over_poly"], "poly naive/fast": r["poly_speedup_naive_over_fast"],
                   "cross naive/fast": r["cross_speedup_naive_over_fast"], "poly ms": r["poly_ms"]}
                  for s, r in ratios.items()]
    acc_rows = [{"size": s, "mode": m, "max abs diff": a[m]["max_abs_diff"],
                 "max diff / score std": a[m]["max_diff_over_score_std"], "top-1 agreement": a[m]["top1_agreement"],
                 "top-10 overlap": a[m].get("top10_overlap", ""), "contexts": a[m]["contexts"]}
                for s, a in accuracy.items() for m in ("poly", "bi", "cross")]
    targets = []
    for s, r in ratios.items():
        targets.append({"size": s, "target": "poly/bi <= 1.15", "measured": r["poly_over_bi"],
                        "met": r["poly_over_bi"] <= TARGETS["poly_over_bi_max"]})
        targets.append({"size": s, "target": "poly/bi <= 1.15 (1 thread)", "measured": r["poly_over_bi_1_thread"],
                        "met": r["poly_over_bi_1_thread"] <= TARGETS["poly_over_bi_max"]})
        targets.append({"size": s, "target": "cross/poly >= 100", "measured": r["cross_over_poly"],
                        "met": r["cross_over_poly"] >= TARGETS["cross_over_poly_min"]})
        if s == "bert-base":
            targets.append({"size": s, "target": "poly <= 60 ms/example", "measured": r["poly_ms"],
                            "met": r["poly_ms"] <= TARGETS["bert_base_poly_ms_max"]})
            t1 = r["poly_1_thread_ms"]
            targets.append({"size": s, "target": "poly <= 60 ms/example (1 thread)", "measured": t1,
                            "met": t1 <= TARGETS["bert_base_poly_ms_max"]})
    tables = {
        f"Table 3: time per example against {n_cand} candidates (fast = bf16 autocast + inference_mode; "
        f"naive = fp32, no_grad, padded regions, per-call tokenisation)": markdown_table(table3),
        "All paths (interleaved, median)": markdown_table(
            rows, ["size", "mode", "path", "T_cpu ms/example", "speed-up vs naive", "note"]),
        "Ratios (same run)": markdown_table(ratio_rows),
        "Achieved GFLOP/s of the poly linking path vs measured matmul rate": markdown_table(flops_rows),
        f"Accuracy cost of bf16 autocast (vs fp32, over {n_cand} candidates; cross: over the timed pairs)": markdown_table(acc_rows),
        "Targets": markdown_table(targets),
    }
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    payload = {"rows": rows, "ratios": ratios, "accuracy_bf16": accuracy, "flops": flops_rows,
               "matmul_gflops": {"fp32": fp32_rate, "bf16": bf16_rate}, "targets": TARGETS, "target_check": targets,
               "n_candidates": n_cand, "regions": "whole image + 2 boxes, precomputed 2048-d features"}
    assert all(math.isfinite(v) for r in ratios.values() for v in r.values())
    path = write_results("zemel_latency" + ("_tiny" if args.tiny else ""), payload, tables, args.out_dir, args.quick)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
