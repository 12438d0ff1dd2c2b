"""The dense linker: the one owner of ZEMEL ranking over cached candidate vectors.

Everything that ranks KB entities with a dense model goes through :class:`DenseLinker`: ``pipeline()`` and
``mel link``, the first stage of retrieve-then-rerank (``EntityIndex.retrieve_scored``), ``mel calibrate``, the
evaluation scripts (``zemel_evaluation``) and hard-negative mining during training (``zemel_training``). It

* encodes mention contexts through the model's fast path (``inference_context``: eval mode, inference mode, bf16
  autocast with cached low-precision weights when asked), in length-sorted batches for whole splits;
* selects the dense top ``k``: every entity scored exhaustively (through a bf16 copy of the cache under bf16) up to
  ``exact_threshold`` entities or without an index, else each poly code (or the pooled vector) searched in the index
  and the union kept;
* rescores candidate sets in float32 with the model's own score (poly or bi) and ranks them with the one tie rule
  of the package (score, then KB position: :func:`modeling_mel.ranking.rank_by_score`).

A mention row's text is its ``text`` field (ZEMELD's ``caption`` is renamed where its rows are read, once).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from .ranking import rank_by_score

#: KBs up to this many entities are ranked exhaustively (every entity scored); larger ones through the index.
DEFAULT_EXACT_THRESHOLD = 50_000
#: under bf16 the exhaustive selection keeps ``k + max(k, BF16_OVERFETCH)`` entities for the float32 rescoring, so
#: near-ties at the k-th place are decided in float32 (as in the float32 linker), not by bf16 rounding
BF16_OVERFETCH = 16


def trained_lengths(model: Any) -> tuple[int, int]:
    """``(context, candidate)`` token limits the model was trained with (``config.context_max_length`` /
    ``candidate_max_length``; 64 each when not recorded): what every linking path encodes with by default."""
    config = getattr(model, "config", None)
    return (int(getattr(config, "context_max_length", None) or 64), int(getattr(config, "candidate_max_length", None) or 64))


def row_text(row: Mapping[str, Any]) -> str:
    """The text of a mention row: its ``text`` field (``ValueError`` naming the row's keys when it has none)."""
    text = row.get("text")
    if not isinstance(text, str):
        raise ValueError(f"a mention row needs a 'text' string; this one has keys {sorted(row)}")
    return text


def row_span(row: Mapping[str, Any]) -> Any:
    """The mention of a row as the processor takes it: ``(start, end)`` when the row has a span, else the string."""
    if row.get("mention_start") is not None and row.get("mention_end") is not None:
        return (int(row["mention_start"]), int(row["mention_end"]))
    return row["mention"]


def search_union(context: Any, k: int, search: Callable[[torch.Tensor, int], list[list[int]]], poly: bool) -> list[list[int]]:
    """Index candidates of each context of a batch: the top ``k`` KB positions of its pooled vector (bi), or the
    union over its poly codes of each code's top ``k`` (the poly score is a convex combination of the codes' dot
    products, so the union holds the strong candidates, to be rescored). ``search(queries (Q, H), k)`` returns
    positions per query; negative positions are ignored."""
    queries = context.poly_codes if poly else context.pooled_output[:, None, :]  # (B, q, H)
    rows = search(queries.reshape(-1, queries.shape[-1]), int(k))
    q = queries.shape[1]
    return [list(dict.fromkeys(int(p) for row in rows[b * q : (b + 1) * q] for p in row if int(p) >= 0))
            for b in range(queries.shape[0])]


class DenseLinker:
    """Ranks KB entities for mention contexts with a dense (ZEMEL-like) model and its cached candidate vectors.

    Args:
        model: a model with ``encode_context`` and ``score`` (``ZemelPolyEncoder``; ``inference_context`` is used
            when present).
        processor: its processor (``encode_contexts``).
        vectors: the ``(N, H)`` candidate cache in KB order: a tensor, or an object whose ``[list]`` gives rows
            (an index's ``CodeVectors``, decoded from compressed codes). ``None``: the linker can only encode.
        searcher: an object with ``search(queries (Q, H) numpy, k) -> (scores, positions)`` (an ``EntityIndex``),
            used for KBs above ``exact_threshold`` entities.
        device: where the model runs and the cache lives (default: the model's device).
        bf16: bf16 autocast for context encoding and exhaustive top-k selection (rescoring stays float32).
        context_bf16: bf16 autocast for context encoding alone (default: ``bf16``). ``False`` with ``bf16=True``:
            float32 contexts (so float32 scores) with a bf16 selection, what a retriever whose scores are fused with a
            reranker's uses (:meth:`~modeling_mel.entity_index.EntityIndex.dense_linker`).
        exact_threshold: KBs up to this size are scored exhaustively.
        max_length: the context length (default: the model's ``config.context_max_length``, as trained).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        vectors: Any = None,
        searcher: Any = None,
        device: Any = None,
        bf16: bool = False,
        exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
        max_length: int | None = None,
        context_bf16: bool | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.to(self.device)
        self.vectors = vectors
        self.searcher = searcher
        self.bf16 = bool(bf16)
        self.context_bf16 = self.bf16 if context_bf16 is None else bool(context_bf16)
        self.exact_threshold = int(exact_threshold)
        self.max_length = int(max_length) if max_length else None
        self._decoded: torch.Tensor | None = None
        self._bf16_cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.vectors is None else len(self.vectors)

    @property
    def poly(self) -> bool:
        return getattr(self.model.config, "scoring", "poly") == "poly"

    # -- the candidate cache --------------------------------------------------------------------------------------
    def _need_vectors(self) -> None:
        if self.vectors is None:
            raise ValueError("dense retrieval needs candidate vectors: pass a ZEMEL model or an entity index as kb")

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """Candidate vectors ``(*positions.shape, H)`` (float32, on the device) at KB ``positions``."""
        self._need_vectors()
        if isinstance(self.vectors, torch.Tensor):
            return self.vectors[positions.to(self.vectors.device)].float()
        rows = self.vectors[positions.reshape(-1).tolist()]  # CodeVectors: decodes these rows only
        return torch.as_tensor(rows, dtype=torch.float32, device=self.device).reshape(*positions.shape, -1)

    def all_vectors(self) -> torch.Tensor:
        """The whole ``(N, H)`` cache as a tensor (decoded once from compressed codes)."""
        self._need_vectors()
        if isinstance(self.vectors, torch.Tensor):
            return self.vectors
        if self._decoded is None:
            self._decoded = self.gather(torch.arange(len(self)))
        return self._decoded

    def _bf16_vectors(self) -> torch.Tensor:
        if self._bf16_cache is None or self._bf16_cache.device != self.device:
            self._bf16_cache = self.all_vectors().to(self.device, torch.bfloat16)
        return self._bf16_cache

    # -- contexts -------------------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], spans: Sequence[Any], regions: Sequence[Any] | None = None) -> Any:
        """Context outputs (float32) of one batch through the model's fast path."""
        max_length = self.max_length or trained_lengths(self.model)[0]
        enc = self.processor.encode_contexts(list(texts), list(spans), regions=regions, max_length=max_length)
        enc = {key: value.to(self.device) for key, value in enc.items()}
        dtype = torch.bfloat16 if self.context_bf16 else None
        if hasattr(self.model, "inference_context"):
            return self.model.inference_context(**enc, autocast_dtype=dtype)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.context_bf16):
                return self.model.encode_context(**enc)
        finally:
            self.model.train(was_training)

    def encode_batches(
        self,
        texts: Sequence[str],
        spans: Sequence[Any],
        regions: Callable[[int], Any] | None = None,
        batch_size: int = 64,
        keep: Callable[[int], bool] | None = None,
        progress: bool = False,
        desc: str = "encoding contexts",
    ) -> Iterator[tuple[list[int], Any]]:
        """``(indices, context outputs)`` of the texts in length-sorted batches (the ones ``keep`` accepts)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        if keep is not None:
            order = [i for i in order if keep(i)]
        starts = range(0, len(order), int(batch_size))
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, unit="batch")
        for start in starts:
            idx = order[start : start + int(batch_size)]
            reg = [regions(i) for i in idx] if regions is not None else None
            yield idx, self.encode([texts[i] for i in idx], [spans[i] for i in idx], reg)

    # -- scoring --------------------------------------------------------------------------------------------------
    def whole_kb_scores(self, context: Any, chunk: int = 8192) -> torch.Tensor:
        """Scores ``(B, N)`` (float32, CPU) of a batch against every entity, ``chunk`` entities at a time; under
        ``bf16`` the product runs on a bf16 copy of the cache (the exhaustive selection; kept candidates are then
        rescored in float32 by :meth:`rescore`)."""
        cache = self._bf16_vectors() if self.bf16 else self.all_vectors()
        parts = []
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for a in range(0, cache.shape[0], int(chunk)):
                parts.append(self.model.score(context, cache[a : a + int(chunk)]).float().cpu())
        return torch.cat(parts, dim=1)

    def top_k(self, context: Any, k: int, kb_scores: torch.Tensor | None = None) -> list[list[int]]:
        """The dense candidates of each context: the exhaustive top ``k`` (KB up to ``exact_threshold`` entities, or
        no index; ``kb_scores``: this batch's :meth:`whole_kb_scores` when the caller has them; under bf16 a few more,
        see :data:`BF16_OVERFETCH`), else the union of the index's top ``k`` over the poly codes. Not yet rescored:
        :meth:`link_context` keeps the ``k`` best by the float32 score."""
        self._need_vectors()
        n = len(self)
        k = min(int(k), n)
        if k < 1:
            return [[] for _ in range(context.pooled_output.shape[0])]
        if self.searcher is None or n <= self.exact_threshold:
            scores = kb_scores if kb_scores is not None else self.whole_kb_scores(context)
            if self.bf16:  # bf16 scores select more than k, so the float32 rescoring decides the k-th place too
                k = min(n, k + max(k, BF16_OVERFETCH))
            return scores.topk(k, dim=1).indices.tolist()

        def search(queries: torch.Tensor, kk: int) -> list[list[int]]:
            _, idx = self.searcher.search(queries.detach().float().cpu().numpy(), kk)
            return [[int(i) for i in row if i >= 0] for row in idx]

        return search_union(context, k, search, self.poly)

    def rescore(self, context: Any, rows: Sequence[Sequence[int]]) -> list[list[float]]:
        """Float32 scores of each context against its own candidate positions (same order as ``rows[i]``)."""
        kmax = max((len(r) for r in rows), default=0)
        if kmax == 0:
            return [[] for _ in rows]
        index = torch.zeros(len(rows), kmax, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                index[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        with torch.inference_mode():
            scores = self.model.score(context, self.gather(index)).float().cpu()  # (B, Kmax); padding ignored below
        return [scores[i, : len(r)].tolist() for i, r in enumerate(rows)]

    def rank(self, context: Any, rows: Sequence[Sequence[int]]) -> list[list[tuple[int, float]]]:
        """:meth:`rescore` then the package's tie rule: ``[(position, score), ...]`` best first per context."""
        return [rank_by_score(r, s) for r, s in zip(rows, self.rescore(context, rows))]

    def link_context(
        self, context: Any, k: int, extra: Sequence[Sequence[int]] | None = None, kb_scores: torch.Tensor | None = None
    ) -> list[list[tuple[int, float]]]:
        """Ranked candidates of an encoded batch: its dense top ``k`` (rescored) plus the ``extra`` positions of
        each context (e.g. name-rule or BM25 candidates), every one scored by the model."""
        dense = self.top_k(context, k, kb_scores)
        rows = [list(dict.fromkeys(d + list(extra[b] if extra is not None else []))) for b, d in enumerate(dense)]
        out = []
        for b, row in enumerate(self.rank(context, rows)):
            # the k best of the dense candidates (by the rescored score), plus every extra candidate
            dense_set, added = set(dense[b]), set(extra[b]) if extra is not None else set()
            kept, n_dense = [], 0
            for p, s in row:
                if p in dense_set and n_dense < int(k):
                    kept.append((p, s))
                    n_dense += 1
                elif p in added:
                    kept.append((p, s))
            out.append(kept)
        return out

    def link(
        self,
        texts: Sequence[str],
        spans: Sequence[Any],
        k: int,
        extra: Sequence[Sequence[int]] | None = None,
        regions: Callable[[int], Any] | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> list[list[tuple[int, float]]]:
        """:meth:`link_context` over whole lists of mentions, encoded in length-sorted batches; one ranked list per
        text, in input order."""
        if extra is not None and len(extra) != len(texts):
            raise ValueError(f"extra has {len(extra)} candidate lists for {len(texts)} texts")
        out: list[list[tuple[int, float]]] = [[] for _ in texts]
        for idx, context in self.encode_batches(texts, spans, regions, batch_size, progress=progress, desc="linking"):
            sub = [extra[i] for i in idx] if extra is not None else None
            for i, ranked in zip(idx, self.link_context(context, k, sub)):
                out[i] = ranked
        return out

    def gold_ranks(self, context: Any, gold: Sequence[int], chunk: int = 8192) -> list[int]:
        """The rank of each context's gold position among every entity (the field's protocol): ``1 +`` the number of
        entities scored strictly higher (ties go to the gold). Scores as :meth:`whole_kb_scores`."""
        scores = self.whole_kb_scores(context, chunk)
        g = torch.tensor(list(gold), dtype=torch.long)
        gold_scores = scores[torch.arange(len(g)), g].unsqueeze(1)
        return [int(r) + 1 for r in (scores > gold_scores).sum(dim=1).tolist()]


__all__ = ["DenseLinker", "DEFAULT_EXACT_THRESHOLD", "row_text", "row_span", "search_union", "trained_lengths"]
