"""Recall@k of the approximate entity indexes (HNSW, IVF) against exact inner-product search, and their speed.

    python benchmarks/index_recall.py --quick        # 100k entities, HNSW and IVF, under 2 minutes on 2 cores
    python benchmarks/index_recall.py                # 100k and 300k, uniform and clustered vectors, parameter sweeps

Vectors: "uniform" = random unit vectors (no structure at all: the hardest case for an approximate index);
"clustered" = unit vectors around 1000 random centres (closer to real entity embeddings). Queries are drawn the same
way. Recall@k = |approximate top-k ∩ exact top-k| / k, averaged over the queries; the exact top-k comes from
``IndexFlatIP`` in the same run.
"""

from __future__ import annotations

import time

import numpy as np
from common import base_parser, markdown_table, setup_threads, write_results

from modeling_mel.entity_index import EntityIndex
from modeling_mel.faiss_index import exact_recall


def make_vectors(n: int, dim: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        x = rng.standard_normal((n, dim)).astype(np.float32)
    elif kind == "clustered":
        centres = rng.standard_normal((1000, dim)).astype(np.float32)
        x = centres[rng.integers(0, 1000, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    else:
        raise ValueError(f"unknown vector kind {kind!r}")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="KB sizes (default: 100000; full: + 300000)")
    parser.add_argument("--dim", type=int, default=64, help="vector size")
    parser.add_argument("--k", type=int, default=100, help="recall@k")
    parser.add_argument("--n_queries", type=int, default=200)
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    sizes = args.sizes or ([100_000] if args.quick else [100_000, 300_000])
    kinds = ["uniform"] if args.quick else ["uniform", "clustered"]
    ef_values = [512] if args.quick else [128, 256, 512, 1024]
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        for kind in kinds:
            vectors = make_vectors(n, args.dim, kind, rng)
            queries = make_vectors(args.n_queries, args.dim, kind, rng)
            exact = EntityIndex.from_vectors(vectors, index_type="flat")
            start = time.perf_counter()
            _, gold = exact.search(queries, args.k)
            exact_ms = 1000 * (time.perf_counter() - start) / args.n_queries

            start = time.perf_counter()
            hnsw = EntityIndex.from_vectors(vectors, index_type="hnsw")
            build = time.perf_counter() - start
            for ef in ef_values:
                hnsw.config["index_params"]["ef_search"] = ef
                start = time.perf_counter()
                _, found = hnsw.search(queries, args.k)
                ms = 1000 * (time.perf_counter() - start) / args.n_queries
                rows.append({"n": n, "vectors": kind, "index": "hnsw", "params": f"M=32 efC=80 efSearch={ef}",
                             f"recall@{args.k}": exact_recall(found, gold), "build_s": build, "ms/query": ms,
                             "exact ms/query": exact_ms})
                print(rows[-1], flush=True)

            start = time.perf_counter()
            ivf = EntityIndex.from_vectors(vectors, index_type="ivf")
            build = time.perf_counter() - start
            nlist = ivf.config["index_params"]["ivf_nlist"]
            nprobes = [nlist // 8] if args.quick else [nlist // 16, nlist // 8, nlist // 4, nlist // 2]
            for nprobe in nprobes:
                ivf.faiss_index.nprobe = max(1, nprobe)
                start = time.perf_counter()
                _, found = ivf.search(queries, args.k)
                ms = 1000 * (time.perf_counter() - start) / args.n_queries
                rows.append({"n": n, "vectors": kind, "index": "ivf", "params": f"nlist={nlist} nprobe={max(1, nprobe)}",
                             f"recall@{args.k}": exact_recall(found, gold), "build_s": build, "ms/query": ms,
                             "exact ms/query": exact_ms})
                print(rows[-1], flush=True)
    table = markdown_table(rows)
    path = write_results("index_recall", {"rows": rows, "dim": args.dim, "k": args.k}, {f"recall@{args.k} vs exact": table},
                         out_dir=args.out_dir, quick=args.quick)
    print(table)
    print(f"wrote {path}")
    headline = [r for r in rows if r["n"] == 100_000 and r["index"] == "hnsw" and r["vectors"] == "uniform"]
    if headline:
        best = headline[-1]
        print(f"HNSW recall@{args.k} on 100k random entities vs exact search: {best[f'recall@{args.k}']:.4f} ({best['params']})")
    return {"rows": rows}


if __name__ == "__main__":
    main()
