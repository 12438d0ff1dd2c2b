"""The FAISS side of an entity index: which index type fits a KB and a memory budget, building it from vector chunks,
its build-time recall, and the IVF ``nprobe`` tuned on mention-like queries.

Every FAISS setting travels as one :class:`FaissIndexConfig` (``EntityIndex.build`` / ``from_vectors`` /
``index_data``, the sharded build of :mod:`modeling_mel.sharded_index`, and ``mel index``, which makes it from its
options with :meth:`FaissIndexConfig.from_options`)::

    faiss_config = FaissIndexConfig(index_type="auto", memory_budget="4GB")
    index = EntityIndex.build(model, processor, "kb.jsonl", faiss=faiss_config)

Index types: exact inner product (``IndexFlatIP``) for KBs smaller than ``hnsw_threshold``, HNSW (``IndexHNSWFlat``,
inner-product metric) above it with ``index_type="auto"``; ``"ivf"`` (``IndexIVFFlat``) for very large KBs; and
compressed codes for KBs whose float32 vectors do not fit in memory: ``"ivfpq"`` (``IndexIVFPQ``, ``pq_m`` bytes a
vector, dim/4 by default), ``"ivfsq8"`` (``IndexIVFScalarQuantizer`` 8-bit, one byte a dimension) and ``"hnswsq8"``
(``IndexHNSWSQ``). With a ``memory_budget``, ``"auto"`` picks the most exact type that fits
(:func:`choose_index_type`). An index kept without its exact vectors reranks with rows decoded from the codes
(:class:`CodeVectors`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .index_files import import_faiss

logger = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq", "ivfsq8", "hnswsq8")
#: Index types that keep compressed codes instead of float32 vectors (their exact vectors may or may not be stored).
COMPRESSED_TYPES = ("ivfpq", "ivfsq8", "hnswsq8")
#: The k of the recall measured at build time and recorded in ``index_config.json``.
RECALL_K = 64
#: recall@k that the nprobe tuning aims for on its sample of mention-like queries: above the 0.95 wanted on real
#: mentions, because the sample is small (at 10M entities, nprobe tuned to 0.95 on it gave 0.944 on other mention
#: queries, tuned to 0.97 gave 0.977: benchmarks/scale.py)
NPROBE_TARGET_RECALL = 0.97
_MEMORY_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
                 "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


# -- sizes and the choice of an index type ----------------------------------------------------------------------------
def parse_memory(value: Any) -> int | None:
    """Bytes of a memory size: an int, or a string such as ``"4GB"``, ``"512MiB"``, ``"1.5g"`` (binary units);
    ``None`` stays ``None`` (no budget). ``ValueError`` naming the value otherwise."""
    if value is None or isinstance(value, bool):
        if value is None:
            return None
        raise ValueError(f"memory size {value!r} is not a size; give bytes or a string like '4GB'")
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        if unit not in _MEMORY_UNITS or not number:
            raise ValueError(f"memory size {value!r} is not understood; give bytes or a number with a unit, e.g. '4GB', '512MB'")
        size = float(number) * _MEMORY_UNITS[unit]
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"memory size {value!r} must be positive")
    return int(size)


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: ``4 sqrt(n)``, at most ``n / 39`` (FAISS wants >= 39 training points a list)."""
    return max(1, min(int(n) // 39, int(4 * math.sqrt(max(1, int(n))))))


def default_pq_m(dim: int) -> int:
    """PQ sub-quantizers for vectors of ``dim``: the largest divisor of ``dim`` at most ``dim / 4`` (one byte per
    four dimensions: 96 bytes for MiniLM's 384, 1/16 of float32)."""
    return max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)


def estimate_index_bytes(
    index_type: str, n: int, dim: int, hnsw_m: int = 32, pq_m: int | None = None, ivf_nlist: int | None = None,
    direct_map: bool = False,
) -> int:
    """Estimated bytes of a FAISS index of ``n`` vectors of ``dim`` (codes, ids, centroids, graph links), without
    the float32 vectors an :class:`~modeling_mel.entity_index.EntityIndex` may keep beside it for the exact rerank."""
    n, dim = int(n), int(dim)
    nlist = int(ivf_nlist or default_nlist(n))
    links = n * (2 * int(hnsw_m) * 4 + 12)  # level-0 links (2M ints) + levels, offsets, upper levels (approx.)
    ids = n * 8 + (n * 8 if direct_map else 0)
    if index_type == "flat":
        return n * dim * 4
    if index_type == "hnsw":
        return n * dim * 4 + links
    if index_type == "hnswsq8":
        return n * dim + links + 8 * dim
    if index_type == "ivf":
        return n * dim * 4 + ids + nlist * dim * 4
    if index_type == "ivfsq8":
        return n * dim + ids + nlist * dim * 4 + 8 * dim
    if index_type == "ivfpq":
        m = int(pq_m or default_pq_m(dim))
        return n * m + ids + nlist * dim * 4 + 256 * dim * 4
    raise ValueError(f"unknown index_type {index_type!r}; expected one of {INDEX_TYPES[1:]}")


def choose_index_type(
    n: int,
    dim: int,
    memory_budget: Any = None,
    hnsw_threshold: int = 100_000,
    hnsw_m: int = 32,
    pq_m: int | None = None,
) -> tuple[str, bool]:
    """``(index_type, store_vectors)`` that ``index_type="auto"`` picks for ``n`` vectors of ``dim``.

    Without a budget: exact ``flat`` below ``hnsw_threshold`` entities, ``hnsw`` at or above it, exact vectors
    stored. With ``memory_budget`` (bytes or ``"4GB"``), the first that fits, from the most to the least exact:
    ``flat`` (below the threshold) or ``hnsw``, each with its float32 vectors; ``ivfsq8`` codes plus the float32
    vectors for an exact rerank; then codes only, the rerank running on vectors decoded from the codes: ``hnswsq8``,
    ``ivfsq8``, ``ivfpq``. ``ValueError`` naming the budget and the smallest size when nothing fits.
    """
    budget = parse_memory(memory_budget)
    n, dim = int(n), int(dim)
    first = "flat" if n < int(hnsw_threshold) else "hnsw"
    if budget is None:
        return first, True
    exact = n * dim * 4
    ladder = [(first, True), ("ivfsq8", True), ("hnswsq8", False), ("ivfsq8", False), ("ivfpq", False)]
    for kind, store in ladder:
        need = estimate_index_bytes(kind, n, dim, hnsw_m=hnsw_m, pq_m=pq_m, direct_map=not store and kind != "hnswsq8")
        need += exact if store and kind != "flat" else 0
        if kind == "flat":
            need += exact  # the FAISS copy plus the EntityIndex copy
        if need <= budget:
            return kind, store
    smallest = estimate_index_bytes("ivfpq", n, dim, pq_m=pq_m, direct_map=True)
    raise ValueError(
        f"memory_budget {memory_budget!r} ({budget / 2**20:.1f} MiB) is too small for {n} vectors of dim {dim}: the "
        f"smallest index (ivfpq, {pq_m or default_pq_m(dim)} bytes a vector) needs about {smallest / 2**20:.1f} MiB; "
        "raise --memory_budget or pass a smaller --pq_m"
    )


# -- the settings, as one object --------------------------------------------------------------------------------------
#: ``mel index --store_vectors`` -> :attr:`FaissIndexConfig.store_vectors`.
_STORE_VECTORS_OPTION = {"auto": None, "yes": True, "no": False}


@dataclasses.dataclass(frozen=True)
class FaissIndexConfig:
    """Every FAISS setting of an entity index build, chosen once and passed as one object.

    Args:
        index_type: one of :data:`INDEX_TYPES`; ``"auto"`` picks by KB size and ``memory_budget``
            (:func:`choose_index_type`).
        hnsw_threshold: KB size from which ``"auto"`` (without a budget) uses HNSW instead of exact search.
        memory_budget: bytes, or a string such as ``"4GB"``, for the index and the rerank vectors (``None``: no budget).
        store_vectors: keep the exact float32 vectors for the rerank (``None``: when they fit the budget; ``False``:
            rerank on vectors decoded from the compressed codes).
        hnsw_m, ef_construction, ef_search: HNSW graph degree, build depth and search depth.
        ivf_nlist: IVF lists (``None``: :func:`default_nlist`).
        ivf_nprobe: IVF lists searched a query (``None``: nlist / 8 at build, then tuned on mention-like queries
            where a model is at hand).
        pq_m: PQ bytes a vector, a divisor of the dimension (``None``: :func:`default_pq_m`).
        seed: of the training sample and of the held-out recall queries.
        recall_queries: KB vectors held out to measure the build-time recall (0: not measured).
    """

    index_type: str = "auto"
    hnsw_threshold: int = 100_000
    memory_budget: Any = None
    store_vectors: bool | None = None
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 512
    ivf_nlist: int | None = None
    ivf_nprobe: int | None = None
    pq_m: int | None = None
    seed: int = 0
    recall_queries: int = 200

    def __post_init__(self):
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index_type {self.index_type!r}; expected one of {INDEX_TYPES}")
        parse_memory(self.memory_budget)  # ValueError naming a budget that is not a size

    @classmethod
    def merged(cls, base: "FaissIndexConfig | None" = None, **settings: Any) -> "FaissIndexConfig":
        """``base`` (default: the defaults) with ``settings`` (field names) replaced; ``TypeError`` naming an unknown
        setting."""
        base = cls() if base is None else base
        if not isinstance(base, cls):
            raise TypeError(f"faiss= takes a FaissIndexConfig, got {type(base).__name__}")
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown FAISS setting(s) {unknown}; FaissIndexConfig has "
                            f"{[f.name for f in dataclasses.fields(cls)]}")
        return dataclasses.replace(base, **settings) if settings else base

    @classmethod
    def from_record(cls, config: dict) -> "FaissIndexConfig":
        """The settings that rebuild the index an ``index_config.json`` describes: its type and ``index_params``."""
        names = {f.name for f in dataclasses.fields(cls)}
        params = {k: v for k, v in (config.get("index_params") or {}).items() if k in names}
        return cls(index_type=str(config.get("index_type") or "flat"), **params)

    @classmethod
    def from_options(cls, args: Any) -> "FaissIndexConfig":
        """The settings of ``mel index`` options (``--index_type``, ``--hnsw_threshold``, ``--memory_budget``,
        ``--store_vectors auto|yes|no``, ``--ef_search``, ``--ivf_nlist``, ``--ivf_nprobe``, ``--pq_m``)."""
        return cls(
            index_type=args.index_type, hnsw_threshold=args.hnsw_threshold, memory_budget=args.memory_budget,
            store_vectors=_STORE_VECTORS_OPTION[args.store_vectors], ef_search=args.ef_search,
            ivf_nlist=args.ivf_nlist, ivf_nprobe=args.ivf_nprobe, pq_m=args.pq_m,
        )

    @property
    def budget_bytes(self) -> int | None:
        return parse_memory(self.memory_budget)

    def resolve(self, n: int, dim: int) -> tuple[str, bool]:
        """``(index_type, store_vectors)`` for ``n`` vectors of ``dim``: ``"auto"`` chosen by size and budget
        (:func:`choose_index_type`), ``store_vectors=None`` by whether the vectors fit the budget. A given
        uncompressed type over the budget is kept, with a warning."""
        budget = self.budget_bytes
        if self.index_type == "auto":
            chosen, fits = choose_index_type(n, dim, budget, hnsw_threshold=self.hnsw_threshold, hnsw_m=self.hnsw_m,
                                             pq_m=self.pq_m)
        else:
            chosen = self.index_type
            need = estimate_index_bytes(chosen, n, dim, hnsw_m=self.hnsw_m, pq_m=self.pq_m) + n * dim * 4
            fits = budget is None or need <= budget
            if budget is not None and not fits and chosen in ("flat", "hnsw", "ivf"):
                logger.warning("a %s index of %d vectors needs about %.1f MiB, over the memory budget of %.1f MiB; "
                               "use a compressed --index_type (ivfpq, ivfsq8, hnswsq8) or auto", chosen, n,
                               need / 2**20, budget / 2**20)
        return chosen, fits if self.store_vectors is None else bool(self.store_vectors)

    def tunes_nprobe(self, built_type: str) -> bool:
        """Whether a build that chose ``built_type`` tunes ``nprobe`` on mention-like queries: IVF types without a
        given ``ivf_nprobe`` (the plain and the sharded build alike)."""
        return self.ivf_nprobe is None and str(built_type).startswith("ivf")


# -- built indexes ----------------------------------------------------------------------------------------------------
def faiss_index_bytes(index: Any) -> int:
    """Bytes a built FAISS index holds in memory (codes, ids, direct map, centroids, quantizer tables, graph)."""
    faiss = import_faiss()
    index = faiss.downcast_index(index)
    d = int(index.d)
    if isinstance(index, faiss.IndexIVF):
        total = index.ntotal * (int(index.code_size) + 8) + faiss_index_bytes(index.quantizer)
        if index.direct_map.type != 0:
            total += index.ntotal * 8
        if isinstance(index, faiss.IndexIVFPQ):
            total += int(index.pq.M) * int(index.pq.ksub) * int(index.pq.dsub) * 4
        elif isinstance(index, faiss.IndexIVFScalarQuantizer):
            total += 2 * d * 4
        return int(total)
    if isinstance(index, faiss.IndexHNSW):
        hnsw = index.hnsw
        graph = hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
        return int(graph + faiss_index_bytes(index.storage))
    if isinstance(index, faiss.IndexScalarQuantizer):
        return int(index.ntotal * index.code_size + 2 * d * 4)
    if isinstance(index, faiss.IndexFlatCodes):
        return int(index.ntotal * index.code_size)
    return int(faiss.serialize_index(index).nbytes)


class CodeVectors:
    """Read-only ``(N, H)`` float32 rows decoded from a compressed FAISS index (``reconstruct_batch``): what an
    :class:`~modeling_mel.entity_index.EntityIndex` built without its exact vectors reranks with. Indexing with a
    position, a list or an array of positions decodes those rows only; ``np.asarray`` decodes all of them."""

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, faiss_index: Any):
        faiss = import_faiss()
        index = faiss.downcast_index(faiss_index)
        if isinstance(index, faiss.IndexIVF) and index.direct_map.type == 0:
            index.make_direct_map()  # id -> (list, offset), needed to decode rows by position
        self.faiss_index = faiss_index
        self.shape = (int(faiss_index.ntotal), int(faiss_index.d))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            key = range(*key.indices(len(self)))
        positions = np.asarray(key, dtype=np.int64)
        flat = positions.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"positions out of range for {len(self)} vectors")
        rows = self.faiss_index.reconstruct_batch(flat) if flat.size else np.zeros((0, self.shape[1]), np.float32)
        return rows.reshape(*positions.shape, self.shape[1])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.faiss_index.reconstruct_n(0, len(self)) if len(self) else np.zeros(self.shape, np.float32)
        return out.astype(dtype) if dtype is not None else out

    def __repr__(self) -> str:
        return f"CodeVectors(shape={self.shape})"


# -- vector chunks: the build never needs all vectors in memory together ----------------------------------------------
def _chunks_of(vectors: np.ndarray, size: int = 50_000):
    """A chunk source over an in-memory array: a function returning an iterator of row blocks."""
    return lambda: (vectors[s : s + size] for s in range(0, len(vectors), size))


def _gather_rows(chunks: Any, positions: np.ndarray, dim: int) -> np.ndarray:
    """Rows ``positions`` (sorted or not) of the vectors that ``chunks()`` yields in order."""
    order = np.argsort(positions)
    want = positions[order]
    out = np.empty((len(positions), dim), dtype=np.float32)
    offset = j = 0
    for block in chunks():
        end = offset + len(block)
        k = np.searchsorted(want, end)
        if k > j:
            out[order[j:k]] = block[want[j:k] - offset]
            j = k
        offset = end
        if j == len(want):
            break
    return out


def _exact_topk(queries: np.ndarray, chunks: Any, k: int) -> np.ndarray:
    """Exact top-``k`` positions by inner product over the vectors that ``chunks()`` yields (one pass, chunk by
    chunk: the vectors never need to be in memory together)."""
    faiss = import_faiss()
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    offset = 0
    for block in chunks():
        block = np.ascontiguousarray(block, dtype=np.float32)
        s, i = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        best_s = np.concatenate([best_s, s], axis=1)
        best_i = np.concatenate([best_i, i + offset], axis=1)
        if best_s.shape[1] > k:
            keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
        offset += len(block)
    return best_i


# -- building ---------------------------------------------------------------------------------------------------------
def _empty_index(index_type: str, dim: int, nlist: int, n_train: int, settings: FaissIndexConfig) -> tuple[Any, dict]:
    """An untrained, empty FAISS index of ``index_type`` and the parameters it records."""
    faiss = import_faiss()
    params: dict[str, Any] = {}
    if index_type == "flat":
        return faiss.IndexFlatIP(dim), params
    if index_type in ("hnsw", "hnswsq8"):
        if index_type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(settings.hnsw_m), faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, int(settings.hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(settings.ef_construction)
        index.hnsw.efSearch = int(settings.ef_search)
        return index, {"hnsw_m": int(settings.hnsw_m), "ef_construction": int(settings.ef_construction),
                       "ef_search": int(settings.ef_search)}
    quantizer = faiss.IndexFlatIP(dim)
    if index_type == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    elif index_type == "ivfsq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    else:
        m = int(settings.pq_m or default_pq_m(dim))
        if dim % m:
            raise ValueError(f"pq_m {m} does not divide the vector dimension {dim}; pick a divisor of {dim}")
        nbits = 8 if n_train >= 256 else max(1, int(math.log2(max(2, n_train))))
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        params.update(pq_m=m, pq_nbits=nbits)
    nprobe = int(settings.ivf_nprobe or max(1, nlist // 8))
    index.nprobe = min(nprobe, nlist)
    params.update(ivf_nlist=nlist, ivf_nprobe=int(index.nprobe))
    return index, params


def _fill(index: Any, chunks: Any, n: int, progress: bool, index_type: str) -> None:
    """Add the vectors that ``chunks()`` yields; ``ValueError`` when they are not ``n``."""
    bar = None
    if progress:
        from transformers.utils.logging import tqdm

        bar = tqdm(total=n, desc=f"filling the {index_type} index", unit="vector")
    added = 0
    for block in chunks():
        block = np.ascontiguousarray(block, dtype=np.float32)
        index.add(block)
        added += len(block)
        if bar is not None:
            bar.update(len(block))
    if bar is not None:
        bar.close()
    if added != n:
        raise ValueError(f"the vector chunks held {added} vectors, expected {n}")


def _build_recall(index: Any, index_type: str, chunks: Any, held: np.ndarray, n: int, dim: int, rng: Any,
                  ef_search: int) -> dict:
    """recall@``min(64, n)`` of ``index`` on the ``held`` KB vectors plus 10% Gaussian noise, vs exact search."""
    k = min(RECALL_K, n)
    if index_type == "flat":
        return {"k": k, "recall": 1.0, "queries": 0, "method": "exact index"}
    if not len(held):
        return {"k": k, "recall": None, "queries": 0, "method": "not measured (recall_queries=0)"}
    queries = _gather_rows(chunks, held, dim)
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    queries = queries + 0.1 * norms * rng.standard_normal(queries.shape).astype(np.float32) / math.sqrt(dim)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    gold = _exact_topk(queries, chunks, k)
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(int(ef_search), k)
    found = index.search(queries, k)[1]
    return {"k": k, "recall": exact_recall(found, gold), "queries": int(len(held)),
            "method": "held KB vectors + 10% Gaussian noise, top-k vs exact inner product"}


def build_faiss_from_chunks(
    n: int, dim: int, chunks: Any, settings: FaissIndexConfig | None = None, progress: bool = False
) -> tuple[Any, dict, dict]:
    """A filled FAISS index over ``n`` vectors of ``dim`` that ``chunks()`` yields in order (called up to three
    times: training sample, adding, exact recall), of the type and parameters of ``settings`` (``"auto"`` resolved
    for ``n`` and ``dim``), plus the parameters it records and its build-time recall.

    Recall: ``settings.recall_queries`` KB vectors held out of the quantizer training, each perturbed by Gaussian
    noise of 10% of its norm, searched in the new index; the report is the mean overlap of its top-``k`` with the
    exact top-``k`` (``k = min(64, n)``). Exact indexes record 1.0 without measuring.
    """
    settings = settings or FaissIndexConfig()
    n, dim = int(n), int(dim)
    index_type = settings.resolve(n, dim)[0] if settings.index_type == "auto" else settings.index_type
    rng = np.random.default_rng(settings.seed)
    held = (np.sort(rng.choice(n, size=min(n, int(settings.recall_queries)), replace=False)) if n
            else np.zeros(0, np.int64))
    rest = np.setdiff1d(np.arange(n), held) if n - len(held) >= 256 else np.arange(n)
    nlist = int(settings.ivf_nlist or default_nlist(n)) if index_type.startswith("ivf") else 0
    n_train = min(len(rest), 64 * nlist) if nlist > 1 else len(rest)
    index, params = _empty_index(index_type, dim, nlist, n_train, settings)
    if index_type not in ("flat", "hnsw"):
        size = min(len(rest), max(64 * nlist, 10_000) if nlist else 100_000)
        sample = _gather_rows(chunks, np.sort(rng.choice(rest, size=size, replace=False)), dim)
        index.train(sample)
        del sample
    _fill(index, chunks, n, progress, index_type)
    recall = _build_recall(index, index_type, chunks, held, n, dim, rng, settings.ef_search)
    return index, params, recall


def attach_index(index: Any, n: int, dim: int, chunks: Any, settings: FaissIndexConfig | None = None,
                 progress: bool = False) -> None:
    """Build the FAISS index of ``index`` (an :class:`~modeling_mel.entity_index.EntityIndex`) from ``n`` vectors of
    ``dim`` that ``chunks()`` yields in KB order (:func:`build_faiss_from_chunks`), and set its ``vectors``: the
    exact vectors when they are stored (``index.vectors`` must already hold them, or ``chunks`` is concatenated),
    else :class:`CodeVectors` decoding the codes. Records type, parameters, recall, memory and budget in its config."""
    settings = settings or FaissIndexConfig()
    chosen, store = settings.resolve(n, dim)
    searcher, used, recall = build_faiss_from_chunks(n, dim, chunks, dataclasses.replace(settings, index_type=chosen),
                                                     progress=progress)
    if store:
        if not isinstance(index.vectors, np.ndarray):
            index.vectors = np.ascontiguousarray(np.concatenate(list(chunks()), axis=0), dtype=np.float32)
    else:
        index.vectors = CodeVectors(searcher)
    index.faiss_index = searcher
    faiss_bytes = faiss_index_bytes(searcher)
    vector_bytes = n * dim * 4 if store else 0
    index.config.update(
        index_type=chosen, dim=int(dim), size=int(n), index_params=used, vectors_stored=bool(store),
        recall=recall, memory={"faiss_bytes": faiss_bytes, "vectors_bytes": vector_bytes,
                               "total_bytes": faiss_bytes + vector_bytes, "budget_bytes": settings.budget_bytes},
    )
    if settings.index_type == "auto":
        index.config["index_type_requested"] = "auto"
    logger.info(
        "indexed %d vectors of dim %d (%s %s): recall@%d %s vs exact, %.1f MiB (%s)", n, dim, chosen, used,
        recall["k"], "n/a" if recall["recall"] is None else f"{recall['recall']:.3f}", (faiss_bytes + vector_bytes) / 2**20,
        "exact vectors kept for the rerank" if store else "rerank on vectors decoded from the codes",
    )


# -- recall and nprobe tuning -----------------------------------------------------------------------------------------
def exact_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean overlap |approx_i ∩ exact_i| / |exact_i| of two ``(Q, k)`` position arrays (recall@k vs exact search)."""
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"{approx.shape[0]} vs {exact.shape[0]} queries")
    hits = [len(set(a.tolist()) & set(e.tolist())) / max(1, len(e)) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else 0.0


def mention_like_queries(
    model: Any, processor: Any, entities: Sequence[dict], n_contexts: int = 32, max_queries: int = 128,
    max_length: int = 64, seed: int = 0,
) -> np.ndarray:
    """Query vectors as linking searches with them: ``n_contexts`` seeded KB entities written as mention contexts
    (``"<name>. <description>"``, the name as the mention), encoded by the model's context encoder; its poly codes
    (poly scoring: each code searches the index) or pooled vector (bi), at most ``max_queries`` of them."""
    import torch

    rng = np.random.default_rng(seed)
    picked = rng.choice(len(entities), size=min(int(n_contexts), len(entities)), replace=False)
    texts, spans = [], []
    for i in picked.tolist():
        name = str(entities[i]["name"])
        texts.append(f"{name}. {entities[i].get('description') or ''}".strip())
        spans.append((0, len(name)))
    device = next(model.parameters()).device
    with torch.inference_mode():
        enc = processor.encode_contexts(texts, spans, max_length=int(max_length))
        context = model.encode_context(**{key: v.to(device) for key, v in enc.items()})
    poly = getattr(model.config, "scoring", "poly") == "poly" and context.poly_codes is not None
    queries = (context.poly_codes if poly else context.pooled_output[:, None, :]).float().cpu().numpy()
    queries = queries.reshape(-1, queries.shape[-1])
    if len(queries) > int(max_queries):
        queries = queries[np.sort(rng.choice(len(queries), size=int(max_queries), replace=False))]
    return np.ascontiguousarray(queries, dtype=np.float32)


def tune_nprobe(faiss_index: Any, config: dict, exact_vectors: np.ndarray | Callable[[], Iterable[np.ndarray]],
                queries: np.ndarray, target: float = NPROBE_TARGET_RECALL, k: int = RECALL_K) -> dict:
    """Set the smallest IVF ``nprobe`` (1, 2, 4, ... up to nlist) of ``faiss_index`` whose recall@``k`` on ``queries``
    against exact search over ``exact_vectors`` (an array, or a callable returning an iterable of row chunks in index
    order, as the sharded build streams them) reaches ``target``, and record it in the index ``config``
    (``index_params.ivf_nprobe``, ``query_recall``; the build-time recall gets the nprobe it was measured at).
    Returns the ``query_recall`` record."""
    faiss = import_faiss()
    ivf = faiss.extract_index_ivf(faiss_index)
    if isinstance(config.get("recall"), dict):  # the build-time recall was measured at the former nprobe
        config["recall"] = dict(config["recall"], measured_at_nprobe=int(ivf.nprobe))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(int(k), int(faiss_index.ntotal))
    if callable(exact_vectors):
        chunks = exact_vectors
    else:
        exact = np.asarray(exact_vectors, dtype=np.float32)
        chunks = lambda: (exact[i : i + 1_000_000] for i in range(0, len(exact), 1_000_000))  # noqa: E731
    gold = _exact_topk(queries, chunks, k)
    chosen, recall, tried = int(ivf.nlist), None, {}
    nprobe = 1
    while True:
        ivf.nprobe = min(nprobe, int(ivf.nlist))
        found = faiss_index.search(queries, k)[1]
        recall = exact_recall(found, gold)
        tried[int(ivf.nprobe)] = round(recall, 4)
        if recall >= target or ivf.nprobe >= ivf.nlist:
            chosen = int(ivf.nprobe)
            break
        nprobe *= 2
    ivf.nprobe = chosen
    params = dict(config.get("index_params") or {}, ivf_nprobe=chosen)
    result = {"k": k, "recall": recall, "target": float(target), "queries": int(len(queries)), "nprobe": chosen,
              "sweep": tried, "method": "the model's context vectors of mention-like contexts from KB entities"}
    config.update(index_params=params, query_recall=result)
    logger.info("nprobe %d: recall@%d %.3f on %d mention-like queries (sweep %s)", chosen, k, recall, len(queries),
                tried)
    return result


def synthetic_recall(
    n: int = 100_000,
    dim: int = 64,
    k: int = 100,
    n_queries: int = 200,
    index_type: str = "hnsw",
    seed: int = 0,
    **settings: Any,
) -> dict[str, float]:
    """Recall@k of an approximate index against exact search on ``n`` random unit vectors (worst case: no structure);
    ``settings``: other :class:`FaissIndexConfig` fields of the approximate index.

    Returns ``{"recall": ..., "build_s": ..., "search_ms_per_query": ..., "exact_ms_per_query": ...}``.
    """
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    chunks = _chunks_of(vectors)
    t0 = time.perf_counter()
    exact = build_faiss_from_chunks(n, dim, chunks, FaissIndexConfig(index_type="flat"))[0]
    t1 = time.perf_counter()
    _, gold = exact.search(queries, min(k, n))
    t2 = time.perf_counter()
    approx_settings = FaissIndexConfig.merged(FaissIndexConfig(index_type=index_type), **settings)
    approx = build_faiss_from_chunks(n, dim, chunks, approx_settings)[0]
    t3 = time.perf_counter()
    if hasattr(approx, "hnsw"):  # as EntityIndex.search: at least k candidates deep
        approx.hnsw.efSearch = max(int(approx_settings.ef_search), min(k, n))
    _, found = approx.search(queries, min(k, n))
    t4 = time.perf_counter()
    return {
        "n": float(n),
        "recall": exact_recall(found, gold),
        "build_s": t3 - t2,
        "search_ms_per_query": 1000 * (t4 - t3) / n_queries,
        "exact_ms_per_query": 1000 * (t2 - t1) / n_queries,
        "exact_build_s": t1 - t0,
    }


__all__ = [
    "COMPRESSED_TYPES",
    "CodeVectors",
    "FaissIndexConfig",
    "INDEX_TYPES",
    "NPROBE_TARGET_RECALL",
    "RECALL_K",
    "attach_index",
    "build_faiss_from_chunks",
    "choose_index_type",
    "default_nlist",
    "default_pq_m",
    "estimate_index_bytes",
    "exact_recall",
    "faiss_index_bytes",
    "mention_like_queries",
    "parse_memory",
    "synthetic_recall",
    "tune_nprobe",
]
