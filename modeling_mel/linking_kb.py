"""The knowledge base as the linking pipeline sees it: :class:`LinkingKB` (entities, their positions, the name rule,
BM25 and the dense candidate cache) and the reading of a saved entity-index folder into one
(:func:`_load_index_dir`, :func:`_cache_of`).

This file ships with saved models next to the pipeline (a relative import of ``pipeline_entity_linking.py``): it
imports only torch, ``candidates.py`` and, lazily, ``index_files.py`` (shipped beside it) and the ``modeling_mel``
package's ``entity_index`` when it is installed (FAISS indexes; exact search over the saved vectors without it).
"""

from __future__ import annotations

from typing import Any

import torch

from .candidates import NameRuleCandidates


class LinkingKB:
    """Entities plus the look-ups the pipeline needs: name rule, BM25 (lazy), dense search over cached vectors.

    Args:
        entities: normalised entity records (see :func:`normalize_entity`).
        vectors: optional ``(N, H)`` candidate cache (ZEMEL): a tensor, or an index's ``CodeVectors`` (rows decoded
            from compressed FAISS codes when the index was written without its exact vectors).
        searcher: optional object with ``search(query_vectors (Q, H) numpy/tensor, k) -> (scores, indices)``
            (an ``EntityIndex``); exact torch search over ``vectors`` otherwise.
        device: where the cache lives (the pipeline's device): a tensor cache is moved there once, rows decoded from
            compressed codes go there; the searcher (FAISS) stays on the CPU. ``None``: where ``vectors`` are.
    """

    def __init__(
        self, entities: list[dict], vectors: torch.Tensor | None = None, searcher: Any = None, device: Any = None
    ):
        if len(entities) == 0:
            raise ValueError(
                "the knowledge base is empty (0 entities); pass a kb.jsonl / Dataset / index with at least one entity"
            )
        self.entities = entities
        self.position = {}
        for i, e in enumerate(entities):
            if e["entity_id"] in self.position:
                raise ValueError(f"entity_id {e['entity_id']!r} occurs twice in the KB (rows {self.position[e['entity_id']]} and {i})")
            self.position[e["entity_id"]] = i
        self.device = torch.device(device) if device is not None else None
        if self.device is not None and isinstance(vectors, torch.Tensor):
            vectors = vectors.to(self.device)  # no copy when already there (the CPU)
        self.vectors = vectors
        self.searcher = searcher
        self._rule: NameRuleCandidates | None = None
        self._bm25 = None

    def __len__(self) -> int:
        return len(self.entities)

    def name_rule(self, mention: str, k: int | None = None) -> list[int]:
        """PFMEL's rule (``candidates.NameRuleCandidates``): positions of entities whose name contains the mention
        (case-insensitive), closest names first (``candidates.closest_first``: exact name, shorter names, KB order);
        the first ``k`` (PFMEL scores every candidate, so only very common mentions are cut)."""
        if self._rule is None:
            self._rule = NameRuleCandidates(self.entities)
        return self._rule.closest(mention, k)

    def bm25(self, mention: str, k: int) -> list[int]:
        """ZEMEL's BM25 + rules candidates (``candidates.Bm25RuleCandidates``; needs the ``bm25s`` package)."""
        if self._bm25 is None:
            from .candidates import Bm25RuleCandidates

            self._bm25 = Bm25RuleCandidates([e["entity_id"] for e in self.entities], [e["name"] for e in self.entities])
        return [self.position[e] for e in self._bm25(mention, k)]


def _load_index_dir(path: str, model: Any) -> tuple[list[dict], torch.Tensor | None, Any, dict]:
    """Entities, vectors, searcher and config of a saved entity index, read and checked by the one index-folder reader
    (``index_files.read_index_folder``, which ``EntityIndex.load`` uses too): entity count, sha256 checksums, vector
    shape, index kind, FAISS ``ntotal``; ``ValueError`` naming the file and what differs.

    With the modeling_mel package, the searcher is an ``EntityIndex`` over the folder's FAISS index. Without it (this
    file shipped with a model), ``faiss.index`` is not read: exact search over the saved vectors.
    """
    from .index_files import read_index_folder

    try:
        from modeling_mel.entity_index import EntityIndex
    except ImportError:
        EntityIndex = None
    folder = read_index_folder(path, model=model, read_faiss=EntityIndex is not None)
    if EntityIndex is None:
        return folder.entities, _cache_of(folder.vectors), None, folder.config
    index = EntityIndex.from_folder(folder, model=model)
    return index.entities, _cache_of(index.vectors), (index if index.has_vectors else None), index.config


def _cache_of(vectors: Any) -> Any:
    """The pipeline's candidate cache of an ``EntityIndex``'s vectors: a tensor over the exact float32 vectors, or
    the index's lazy rows decoded from compressed FAISS codes (an index written without its vectors) as they are."""
    if vectors is None or isinstance(vectors, torch.Tensor):
        return vectors
    if type(vectors).__module__ == "numpy":
        return torch.from_numpy(vectors)
    return vectors  # CodeVectors: rows decoded on demand


__all__ = ["LinkingKB"]
