"""A saved, searchable index of KB entities: cached ZEMEL candidate vectors in FAISS, plus entity metadata.

Build once (``mel index`` or :meth:`EntityIndex.build`), then link many mentions against it::

    index = EntityIndex.build(model, processor, "kb.jsonl", batch_size=64)
    index.save("kb_index")
    index = EntityIndex.load("kb_index", model=model)      # ValueError if built by another model
    scores, positions = index.search(query_vectors, k=100)

A saved index directory holds ``vectors.safetensors`` (``(N, H)`` float32), ``faiss.index``, ``entities.jsonl`` (the
entity metadata, JSON-serialisable fields only) and ``index_config.json`` (model config hash, weights fingerprint,
index type and parameters). Index types: exact inner product (``IndexFlatIP``) for KBs smaller than
``hnsw_threshold``, HNSW (``IndexHNSWFlat``, inner-product metric) above it with ``index_type="auto"``; ``"ivf"``
(``IndexIVFFlat``) is available for very large KBs. Without a model the index holds metadata only (BM25 / name-rule
candidates for PFMEL users). The BLINK indexer names (``index_data``, ``search_knn``, ``serialize``,
``deserialize_from``) are aliases.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Sequence

import numpy as np

from .pipeline_entity_linking import (
    ENTITIES_NAME,
    INDEX_CONFIG_NAME,
    VECTORS_NAME,
    check_index_compatible,
    encode_entities,
    kb_records,
    model_config_hash,
    model_family,
    model_fingerprint,
)

logger = logging.getLogger(__name__)

FAISS_NAME = "faiss.index"
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
FORMAT_VERSION = 1


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("EntityIndex needs faiss: pip install 'modeling-mel[faiss]' (faiss-cpu)") from err
    return faiss


def _json_safe(value: Any) -> Any:
    """JSON-serialisable copy of a metadata value; PIL images and other objects become ``None``."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return None


class EntityIndex:
    """Entity vectors in a FAISS index plus entity metadata.

    Args:
        entities: normalised entity records (KB order; position ``i`` is row ``i`` of ``vectors``).
        vectors: ``(N, H)`` float32 candidate vectors, or ``None`` for a metadata-only (BM25) index.
        config: the ``index_config.json`` content (hashes, index type, parameters).
        model, processor: optional ZEMEL model and processor, attached for :meth:`retrieve` (query encoding).
    """

    def __init__(
        self,
        entities: list[dict],
        vectors: np.ndarray | None = None,
        config: dict | None = None,
        model: Any = None,
        processor: Any = None,
    ):
        self.entities = entities
        self.vectors = None if vectors is None else np.ascontiguousarray(vectors, dtype=np.float32)
        self.config = dict(config or {})
        self.model = model
        self.processor = processor
        self.faiss_index = None
        if self.vectors is not None and len(self.vectors) != len(entities):
            raise ValueError(f"{len(self.vectors)} vectors for {len(entities)} entities")

    # -- basics --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entities)

    @property
    def has_vectors(self) -> bool:
        """Whether the index holds candidate vectors (else it is metadata-only)."""
        return self.vectors is not None

    @property
    def entity_ids(self) -> list[str]:
        return [e["entity_id"] for e in self.entities]

    def __repr__(self) -> str:
        return (
            f"EntityIndex(size={len(self)}, dim={self.config.get('dim')}, index_type={self.config.get('index_type')!r}, "
            f"config_hash={self.config.get('config_hash')!r})"
        )

    # -- building ------------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: Any,
        processor: Any,
        kb: Any,
        batch_size: int = 64,
        index_type: str = "auto",
        hnsw_threshold: int = 100_000,
        image_extractor: Any = None,
        max_length: int = 64,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 512,
        ivf_nlist: int | None = None,
        ivf_nprobe: int | None = None,
        progress: bool = True,
    ) -> "EntityIndex":
        """Encode a KB once with the model's candidate encoder and index the vectors.

        ``kb``: a ``kb.jsonl`` path, a ``datasets.Dataset`` or a list of entity rows. ``model=None`` builds a
        metadata-only index (BM25 / name-rule candidates, no vectors). ``index_type``: ``"flat"`` (exact),
        ``"hnsw"``, ``"ivf"``, or ``"auto"`` (flat below ``hnsw_threshold`` entities, HNSW at or above).
        ``image_extractor``: encodes entity images as regions (text-only without one).
        """
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index_type {index_type!r}; expected one of {INDEX_TYPES}")
        entities = kb_records(kb)
        if not entities:
            raise ValueError(f"the knowledge base {kb!r:.80} is empty (0 entities); nothing to index")
        seen: dict[str, int] = {}
        for i, e in enumerate(entities):
            if e["entity_id"] in seen:
                raise ValueError(f"entity_id {e['entity_id']!r} occurs twice in the KB (rows {seen[e['entity_id']]} and {i})")
            seen[e["entity_id"]] = i
        config: dict[str, Any] = {"format_version": FORMAT_VERSION, "size": len(entities), "metric": "inner_product"}
        if model is None:
            config.update(index_type="bm25", config_hash=None)
            logger.info("metadata-only (BM25) index of %d entities", len(entities))
            return cls(entities, None, config)
        if model_family(model) != "zemel":
            raise ValueError(
                f"{type(model).__name__} has no candidate encoder; build a dense index with a ZemelPolyEncoder, "
                "or pass model=None for a metadata-only (BM25) index"
            )
        if processor is None:
            raise ValueError("processor is required to encode the KB (a ZemelProcessor)")
        vectors = encode_entities(
            model, processor, entities, batch_size=batch_size, image_extractor=image_extractor,
            max_length=max_length, progress=progress,
        ).numpy()
        config.update(
            config_hash=model_config_hash(model),
            weights_fingerprint=model_fingerprint(model),
            model_type=getattr(model.config, "model_type", None),
            model_name_or_path=str(getattr(model, "name_or_path", "") or ""),
            scoring=getattr(model.config, "scoring", None),
            image_model=getattr(image_extractor, "model_key", None),
            max_length=int(max_length),
        )
        index = cls(entities, vectors, config, model=model, processor=processor)
        chosen = index_type if index_type != "auto" else ("hnsw" if len(entities) >= hnsw_threshold else "flat")
        index.index_data(
            chosen, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search,
            ivf_nlist=ivf_nlist, ivf_nprobe=ivf_nprobe,
        )
        return index

    @classmethod
    def from_vectors(
        cls, vectors: np.ndarray, entities: Sequence[dict] | None = None, index_type: str = "flat", **params: Any
    ) -> "EntityIndex":
        """An index over given vectors (benchmarks, custom encoders); entities default to ``{"entity_id": str(i)}``."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if entities is None:
            entities = [{"entity_id": str(i), "name": str(i)} for i in range(len(vectors))]
        index = cls(list(entities), vectors, {"format_version": FORMAT_VERSION, "size": len(vectors), "config_hash": None})
        index.index_data(index_type, **params)
        return index

    def index_data(
        self,
        index_type: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 512,
        ivf_nlist: int | None = None,
        ivf_nprobe: int | None = None,
        add_batch_size: int = 50_000,
        seed: int = 0,
    ) -> None:
        """(Re)build the FAISS index over :attr:`vectors`, adding vectors in batches of ``add_batch_size``."""
        if self.vectors is None:
            raise ValueError("this index holds no vectors (metadata-only); build it with a ZEMEL model")
        faiss = _faiss()
        n, dim = self.vectors.shape
        if index_type == "flat":
            index = faiss.IndexFlatIP(dim)
            params: dict[str, Any] = {}
        elif index_type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            index.hnsw.efSearch = int(ef_search)
            params = {"hnsw_m": int(hnsw_m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
        elif index_type == "ivf":
            nlist = int(ivf_nlist or max(1, min(n // 39, int(4 * math.sqrt(n)))))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            train = self.vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
            index.train(train)
            nprobe = int(ivf_nprobe or max(1, nlist // 8))
            index.nprobe = nprobe
            params = {"ivf_nlist": nlist, "ivf_nprobe": nprobe}
        else:
            raise ValueError(f"unknown index_type {index_type!r}; expected 'flat', 'hnsw' or 'ivf'")
        for start in range(0, n, int(add_batch_size)):
            index.add(self.vectors[start : start + int(add_batch_size)])
        self.faiss_index = index
        self.config.update(index_type=index_type, dim=int(dim), size=int(n), index_params=params)
        logger.info("indexed %d vectors of dim %d (%s %s)", n, dim, index_type, params)

    # -- search --------------------------------------------------------------------------------------------------
    def search(self, query_vectors: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` entities by inner product: ``(scores (Q, k'), positions (Q, k'))`` with ``k' = min(k, len)``.

        Positions index :attr:`entities`; ``-1`` marks a missing hit (approximate indexes only).
        """
        if self.faiss_index is None:
            raise ValueError("this index holds no vectors (metadata-only); dense search needs an index built with a ZEMEL model")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        if hasattr(query_vectors, "detach"):  # a torch tensor
            query_vectors = query_vectors.detach().float().cpu().numpy()
        queries = np.asarray(query_vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"query vectors of shape {tuple(queries.shape)}; expected (n, {self.vectors.shape[1]})")
        k = min(int(k), len(self))
        if self.config.get("index_type") == "hnsw":
            self.faiss_index.hnsw.efSearch = max(int(self.config["index_params"]["ef_search"]), k)
        scores, positions = self.faiss_index.search(np.ascontiguousarray(queries), k)
        return scores, positions

    def search_ids(self, query_vectors: Any, k: int) -> list[list[tuple[str, float]]]:
        """Like :meth:`search`, as ``(entity_id, score)`` lists."""
        scores, positions = self.search(query_vectors, k)
        return [
            [(self.entities[p]["entity_id"], float(s)) for s, p in zip(srow, prow) if p >= 0]
            for srow, prow in zip(scores, positions)
        ]

    def check_model(self, model: Any) -> None:
        """``ValueError`` naming both hashes when this index was built by another model than ``model``."""
        check_index_compatible(self.config, model)

    def retrieve(self, texts: Sequence[str], mentions: Sequence[Any], k: int) -> list[list[str]]:
        """Top-``k`` entity ids for mentions in texts, encoded with the attached ZEMEL model (text only).

        ``mentions[i]``: the mention string, a ``(start, end)`` span or a dict with ``mention``/``mention_start``.
        In poly mode each of the ``m`` poly codes searches the index and the union is reranked by the poly score.
        """
        return [[e for e, _ in row[: int(k)]] for row in self.retrieve_scored(texts, mentions, k)]

    def retrieve_scored(
        self,
        texts: Sequence[str],
        mentions: Sequence[Any],
        k: int,
        extra: Sequence[Sequence[str]] | None = None,
        batch_size: int = 64,
    ) -> list[list[tuple[str, float]]]:
        """Dense top-``k`` of each mention plus its ``extra`` entity ids (e.g. name-rule candidates), each with the
        model's score (poly or bi, the score the index ranks by), sorted by descending score (ties by KB order).

        This is the first stage of retrieve-then-rerank: the reranker sees the candidates and their retriever
        scores. Unknown ``extra`` ids are ignored.
        """
        import torch

        if self.model is None or self.processor is None:
            raise ValueError("retrieval needs a ZEMEL model and processor: EntityIndex.load(dir, model=..., processor=...)")
        if self.vectors is None:
            raise ValueError("this index has no vectors (a BM25-only index); build it with a ZEMEL model (`mel index --model`)")
        if extra is not None and len(extra) != len(texts):
            raise ValueError(f"extra has {len(extra)} candidate lists for {len(texts)} texts")
        model, k = self.model, max(1, int(k))
        device = next(model.parameters()).device
        position = self._positions()
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(texts), int(batch_size)):
            b_texts = list(texts[start : start + int(batch_size)])
            with torch.inference_mode():
                enc = self.processor.encode_contexts(
                    b_texts, list(mentions[start : start + len(b_texts)]), max_length=int(self.config.get("max_length", 64))
                )
                context = model.encode_context(**{key: v.to(device) for key, v in enc.items()})
                poly = getattr(model.config, "scoring", "poly") == "poly"
                queries = context.poly_codes if poly else context.pooled_output[:, None, :]  # (B, q, H)
                _, pos = self.search(queries.reshape(-1, queries.shape[-1]).float().cpu().numpy(), k)
                q = queries.shape[1]
                for b in range(len(b_texts)):
                    dense = list(dict.fromkeys(int(p) for row in pos[b * q : (b + 1) * q] for p in row if p >= 0))
                    added = [position[e] for e in (extra[start + b] if extra is not None else []) if e in position]
                    union = list(dict.fromkeys(dense + added))
                    if not union:
                        out.append([])
                        continue
                    cand = torch.from_numpy(self.vectors[union]).to(device)[None]  # (1, K, H)
                    ctx_b = type(context)(**{f: (v[b : b + 1] if v is not None else None) for f, v in context.items()})
                    scores = dict(zip(union, model.score(ctx_b, cand)[0].float().cpu().tolist()))
                    # the dense top k by the model's score (poly: the union over codes, rescored), plus the extras
                    keep = sorted(dense, key=lambda p: (-scores[p], p))[:k]
                    keep = list(dict.fromkeys(keep + added))
                    keep.sort(key=lambda p: (-scores[p], p))
                    out.append([(self.entities[p]["entity_id"], float(scores[p])) for p in keep])
        return out

    def _positions(self) -> dict[str, int]:
        cached = self.__dict__.get("_position_cache")
        if cached is None or len(cached) != len(self.entities):
            cached = {e["entity_id"]: i for i, e in enumerate(self.entities)}
            self.__dict__["_position_cache"] = cached
        return cached

    # -- persistence ---------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``vectors.safetensors``, ``faiss.index``, ``entities.jsonl`` and ``index_config.json``."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        dropped = 0
        with open(os.path.join(directory, ENTITIES_NAME), "w", encoding="utf-8") as f:
            for e in self.entities:
                safe = _json_safe(e)
                dropped += sum(1 for im in e.get("images") or [] if not isinstance(im, (str, os.PathLike)))
                safe["images"] = [im for im in safe.get("images") or [] if im is not None]
                f.write(json.dumps(safe, ensure_ascii=False) + "\n")
        if dropped:
            logger.warning(
                "%d in-memory entity images (not file paths) are not saved in %s; the vectors already include them",
                dropped, directory,
            )
        config = dict(self.config, images_not_saved=dropped)
        if self.vectors is not None:
            from safetensors.numpy import save_file

            save_file({"vectors": self.vectors}, os.path.join(directory, VECTORS_NAME))
            if self.faiss_index is None:
                self.index_data(config.get("index_type", "flat"))
            _faiss().write_index(self.faiss_index, os.path.join(directory, FAISS_NAME))
        with open(os.path.join(directory, INDEX_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        logger.info("saved %r to %s", self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Any = None, processor: Any = None, mmap: bool = False) -> "EntityIndex":
        """Load a saved index; with ``model`` check that it was built by that model (``ValueError`` naming both
        config hashes, or both weights fingerprints, otherwise)."""
        directory = os.fspath(directory)
        path = os.path.join(directory, INDEX_CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{directory!r} is not an entity index directory (no {INDEX_CONFIG_NAME}); build one with `mel index`")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if int(config.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"index format {config.get('format_version')} is newer than this modeling-mel ({FORMAT_VERSION}); upgrade")
        if model is not None and config.get("config_hash") is not None:
            check_index_compatible(config, model, where=f"entity index {directory!r}")
        entities = kb_records(directory)
        vectors = None
        if os.path.isfile(os.path.join(directory, VECTORS_NAME)):
            from safetensors.numpy import load_file

            vectors = load_file(os.path.join(directory, VECTORS_NAME))["vectors"]
        index = cls(entities, vectors, config, model=model, processor=processor)
        if vectors is not None:
            faiss_path = os.path.join(directory, FAISS_NAME)
            if os.path.isfile(faiss_path):
                flags = _faiss().IO_FLAG_MMAP if mmap else 0
                index.faiss_index = _faiss().read_index(faiss_path, flags)
            else:
                index.index_data(config.get("index_type", "flat"), **config.get("index_params", {}))
        return index

    # BLINK indexer interface names.
    search_knn = search
    serialize = save
    deserialize_from = load


def exact_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean overlap |approx_i ∩ exact_i| / |exact_i| of two ``(Q, k)`` position arrays (recall@k vs exact search)."""
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"{approx.shape[0]} vs {exact.shape[0]} queries")
    hits = [len(set(a.tolist()) & set(e.tolist())) / max(1, len(e)) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else 0.0


def synthetic_recall(
    n: int = 100_000,
    dim: int = 64,
    k: int = 100,
    n_queries: int = 200,
    index_type: str = "hnsw",
    seed: int = 0,
    **params: Any,
) -> dict[str, float]:
    """Recall@k of an approximate index against exact search on ``n`` random unit vectors (worst case: no structure).

    Returns ``{"recall": ..., "build_s": ..., "search_ms_per_query": ..., "exact_ms_per_query": ...}``.
    """
    import time

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    t0 = time.perf_counter()
    exact = EntityIndex.from_vectors(vectors, index_type="flat")
    t1 = time.perf_counter()
    _, gold = exact.search(queries, k)
    t2 = time.perf_counter()
    approx = EntityIndex.from_vectors(vectors, index_type=index_type, **params)
    t3 = time.perf_counter()
    _, found = approx.search(queries, k)
    t4 = time.perf_counter()
    return {
        "n": float(n),
        "recall": exact_recall(found, gold),
        "build_s": t3 - t2,
        "search_ms_per_query": 1000 * (t4 - t3) / n_queries,
        "exact_ms_per_query": 1000 * (t2 - t1) / n_queries,
        "exact_build_s": t1 - t0,
    }


__all__ = ["EntityIndex", "exact_recall", "synthetic_recall", "INDEX_TYPES"]
