"""Per-mention linking latency, recall@64, index memory, RSS and build time against KBs of 1k up to 10M entities, for
flat / IVF / IVF-PQ / IVF-SQ8 indexes (and HNSW-SQ8 on request).

A mention (caption + 2 image regions) is linked in two stages: the real ZEMEL context encoder (embedded MiniLM, poly
mode, bf16 autocast, ``model.inference_context``) gives the query vector (its pooled output, normalised) and the poly
codes; the FAISS index returns the top-k entities, and their vectors are reranked with the poly head: the exact
float32 vectors where the KB is held in memory, vectors decoded from the compressed codes (``reconstruct_batch``)
where it is streamed (sizes >= ``--stream_from``: only the codes exist, as in an index saved with
``--store_vectors no``).

Real-shaped KB vectors: ``--base_entities`` generated entity texts (``synthetic.entities``: name + description) are
encoded with the same model's candidate encoder (``encode_entities``, the one KB encoder of ``mel index``). These
base vectors are clustered (k-means, 64 clusters) and each KB vector is a base vector drawn at random plus Gaussian
noise with its cluster's per-dimension standard deviation times ``--noise``; the KB is generated chunk by chunk
from a seed (the same vectors on every pass), so a 10M KB is never held as float32. Recall@k is measured against
exact inner product search (``faiss.knn`` over the chunks) for two query sets: ``recall@64``, ``--n_queries``
entity-like queries (fresh draws of the KB distribution, not in the KB), and ``recall@64 mention q``, the model's
context vectors of ``--n_queries`` generated captions (what ``mel link`` searches with). IVF ``nprobe`` is tuned as
``mel index`` tunes it (``--tune_on mention``, default): the smallest power of two whose recall reaches
``--target_recall`` on a third, separate set, the model's context vectors of base entities written as mention
contexts (``"<name>. <description>"``, the product's ``mention_like_queries``); ``--tune_on entity`` tunes on the
entity-like queries instead. ``--model DIR``: a trained ZEMEL folder (e.g. the one ``benchmarks/quality.py`` trains
on WikiMEL) gives the base vectors and the queries; without it, the embedded MiniLM with untrained ZEMEL heads.
``nlist``: the power of two nearest ``sqrt(N)``, at most ``--max_nlist``. The recall target (>= 0.95) is checked on
the mention queries, the ones ``mel link`` searches with; the entity-like recall is shown beside it.

Latency: each index is timed interleaved with the 1k flat index (median of ``--repeats``), so ``growth`` is a ratio
within one pair of loops. Memory: the FAISS index's own bytes (codes, ids, direct map, centroids, tables), the float32
vectors beside it for the exact rerank, and the RSS growth of building it.

    python benchmarks/scale.py --quick          # 1k, 10k, 100k
    python benchmarks/scale.py                  # 1k, 10k, 100k, 1M, 10M (10M: codes only, streamed)
    python benchmarks/scale.py --tiny --quick   # tiny random model, 1k and 4k (tests)
"""

from __future__ import annotations

import gc
import math
import time

import faiss
import numpy as np
import torch
from common import base_parser, markdown_table, setup_threads, write_results
from synthetic import captions, entities, regions, rss_bytes, timeit_many, zemel_model

from modeling_mel import ZemelProcessor
from modeling_mel.backbones import load_tokenizer
from modeling_mel.hardware import bf16_is_fast
from modeling_mel.faiss_index import (
    NPROBE_TARGET_RECALL,
    FaissIndexConfig,
    _exact_topk,
    build_faiss_from_chunks,
    exact_recall,
    faiss_index_bytes,
)
from modeling_mel.knowledge_base import encode_entities

TARGETS = {"growth_max": 2.0, "memory_gib_max": 4.0, "recall_min": 0.95, "ivfpq_memory_over_flat_max": 1 / 8}
CHUNK = 100_000


class KBGenerator:
    """KB vectors around real encoded entity vectors: base vector + cluster-shaped Gaussian noise, by seeded chunks."""

    def __init__(self, base: np.ndarray, noise: float, n_clusters: int = 64, seed: int = 0):
        self.base, self.noise, self.seed = base.astype(np.float32), float(noise), int(seed)
        n_clusters = max(1, min(n_clusters, len(base) // 20))
        km = faiss.Kmeans(base.shape[1], n_clusters, niter=20, seed=seed, verbose=False)
        km.train(self.base)
        assign = km.index.search(self.base, 1)[1][:, 0]
        std = np.stack([self.base[assign == c].std(0) if (assign == c).sum() > 1 else self.base.std(0)
                        for c in range(n_clusters)])
        self.scale = (self.noise * std[assign]).astype(np.float32)  # (E, H): the noise scale of each base vector
        self.dim = base.shape[1]

    def chunk(self, i: int, count: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, i))
        pick = rng.integers(0, len(self.base), count)
        return self.base[pick] + self.scale[pick] * rng.standard_normal((count, self.dim), dtype=np.float32)

    def chunks(self, n: int):
        return lambda: (self.chunk(i, min(CHUNK, n - s)) for i, s in enumerate(range(0, n, CHUNK)))


def pick_nlist(n: int, max_nlist: int) -> int:
    return max(1, min(n // 39, max_nlist, 2 ** round(math.log2(math.sqrt(n)))))


def tune_nprobe(index, queries: np.ndarray, gold: np.ndarray, k: int, target: float) -> tuple[int, float, list]:
    """Smallest nprobe (powers of two) whose recall@k reaches ``target``, or, when the codes cap the recall below it
    (PQ), the nprobe (from 8 on) where doubling stops gaining (< 0.002); returns (nprobe, recall, sweep)."""
    nlist = int(index.nlist)
    sweep, nprobe = [], 1
    while True:
        index.nprobe = nprobe
        recall = exact_recall(index.search(queries, k)[1], gold)
        sweep.append((nprobe, recall))
        if recall >= target or nprobe >= nlist:
            break
        if nprobe >= 8 and recall - sweep[-2][1] < 0.002:  # plateau: the codes, not the lists, limit recall
            nprobe, recall = sweep[-2]
            break
        nprobe = min(nprobe * 2, nlist)
    index.nprobe = nprobe
    return nprobe, recall, sweep


class Searcher:
    """A FAISS index plus the rows the rerank reads: exact vectors, or decoded from the codes."""

    def __init__(self, index, vectors: np.ndarray | None):
        self.index, self.exact = index, vectors
        if vectors is None and isinstance(faiss.downcast_index(index), faiss.IndexIVF):
            faiss.downcast_index(index).make_direct_map()

    def search(self, queries: np.ndarray, k: int):
        return self.index.search(queries, k)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        return self.exact[positions] if self.exact is not None else self.index.reconstruct_batch(positions)


class MentionLinker:
    """Context encoder -> index search -> poly rerank of the top-k, one mention per call (cycling over mentions)."""

    def __init__(self, model, processor, searcher: Searcher, mentions: list[dict], k: int, dtype=torch.bfloat16):
        self.model, self.processor, self.searcher, self.mentions, self.k, self.dtype = model, processor, searcher, mentions, k, dtype
        self.i = 0
        self.parts = {"encode": 0.0, "search": 0.0, "rerank": 0.0, "n": 0}

    def __call__(self):
        m = self.mentions[self.i % len(self.mentions)]
        self.i += 1
        t0 = time.perf_counter()
        with torch.inference_mode():
            context = encode_mentions(self.model, self.processor, [m], self.dtype)
            query = torch.nn.functional.normalize(context.pooled_output, dim=-1)
            t1 = time.perf_counter()
            _, positions = self.searcher.search(query.numpy(), self.k)  # (1, k)
            t2 = time.perf_counter()
            pos = positions[0][positions[0] >= 0]
            cand = torch.from_numpy(np.ascontiguousarray(self.searcher.rows(pos)))[None]  # (1, k, H)
            scores = self.model.score(context, cand)  # (1, k)
            best = pos[int(scores.argmax())]
        t3 = time.perf_counter()
        for name, dt in (("encode", t1 - t0), ("search", t2 - t1), ("rerank", t3 - t2)):
            self.parts[name] += dt
        self.parts["n"] += 1
        return best


def encode_mentions(model, processor, batch: list[dict], dtype):
    enc = processor.encode_contexts([m["caption"] for m in batch], [m["mention"] for m in batch],
                                    regions=[m["region"] for m in batch], max_length=64)
    r = int(enc["visual_attention_mask"].sum(-1).max())
    enc = {k: (v[:, :r] if k.startswith("visual_") else v) for k, v in enc.items()}
    return model.inference_context(**enc, autocast_dtype=dtype)


def query_vectors(model, processor, batch: list[dict], dtype, step: int = 16) -> np.ndarray:
    """Normalised pooled context vectors ``(len(batch), H)`` of mentions, what the latency loop searches with."""
    with torch.inference_mode():
        pooled = torch.cat([encode_mentions(model, processor, batch[s : s + step], dtype).pooled_output
                            for s in range(0, len(batch), step)])
    return np.ascontiguousarray(torch.nn.functional.normalize(pooled.float(), dim=-1).numpy())


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="KB sizes (default 1k..100k with --quick, 1k..10M)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model, 300 base entities, KBs of 1k and 4k (tests)")
    parser.add_argument("--types", nargs="+", default=["flat", "ivf", "ivfpq", "ivfsq8"],
                        choices=["flat", "ivf", "ivfpq", "ivfsq8", "hnswsq8"], help="index types measured at each size")
    parser.add_argument("--k", type=int, default=64, help="top-k retrieved and reranked (recall@k)")
    parser.add_argument("--target_recall", type=float, default=NPROBE_TARGET_RECALL,
                        help="recall@k the nprobe tuning aims for on its tuning queries (default: mel index's, 0.97)")
    parser.add_argument("--n_queries", type=int, default=100, help="mention queries of the recall measurement")
    parser.add_argument("--n_mentions", type=int, default=8, help="distinct mentions cycled in the latency loop")
    parser.add_argument("--base_entities", type=int, default=None, help="entity texts encoded by the model (default 4000)")
    parser.add_argument("--noise", type=float, default=0.5, help="noise around each base vector, in cluster std units")
    parser.add_argument("--stream_from", type=int, default=2_000_000,
                        help="from this size the KB is streamed: compressed codes only (no flat/IVF-flat, rerank on codes)")
    parser.add_argument("--max_nlist", type=int, default=2048, help="upper bound of IVF lists")
    parser.add_argument("--model", default=None,
                        help="trained ZEMEL folder giving the vectors and queries (default: embedded MiniLM, untrained heads)")
    parser.add_argument("--tune_on", choices=["mention", "entity"], default="mention",
                        help="queries the IVF nprobe is tuned on: mention-like contexts of KB entities (as `mel index`) "
                             "or entity-like draws")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    if args.tiny:
        sizes = args.sizes or [1000, 4000]
        args.base_entities = args.base_entities or 300
    else:
        sizes = args.sizes or ([1000, 10_000, 100_000] if args.quick else [1000, 10_000, 100_000, 1_000_000, 10_000_000])
    args.base_entities = args.base_entities or 4000
    repeats = args.repeats or (10 if args.tiny else 15 if args.quick else 30)
    dtype = torch.bfloat16 if bf16_is_fast("cpu") else None  # as `mel link` does on this machine

    if args.model:
        from modeling_mel import ZemelPolyEncoder

        processor = ZemelProcessor.from_pretrained(args.model)
        model = ZemelPolyEncoder.from_pretrained(args.model).eval()
    else:
        processor = ZemelProcessor(load_tokenizer("minilm"))
        model = zemel_model("tiny" if args.tiny else "minilm", processor, scoring="poly")
    dim = model.config.hidden_size
    t0 = time.perf_counter()
    base_kb = entities(args.base_entities, seed=7)
    base = encode_entities(model, processor, base_kb, batch_size=64, bf16=dtype is not None).numpy()
    encode_s = time.perf_counter() - t0
    gen = KBGenerator(base, args.noise)
    print(f"encoded {len(base)} base entities in {encode_s:.1f} s; norms {np.linalg.norm(base, axis=1).mean():.2f}", flush=True)
    mentions = [{"caption": c, "mention": m, "region": regions(2, seed=i)}
                for i, (c, m) in enumerate(captions(max(args.n_mentions, args.n_queries), seed=3))]
    mention_queries = query_vectors(model, processor, mentions[: args.n_queries], dtype)
    # the tuning set: base entities written as mention contexts (the name as the mention), as `mel index` tunes
    picked = np.random.default_rng(11).choice(len(base_kb), size=min(args.n_queries, len(base_kb)), replace=False)
    like = [{"caption": f"{base_kb[i]['name']}. {base_kb[i]['description']}", "mention": base_kb[i]["name"],
             "region": regions(2, seed=int(i))} for i in picked.tolist()]
    tuning_queries = query_vectors(model, processor, like, dtype)
    # entity-like queries: fresh draws of the KB distribution (a chunk number no KB chunk uses), i.e. what a trained
    # model's context vector is, close to its gold entity's vector; the untrained context head's vectors are not
    queries = gen.chunk(10**6, args.n_queries)
    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True))
    mentions = mentions[: args.n_mentions]

    build_threads = faiss.omp_get_max_threads()
    rows, failures = [], []
    base_linker = None

    def report(final: bool) -> dict:
        """Tables, targets and results files of the rows so far (rewritten after every size: a run stopped at a
        larger size keeps the figures of the sizes it finished)."""
        if not final:
            print(f"\n(partial results after {rows[-1]['entities'] if rows else 0} entities)")
        growth = f"growth vs {sizes[0]}"
        rk = f"recall@{args.k}"
        largest = max(r["entities"] for r in rows)
        ratios = {}
        for r in rows:
            ratios[f"growth_{r['entities']}_{r['kind']}"] = r[growth]
            ratios[f"recall_{r['entities']}_{r['kind']}"] = r[rk]
            ratios[f"memory_over_flat_{r['entities']}_{r['kind']}"] = r["memory / flat"]
        targets = []
        for r in rows:
            if r["entities"] != largest:
                continue
            gib = (r["index MB"] + r["rerank vectors MB"]) / 1024
            recall = r[f"{rk} mention q"]  # the queries `mel link` searches with (the entity-like draws are beside)
            met = gib <= TARGETS["memory_gib_max"] and r[growth] <= TARGETS["growth_max"] and recall >= TARGETS["recall_min"]
            targets.append({"target": f"{largest}: memory <= 4 GiB, latency <= 2x latency({sizes[0]}), recall@64 >= 0.95 "
                                      "on mention queries (entity-like / mention shown)",
                            "index": r["index"], "measured": f"{gib:.2f} GiB, {r[growth]:.2f}x, {r[rk]:.3f} / "
                                                             f"{r[f'{rk} mention q']:.3f}", "met": met})
        at_1m = [r for r in rows if r["entities"] == 1_000_000 and r["kind"] == "ivfpq"]
        for r in at_1m:
            targets.append({"target": "1M: IVF-PQ memory <= 1/8 of flat", "index": r["index"],
                            "measured": f"{r['memory / flat']:.3f}", "met": r["memory / flat"] <= TARGETS["ivfpq_memory_over_flat_max"]})
        cols = ["entities", "index", "rerank on", rk, f"{rk} mention q", "ms/mention", growth, "search ms", "rerank ms", "index MB", "flat MB",
                "memory / flat", "rerank vectors MB", "RSS growth MB", "build s"]
        tables = {f"Per-mention latency (context encoder bf16 + top-{args.k} search + poly rerank), recall@{args.k} vs exact, "
                  "memory": markdown_table(rows, cols),
                  f"IVF nprobe sweep on the tuning queries ({args.tune_on}-like; nprobe:recall)": markdown_table([{"entities": r["entities"], "index": r["kind"],
                                                                       "sweep": r["nprobe sweep"]} for r in rows if r["nprobe sweep"]]),
                  "Targets": markdown_table(targets)}
        if failures:
            tables["Failures (point of failure)"] = markdown_table(failures)
        for title, table in tables.items():
            print(f"\n{title}\n{table}")
        payload = {"rows": rows, "ratios": ratios, "targets": TARGETS, "target_check": targets, "failures": failures,
                   "k": args.k, "dim": dim, "base_entities": args.base_entities, "base_encode_s": encode_s,
                   "noise": args.noise, "stream_from": args.stream_from, "model": args.model or "embedded MiniLM, untrained heads",
                   "tune_on": args.tune_on,
                   "vectors": "real-shaped: generated entity texts encoded by the model, resampled with cluster-shaped noise"}
        path = write_results("scale" + ("_tiny" if args.tiny else ""), payload, tables, args.out_dir, args.quick)
        print(f"\nwrote {path}", flush=True)
        return payload

    for n in sizes:
        streamed = n >= args.stream_from
        chunks = gen.chunks(n)
        k = min(args.k, n)
        t_gold = time.perf_counter()
        gold_all = _exact_topk(np.concatenate([queries, mention_queries, tuning_queries]), chunks, k)
        gold, gold_m = gold_all[: len(queries)], gold_all[len(queries) : len(queries) + len(mention_queries)]
        gold_t = gold_all[len(queries) + len(mention_queries) :]
        gold_s = time.perf_counter() - t_gold
        vectors = None if streamed else np.concatenate(list(chunks()), axis=0)
        types = [t for t in args.types if not (streamed and t in ("flat", "ivf"))]
        if n == sizes[0]:
            types = ["flat"] + [t for t in types if t != "flat"]
        for kind in types:
            gc.collect()
            rss0 = rss_bytes()
            t_build = time.perf_counter()
            nlist = pick_nlist(n, args.max_nlist)
            try:
                settings = FaissIndexConfig(index_type=kind, ivf_nlist=nlist, recall_queries=0)
                index, params, _ = build_faiss_from_chunks(n, dim, chunks, settings)
            except (MemoryError, RuntimeError) as err:  # the point of failure is reported, not hidden
                failures.append({"entities": n, "index": kind, "error": f"{type(err).__name__}: {err}"[:200]})
                print(failures[-1], flush=True)
                continue
            build_s = time.perf_counter() - t_build
            sweep = []
            if kind.startswith("ivf"):
                tune_q, tune_gold = (tuning_queries, gold_t) if args.tune_on == "mention" else (queries, gold)
                nprobe, _, sweep = tune_nprobe(index, tune_q, tune_gold, k, args.target_recall)
                params["ivf_nprobe"] = nprobe
            recall = exact_recall(index.search(queries, k)[1], gold)
            recall_m = exact_recall(index.search(mention_queries, k)[1], gold_m)
            searcher = Searcher(index, vectors)  # in memory: exact rerank vectors; streamed: decoded codes
            rss1 = rss_bytes()
            index_b = faiss_index_bytes(index)
            linker = MentionLinker(model, processor, searcher, mentions, k, dtype)
            faiss.omp_set_num_threads(1)  # one query at a time: FAISS's OpenMP threads would only fight torch's
            if base_linker is None:
                base_linker = linker
                times = timeit_many({"base": base_linker}, repeats=repeats, warmup=2)
                times["this"] = times["base"]
            else:
                times = timeit_many({"base": base_linker, "this": linker}, repeats=repeats, warmup=2)
            faiss.omp_set_num_threads(build_threads)
            parts = linker.parts
            label = kind + "".join(f" {key.replace('ivf_', '').replace('pq_', 'pq')}={v}" for key, v in params.items()
                                   if key in ("ivf_nlist", "ivf_nprobe", "pq_m"))
            rows.append({
                "entities": n, "index": label, "kind": kind, "rerank on": "codes" if vectors is None else "exact",
                f"recall@{args.k}": recall, f"recall@{args.k} mention q": recall_m, "ms/mention": times["this"] * 1e3,
                f"growth vs {sizes[0]}": times["this"] / times["base"], "search ms": parts["search"] / parts["n"] * 1e3,
                "rerank ms": parts["rerank"] / parts["n"] * 1e3, "index MB": index_b / 2**20,
                "flat MB": n * dim * 4 / 2**20, "memory / flat": index_b / (n * dim * 4),
                "rerank vectors MB": 0.0 if vectors is None else vectors.nbytes / 2**20,
                "RSS growth MB": (rss1 - rss0) / 2**20, "build s": build_s, "exact s": gold_s,
                "nprobe sweep": " ".join(f"{p}:{r:.3f}" for p, r in sweep),
            })
            print({key: v for key, v in rows[-1].items() if key != "nprobe sweep"}, flush=True)
            if linker is not base_linker:
                del linker, searcher, index
        del vectors
        if rows and n != sizes[-1]:
            report(final=False)

    return report(final=True)


if __name__ == "__main__":
    main()
