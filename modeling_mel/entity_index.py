"""A saved, searchable index of KB entities: cached ZEMEL candidate vectors in FAISS, plus entity metadata.

Build once (``mel index`` or :meth:`EntityIndex.build`), then link many mentions against it::

    index = EntityIndex.build(model, processor, "kb.jsonl", batch_size=64)
    index.save("kb_index")
    index = EntityIndex.load("kb_index", model=model)      # ValueError if built by another model
    scores, positions = index.search(query_vectors, k=100)

The folder (``entities.jsonl``, ``vectors.safetensors``, ``faiss.index``, ``index_config.json``), its atomic writes
and the checks of every file on load: :mod:`modeling_mel.index_files`. The FAISS side (index type, ``"auto"`` by KB
size and memory budget, compressed codes, HNSW / IVF / PQ parameters, build-time recall@64, nprobe tuning) travels as
one :class:`~modeling_mel.faiss_index.FaissIndexConfig`: :mod:`modeling_mel.faiss_index`.

The poly rerank of the top-k reads :attr:`EntityIndex.vectors`: the exact float32 vectors when they are stored
(``vectors.safetensors``; ``store_vectors=None`` keeps them when they fit the budget), else the rows decoded from the
compressed codes (:class:`~modeling_mel.faiss_index.CodeVectors`, FAISS ``reconstruct_batch``; IVF indexes get a
direct map, 8 bytes a vector, for it): the rerank then scores approximate vectors (SQ8: about 1e-2 off per dimension;
PQ: more). Such a folder has no ``vectors.safetensors`` and ``index_config.json`` says ``"vectors_stored": false``.
Without a model the index holds metadata only (BM25 / name-rule candidates for PFMEL users). The BLINK indexer names
(``index_data``, ``search_knn``, ``serialize``, ``deserialize_from``) are aliases. Sharded, resumable building over
processes: :mod:`modeling_mel.sharded_index`.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .faiss_index import (
    NPROBE_TARGET_RECALL,
    RECALL_K,
    CodeVectors,
    FaissIndexConfig,
    _chunks_of,
    attach_index,
    mention_like_queries,
)
from .faiss_index import tune_nprobe as _tune_nprobe
from .index_files import (
    FORMAT_VERSION,
    IndexFolder,
    check_index_destination,
    index_write_lock,
    read_index_config,
    read_index_folder,
    write_index_folder,
)
from .knowledge_base import (
    check_index_compatible,
    encode_entities,
    kb_records,
    linking_method,
    model_config_hash,
    model_fingerprint,
)

logger = logging.getLogger(__name__)


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
        if vectors is None or isinstance(vectors, CodeVectors):
            self.vectors = vectors
        else:
            self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
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
        """Whether the index holds candidate vectors (else it is metadata-only); exact or decoded from codes."""
        return self.vectors is not None

    @property
    def vectors_stored(self) -> bool:
        """Whether :attr:`vectors` are the exact float32 vectors (``False``: decoded from compressed codes)."""
        return isinstance(self.vectors, np.ndarray)

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
        image_extractor: Any = None,
        max_length: int | None = None,
        progress: bool = True,
        bf16: bool = False,
        faiss: FaissIndexConfig | None = None,
        **faiss_settings: Any,
    ) -> "EntityIndex":
        """Encode a KB once with the model's candidate encoder and index the vectors.

        ``kb``: a ``kb.jsonl`` path, a ``datasets.Dataset`` or a list of entity rows. ``model=None`` builds a
        metadata-only index (BM25 / name-rule candidates, no vectors). ``faiss``: the FAISS settings
        (:class:`~modeling_mel.faiss_index.FaissIndexConfig`: ``index_type`` ``"flat"`` (exact), ``"hnsw"``,
        ``"ivf"``, the compressed ``"ivfpq"``, ``"ivfsq8"``, ``"hnswsq8"``, or ``"auto"``, by KB size and by
        ``memory_budget`` when given; ``store_vectors``: keep the exact float32 vectors for the rerank, ``None``: when
        they fit the budget; HNSW / IVF / PQ parameters); ``faiss_settings``: some of its fields given one by one
        (``index_type="hnsw"``), over ``faiss``. An IVF index without a given ``ivf_nprobe`` gets it tuned on the
        model's mention-like queries.
        ``image_extractor``: encodes entity images as regions (text-only without one). ``bf16``: encode under bf16
        autocast (``mel index`` does where :func:`~modeling_mel.hardware.bf16_is_fast`; ``--fp32`` turns it off).
        """
        faiss = FaissIndexConfig.merged(faiss, **faiss_settings)
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
        if linking_method(model) != "dense":
            raise ValueError(
                f"{type(model).__name__} has no candidate encoder; build a dense index with a ZemelPolyEncoder, "
                "or pass model=None for a metadata-only (BM25) index"
            )
        if processor is None:
            raise ValueError("processor is required to encode the KB (a ZemelProcessor)")
        if not max_length:  # the entity length of training (config.candidate_max_length)
            from .linking_dense import trained_lengths

            max_length = trained_lengths(model)[1]
        # the weights fingerprint (SHA-1 over the candidate encoder, about 3% of a 2,000-entity build) is hashed
        # beside the encoding: hashlib releases the GIL, the weights are only read
        with ThreadPoolExecutor(max_workers=1) as pool:
            fingerprint = pool.submit(model_fingerprint, model)
            vectors = encode_entities(
                model, processor, entities, batch_size=batch_size, image_extractor=image_extractor,
                max_length=max_length, progress=progress, bf16=bf16,
            ).numpy()
            weights_fingerprint = fingerprint.result()
        config.update(
            config_hash=model_config_hash(model),
            weights_fingerprint=weights_fingerprint,
            model_type=getattr(model.config, "model_type", None),
            model_name_or_path=str(getattr(model, "name_or_path", "") or ""),
            scoring=getattr(model.config, "scoring", None),
            image_model=getattr(image_extractor, "model_key", None),
            max_length=int(max_length),
            bf16=bool(bf16),
        )
        index = cls(entities, vectors, config, model=model, processor=processor)
        index.index_data(faiss)
        if faiss.tunes_nprobe(index.config["index_type"]):
            queries = mention_like_queries(model, processor, entities, max_length=max_length)
            index.tune_nprobe(vectors, queries)
        return index

    @classmethod
    def from_vectors(
        cls, vectors: np.ndarray, entities: Sequence[dict] | None = None, faiss: FaissIndexConfig | None = None,
        **faiss_settings: Any,
    ) -> "EntityIndex":
        """An index over given vectors (benchmarks, custom encoders); entities default to ``{"entity_id": str(i)}``.
        ``faiss`` / ``faiss_settings``: as in :meth:`index_data` (exact ``"flat"`` unless an index type is given)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if entities is None:
            entities = [{"entity_id": str(i), "name": str(i)} for i in range(len(vectors))]
        index = cls(list(entities), vectors, {"format_version": FORMAT_VERSION, "size": len(vectors), "config_hash": None})
        index.index_data(faiss, **faiss_settings)
        return index

    def index_data(
        self,
        faiss: FaissIndexConfig | None = None,
        add_batch_size: int = 50_000,
        progress: bool = False,
        **faiss_settings: Any,
    ) -> None:
        """(Re)build the FAISS index over :attr:`vectors` (added in batches of ``add_batch_size``) and record its
        type, parameters, build-time recall@64 and memory in :attr:`config`.

        ``faiss``: the :class:`~modeling_mel.faiss_index.FaissIndexConfig` (default: exact ``"flat"``);
        ``faiss_settings``: some of its fields given one by one, over it. ``index_type="auto"`` picks by size and
        ``memory_budget`` (:func:`~modeling_mel.faiss_index.choose_index_type`). ``store_vectors=False`` drops the
        exact vectors after indexing: :attr:`vectors` then decodes rows from the compressed codes
        (:class:`~modeling_mel.faiss_index.CodeVectors`), and the poly rerank runs on those.
        """
        faiss = FaissIndexConfig.merged(FaissIndexConfig(index_type="flat") if faiss is None else faiss, **faiss_settings)
        if self.vectors is None:
            raise ValueError("this index holds no vectors (metadata-only); build it with a ZEMEL model")
        if not isinstance(self.vectors, np.ndarray):
            raise ValueError(
                "this index holds compressed codes only (built with store_vectors=False): its exact vectors are gone, "
                "so it cannot be re-indexed; rebuild it from the KB with `mel index`"
            )
        n, dim = self.vectors.shape
        attach_index(self, n, dim, _chunks_of(self.vectors, int(add_batch_size)), faiss, progress=progress)

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
        if hasattr(self.faiss_index, "hnsw"):
            self.faiss_index.hnsw.efSearch = max(int(self.config.get("index_params", {}).get("ef_search", 16)), k)
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
        if self.model is None or self.processor is None:
            raise ValueError("retrieval needs a ZEMEL model and processor: EntityIndex.load(dir, model=..., processor=...)")
        if self.vectors is None:
            raise ValueError("this index has no vectors (a BM25-only index); build it with a ZEMEL model (`mel index --model`)")
        if extra is not None and len(extra) != len(texts):
            raise ValueError(f"extra has {len(extra)} candidate lists for {len(texts)} texts")
        position = self._positions()
        added = [[position[e] for e in row if e in position] for row in extra] if extra is not None else None
        ranked = self.dense_linker().link(texts, list(mentions), max(1, int(k)), extra=added, batch_size=batch_size)
        return [[(self.entities[p]["entity_id"], s) for p, s in row] for row in ranked]

    def dense_linker(self) -> Any:
        """The :class:`~modeling_mel.linking_dense.DenseLinker` of the attached model over this index (made once):
        the vectors stored (or decoded from the codes), this index as the searcher above the exhaustive threshold,
        the model's device, a bf16 selection where the index was encoded in bf16 and this device runs it fast (``bf16``
        attribute: set it to force a precision), contexts as long as in training (``config.context_max_length``).

        Contexts are encoded in float32 whatever ``bf16``: this linker serves :meth:`retrieve_scored`, whose scores a
        reranker fuses with its own (times ``config.retriever_score_weight``, 64 for the WikiMEL reranker of
        ``benchmarks/quality.py``), so a bf16 context's rounding would reach the fused order 64 times over. Measured on
        WikiMEL dev (2,627 mentions, ``retriever_k`` 8): two-stage H@1 0.9071 with float32 contexts, 0.9064 with bf16
        ones, at 46 vs 52 mentions/s (docs/results.md)."""
        from .hardware import bf16_is_fast
        from .linking_dense import DenseLinker

        device = next(self.model.parameters()).device
        bf16 = getattr(self, "bf16", None)
        if bf16 is None:
            bf16 = bool(self.config.get("bf16")) and bf16_is_fast(device.type)
        linker = self.__dict__.get("_linker")
        if linker is None or linker.model is not self.model or linker.device != device or linker.bf16 != bf16:
            linker = DenseLinker(self.model, self.processor, self.vectors, searcher=self, device=device, bf16=bf16,
                                 context_bf16=False)
            self.__dict__["_linker"] = linker
        return linker

    def tune_nprobe(self, exact_vectors: np.ndarray | Callable[[], Iterable[np.ndarray]], queries: np.ndarray,
                    target: float = NPROBE_TARGET_RECALL, k: int = RECALL_K) -> dict:
        """Set the smallest IVF ``nprobe`` (1, 2, 4, ... up to nlist) whose recall@``k`` on ``queries`` against exact
        search over ``exact_vectors`` (an array, or a callable returning an iterable of row chunks in index order, as
        the sharded build streams them) reaches ``target``, and record it in the config (``index_params.ivf_nprobe``,
        ``query_recall``): :func:`~modeling_mel.faiss_index.tune_nprobe`. ``mel index`` passes the model's own
        mention-like query vectors (:func:`~modeling_mel.faiss_index.mention_like_queries`): the held-out KB vectors
        of the build-time recall sit near their own list centroids, mention contexts often do not, so an nprobe
        chosen on KB vectors can miss most of a mention's neighbours."""
        return _tune_nprobe(self.faiss_index, self.config, exact_vectors, queries, target=target, k=k)

    def without(self, entity_ids: Iterable[str]) -> "EntityIndex":
        """A copy without ``entity_ids`` (unknown ids are ignored): the remaining entities and their stored vectors,
        re-indexed with the same index type and parameters, the model and processor still attached. ``mel calibrate
        --index`` simulates out-of-KB mentions with it, without re-encoding the KB."""
        drop = {str(e) for e in entity_ids}
        keep = [i for i, e in enumerate(self.entities) if e["entity_id"] not in drop]
        if not keep:
            raise ValueError(f"removing {len(drop)} entities leaves the index of {len(self)} entities empty")
        config = dict(self.config, size=len(keep))
        vectors = None if self.vectors is None else self.vectors[keep]
        reduced = type(self)([self.entities[i] for i in keep], vectors, config, model=self.model, processor=self.processor)
        if vectors is not None and self.faiss_index is not None:
            faiss = FaissIndexConfig.from_record(self.config)
            if faiss.index_type.startswith("ivf"):  # nlist is capped for the new size
                faiss = FaissIndexConfig.merged(faiss, ivf_nlist=min(int(faiss.ivf_nlist or 1), max(1, len(keep) // 39)))
            reduced.index_data(faiss)
        return reduced

    def _positions(self) -> dict[str, int]:
        cached = self.__dict__.get("_position_cache")
        if cached is None or len(cached) != len(self.entities):
            cached = {e["entity_id"]: i for i, e in enumerate(self.entities)}
            self.__dict__["_position_cache"] = cached
        return cached

    # -- persistence ---------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``entities.jsonl``, ``vectors.safetensors``, ``faiss.index`` and, last, ``index_config.json``
        (:func:`~modeling_mel.index_files.write_index_folder`).

        Atomic: the files go to a temp folder beside ``directory``, which then replaces ``directory`` whole (a
        BM25-only index written over a dense one leaves no vectors behind; a writer killed midway leaves the previous
        index as it was). ``index_config.json`` records the entity count, the sha256 and size of every file, the FAISS
        ``ntotal`` and the index kind, which :meth:`load` verifies. ``ValueError`` while another writer holds the
        folder's lock (``<directory>.lock``), or when ``directory`` holds files that are not index files. A failed
        write (a full disk) leaves the previous index: ``OSError`` (safetensors' and FAISS' write errors become one
        naming the folder).
        """
        with index_write_lock(directory) as target:
            check_index_destination(target)
            if self.vectors is not None and self.faiss_index is None:
                self.index_data(FaissIndexConfig.from_record(self.config))
            target, written = write_index_folder(
                target, self.entities, self.config, vectors=self.vectors if self.vectors_stored else None,
                faiss_index=self.faiss_index if self.vectors is not None else None,
            )
        logger.info("saved %r to %s (%s index, %d entities)", self, target, written["kind"], len(self))

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Any = None, processor: Any = None, mmap: bool = False) -> "EntityIndex":
        """Load a saved index (:func:`~modeling_mel.index_files.read_index_folder`, the reader the pipeline uses too);
        with ``model`` check that it was built by that model (``ValueError`` naming both config hashes, or both
        weights fingerprints, otherwise).

        Every file is checked against ``index_config.json`` (entity count, checksums, vector shape, FAISS ``ntotal``,
        index kind): ``ValueError`` naming the file and what differs when the folder was modified, truncated or
        mixed with another index's files. Folders written before checksums existed (format 1) load with a warning.
        A folder left mid-swap by a killed writer is restored from its backup first.
        """
        return cls.from_folder(read_index_folder(directory, model=model, mmap=mmap), model=model, processor=processor)

    @classmethod
    def from_folder(cls, folder: IndexFolder, model: Any = None, processor: Any = None) -> "EntityIndex":
        """The index of a folder :func:`~modeling_mel.index_files.read_index_folder` read and checked: a compressed
        folder without its vectors reranks on rows decoded from the codes; stored vectors without ``faiss.index`` get
        it rebuilt with the recorded type and parameters."""
        index = cls(folder.entities, folder.vectors, folder.config, model=model, processor=processor)
        if folder.faiss_index is not None:
            index.faiss_index = folder.faiss_index
            if folder.vectors is None:  # compressed codes only: rerank on decoded vectors
                index.vectors = CodeVectors(folder.faiss_index)
        elif folder.vectors is not None:
            index.index_data(FaissIndexConfig.from_record(folder.config))
        return index

    # BLINK indexer interface names.
    search_knn = search
    serialize = save
    deserialize_from = load


def load_retriever(index_dir: str, model_dir: str | None = None, device: Any = None):
    """An :class:`~modeling_mel.entity_index.EntityIndex` with its ZEMEL model and processor attached (the model
    recorded in the index config unless ``model_dir`` is given), the model on ``device`` (default CPU; the FAISS
    search stays on the CPU); ``ValueError`` when neither can be loaded."""
    from transformers import AutoModel, AutoProcessor

    recorded = read_index_config(index_dir).get("model_name_or_path")  # ValueError: not an index folder
    path = model_dir or recorded
    if not path or not os.path.isdir(path):
        raise ValueError(
            f"the ZEMEL model of index {index_dir!r} ({path!r}) is not a directory; pass its folder "
            "(--retriever_model / retriever_model=)"
        )
    from .model_files import load_pretrained

    model = load_pretrained(AutoModel, path).eval()  # a damaged folder: ValueError naming the file and the fix
    if device is not None:
        model = model.to(device)
    processor = AutoProcessor.from_pretrained(path)
    return EntityIndex.load(index_dir, model=model, processor=processor)


__all__ = [
    "EntityIndex",
    "load_retriever",
    # the type of EntityIndex.vectors without stored vectors, and the FAISS settings of build / from_vectors
    "CodeVectors",
    "FaissIndexConfig",
]
