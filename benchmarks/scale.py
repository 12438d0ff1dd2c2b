"""Per-mention linking latency and memory against KBs of 1k, 10k, 100k and 1M entities.

A mention (caption + 3 image regions) is linked in two stages: the real ZEMEL context encoder (embedded MiniLM, poly
mode, bf16 autocast, ``model.inference_context``) gives the query vector (its pooled output) and the poly codes; an ``EntityIndex``
(``modeling_mel.entity_index``) returns the top-k entities (exact ``IndexFlatIP`` below ``--ivf_threshold``
entities, ``IndexIVFFlat`` with inner product, ``nlist = 4 sqrt(N)``, trained on a sample, at or above it, ``nprobe``
tuned to the smallest value reaching ``--target_recall``); the top-k vectors are reranked with the poly head.

The KB side is synthetic: unit vectors of the model's hidden size drawn around 1000 random centres (uniform random
vectors have no structure for an approximate index to use; real entity embeddings are clustered). Recall@k of the
approximate index against exact search (``faiss.knn``) is measured on queries drawn the same way. All indexes stay
in memory and the per-mention latency of every KB size is timed interleaved in one loop (median); the growth ratio
is latency(N) / latency(1k). Memory = index bytes (FAISS vectors + ids + centroids; the ``EntityIndex`` keeps a
float32 copy of the vectors for the rerank besides) and the RSS growth of building it.

    python benchmarks/scale.py --quick          # 1k, 10k, 100k
    python benchmarks/scale.py                  # 1k, 10k, 100k, 1M
"""

from __future__ import annotations

import math
import time

import faiss
import numpy as np
import torch
from common import base_parser, markdown_table, setup_threads, write_results
from synthetic import captions, clustered_unit_vectors, regions, rss_bytes, timeit_many, zemel_model

from modeling_mel import ZemelProcessor
from modeling_mel.backbones import load_tokenizer
from modeling_mel.entity_index import EntityIndex, exact_recall

TARGETS = {"growth_1m_over_1k_max": 2.0}


def index_bytes(index: EntityIndex) -> int:
    """Bytes held by the FAISS index: vectors (+ ids and centroids for IVF)."""
    n, d = index.vectors.shape
    if index.config["index_type"] == "ivf":
        return n * (d * 4 + 8) + int(index.config["index_params"]["ivf_nlist"]) * d * 4
    return n * d * 4


def tune_nprobe(index: EntityIndex, queries: np.ndarray, exact: np.ndarray, k: int, target: float) -> tuple[int, float, list]:
    """Smallest nprobe (powers of two) whose recall@k reaches ``target``; returns (nprobe, recall, sweep)."""
    nlist = int(index.config["index_params"]["ivf_nlist"])
    sweep = []
    nprobe = 1
    while True:
        index.faiss_index.nprobe = nprobe
        recall = exact_recall(index.search(queries, k)[1], exact)
        sweep.append((nprobe, recall))
        if recall >= target or nprobe >= nlist:
            break
        nprobe = min(nprobe * 2, nlist)
    index.config["index_params"]["ivf_nprobe"] = nprobe
    return nprobe, recall, sweep


class MentionLinker:
    """Context encoder -> index search -> poly rerank of the top-k, one mention per call (cycling over mentions)."""

    def __init__(self, model, processor, index: EntityIndex, mentions: list[dict], k: int, dtype=torch.bfloat16):
        self.model, self.processor, self.index, self.mentions, self.k, self.dtype = model, processor, index, mentions, k, dtype
        self.i = 0
        self.parts = {"encode": 0.0, "search": 0.0, "rerank": 0.0, "n": 0}

    def __call__(self) -> torch.Tensor:
        m = self.mentions[self.i % len(self.mentions)]
        self.i += 1
        model = self.model
        t0 = time.perf_counter()
        with torch.inference_mode():
            enc = self.processor.encode_contexts([m["caption"]], [m["mention"]], regions=[m["region"]], max_length=64)
            r = int(enc["visual_attention_mask"].sum(-1).max())
            enc = {k: (v[:, :r] if k.startswith("visual_") else v) for k, v in enc.items()}
            context = model.inference_context(**enc, autocast_dtype=self.dtype)  # float32 outputs + poly codes
            query = torch.nn.functional.normalize(context.pooled_output, dim=-1)
            t1 = time.perf_counter()
            _, positions = self.index.search(query.numpy(), self.k)  # (1, k)
            t2 = time.perf_counter()
            pos = positions[0][positions[0] >= 0]
            cand = torch.from_numpy(self.index.vectors[pos])[None]  # (1, k, H)
            scores = model.score(context, cand)  # (1, k)
            best = pos[int(scores.argmax())]
        t3 = time.perf_counter()
        for name, dt in (("encode", t1 - t0), ("search", t2 - t1), ("rerank", t3 - t2)):
            self.parts[name] += dt
        self.parts["n"] += 1
        return best


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="KB sizes (default 1k..100k with --quick, 1k..1M)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model and KBs of 1k and 4k with IVF at 4k (tests)")
    parser.add_argument("--k", type=int, default=64, help="top-k retrieved and reranked")
    parser.add_argument("--ivf_threshold", type=int, default=100_000, help="IVF at or above this many entities")
    parser.add_argument("--target_recall", type=float, default=0.95, help="recall@k the nprobe tuning aims for")
    parser.add_argument("--n_queries", type=int, default=100, help="queries of the recall measurement")
    parser.add_argument("--n_mentions", type=int, default=8, help="distinct mentions cycled in the latency loop")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    if args.tiny:
        sizes, args.ivf_threshold = args.sizes or [1000, 4000], min(args.ivf_threshold, 4000)
    else:
        sizes = args.sizes or ([1000, 10_000, 100_000] if args.quick else [1000, 10_000, 100_000, 1_000_000])
    repeats = args.repeats or (10 if args.tiny else 15 if args.quick else 40)

    tokenizer = load_tokenizer("minilm")
    processor = ZemelProcessor(tokenizer)
    model = zemel_model("tiny" if args.tiny else "minilm", processor, scoring="poly")
    dim = model.config.hidden_size
    mentions = [{"caption": c, "mention": m, "region": regions(2, seed=i)}
                for i, (c, m) in enumerate(captions(args.n_mentions, seed=3))]
    rng = np.random.default_rng(0)
    queries = clustered_unit_vectors(args.n_queries, dim, rng)

    indexes, rows = {}, []
    for n in sizes:
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        vectors = clustered_unit_vectors(n, dim, rng)
        kind = "ivf" if n >= args.ivf_threshold else "flat"
        params = {"ivf_nlist": max(1, int(4 * math.sqrt(n)))} if kind == "ivf" else {}
        index = EntityIndex.from_vectors(vectors, index_type=kind, **params)
        build_s = time.perf_counter() - t0
        k = min(args.k, n)
        exact = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)[1]
        if kind == "ivf":
            nprobe, recall, sweep = tune_nprobe(index, queries, exact, k, args.target_recall)
        else:
            nprobe, recall, sweep = None, exact_recall(index.search(queries, k)[1], exact), []
        rss1 = rss_bytes()
        indexes[n] = index
        rows.append({"entities": n, "index": kind + (f" nlist={index.config['index_params']['ivf_nlist']} nprobe={nprobe}"
                                                      if kind == "ivf" else ""),
                     "recall@k": recall, "build s": build_s, "index MB": index_bytes(index) / 2**20,
                     "vectors MB": vectors.nbytes / 2**20, "RSS growth MB": (rss1 - rss0) / 2**20,
                     "nprobe sweep": " ".join(f"{p}:{r:.3f}" for p, r in sweep)})
        print(rows[-1], flush=True)
        del vectors

    linkers = {n: MentionLinker(model, processor, indexes[n], mentions, min(args.k, n)) for n in sizes}
    times = timeit_many(linkers, repeats=repeats, warmup=2)
    base = times[sizes[0]]
    for row in rows:
        n = row["entities"]
        parts = linkers[n].parts
        row.update({"ms/mention": times[n] * 1e3, f"growth vs {sizes[0]}": times[n] / base,
                    "encode ms": parts["encode"] / parts["n"] * 1e3, "search ms": parts["search"] / parts["n"] * 1e3,
                    "rerank ms": parts["rerank"] / parts["n"] * 1e3})
    ratios = {f"growth_{n}_over_{sizes[0]}": times[n] / base for n in sizes[1:]}
    ratios[f"search_ms_{sizes[-1]}"] = rows[-1]["search ms"]
    largest = sizes[-1]
    targets = [{"target": f"latency({largest}) <= 2x latency({sizes[0]})", "measured": times[largest] / base,
                "met": times[largest] / base <= TARGETS["growth_1m_over_1k_max"],
                "note": "" if largest >= 1_000_000 else "target is at 1M; this run stopped earlier"}]
    cols = ["entities", "index", "recall@k", "ms/mention", f"growth vs {sizes[0]}", "encode ms", "search ms",
            "rerank ms", "index MB", "vectors MB", "RSS growth MB", "build s"]
    tables = {f"Per-mention latency (context encoder bf16 + top-{args.k} search + poly rerank), interleaved median":
              markdown_table(rows, cols),
              "IVF nprobe sweep (nprobe:recall)": markdown_table([{"entities": r["entities"], "sweep": r["nprobe sweep"]}
                                                                  for r in rows if r["nprobe sweep"]]),
              "Targets": markdown_table(targets)}
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    payload = {"rows": rows, "ratios": ratios, "targets": TARGETS, "target_check": targets, "k": args.k,
               "ivf_threshold": args.ivf_threshold, "dim": dim, "vectors": "clustered synthetic unit vectors"}
    path = write_results("scale" + ("_tiny" if args.tiny else ""), payload, tables, args.out_dir, args.quick)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
