"""Candidate generation for multimodal entity linking: the one owner of every candidate source.

* ZEMEL (zero-shot): :class:`Bm25RuleCandidates`, BM25 over entity names merged with three rules.
* PFMEL name rule: :func:`name_contains_candidates`, :class:`NameRuleCandidates` (entities whose user name
  contains the mention), :func:`closest_first` (its order: exact name, shorter names, KB order) and
  :func:`candidate_report` (recall / size of any generator).
* Dense: the poly-code (or pooled-vector) search over cached entity vectors is the dense linker's
  (:mod:`modeling_mel.linking_dense`).

This file is shipped with saved models (the pipeline imports it), so it imports only the standard library and numpy
at module level; ``bm25s`` is imported when a BM25 generator is built (``ValueError`` naming the fix without it).
"""

from __future__ import annotations

# ======================================================================================================================
# ZEMEL candidates: BM25 over entity names merged with three partial-matching rules (ZEMEL paper, section 4.3)
# ======================================================================================================================

import logging as _zemel_logging
import re as _zemel_re
from typing import Sequence as _Sequence

import numpy as _np

_zemel_logger = _zemel_logging.getLogger(__name__)

_WORD_RE = _zemel_re.compile(r"\w+", _zemel_re.UNICODE)

#: Words that never count as "shared words" (rule 1) and are not BM25 terms.
ZEMEL_STOPWORDS = frozenset(
    "a an and are as at be by de for from in is it la le of on or the to with".split()
)


def _zemel_words(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+``) of a name or mention."""
    return _WORD_RE.findall(str(text or "").lower())


class Bm25RuleCandidates:
    """Zero-shot candidate generation of ZEMEL: BM25 over entity names merged with three rules.

    Rules (mention vs. entity name, both lower-cased and split into ``\\w+`` words):

    1. *shared words*: the name has at least ``min_shared_words`` non-stopword words in common with the mention;
    2. *containment*: the name's word sequence is contained in the mention's, or contains it (whole words; the
       contained side must hold a non-stopword, so "the" matches nothing);
    3. *initials*: the first letters of ALL words of the mention, concatenated, equal the name with spaces and
       punctuation removed (case-insensitive). E.g. mention ``"New York City"`` -> ``"nyc"`` matches an entity named
       ``"NYC"``. This is the paper's rule as written ("the entity name exactly pairs the first letters of all words
       in the context entity mention"); ``symmetric_initials=True`` also matches the reverse (mention ``"NYC"`` vs
       name ``"New York City"``).

    Deterministic merge: every entity with a rule hit or a positive BM25 score is a candidate; candidates are
    ordered by (number of rules matched, descending), then BM25 score (descending), then KB order (ascending); the
    first ``k`` are returned. Fewer than ``k`` come back when fewer entities match at all.

    All rule look-ups use indexes built once (word -> entity postings, exact name -> entities, compact name ->
    entities), so a query touches only the entities sharing a word with it, plus one vectorised BM25 pass.

    Args:
        entity_ids: ids of the KB entities, in KB order.
        names: their names (same order).
        min_shared_words: rule 1 threshold (default 1).
        symmetric_initials: also match the initials of the name against the mention.
        k1, b: BM25 parameters (``bm25s``, Lucene variant).
    """

    def __init__(
        self,
        entity_ids: _Sequence[str],
        names: _Sequence[str],
        min_shared_words: int = 1,
        symmetric_initials: bool = False,
        k1: float = 1.5,
        b: float = 0.75,
    ):
        try:
            import bm25s
        except ImportError as err:  # the model's code without the package's dependencies
            raise ValueError(
                "BM25 candidates need the bm25s package (pip install modeling-mel, or pip install bm25s); "
                "use candidates='dense' or 'rule' without it"
            ) from err

        if len(entity_ids) != len(names):
            raise ValueError(f"{len(entity_ids)} entity ids but {len(names)} names")
        if int(min_shared_words) < 1:
            raise ValueError(f"min_shared_words must be >= 1, got {min_shared_words!r}")
        self.entity_ids = [str(e) for e in entity_ids]
        self.names = [str(n) for n in names]
        self.min_shared_words = int(min_shared_words)
        self.symmetric_initials = bool(symmetric_initials)
        words = [_zemel_words(n) for n in self.names]
        self._name_keys = [" ".join(w) for w in words]

        postings: dict[str, list[int]] = {}
        exact: dict[str, list[int]] = {}
        compact: dict[str, list[int]] = {}
        initials: dict[str, list[int]] = {}
        for i, ws in enumerate(words):
            for w in set(ws):
                postings.setdefault(w, []).append(i)
            if ws:
                exact.setdefault(" ".join(ws), []).append(i)
                compact.setdefault("".join(ws), []).append(i)
                if self.symmetric_initials:
                    initials.setdefault("".join(w[0] for w in ws), []).append(i)
        self._postings = {w: _np.asarray(ix, dtype=_np.int64) for w, ix in postings.items()}
        self._exact = {k: _np.asarray(v, dtype=_np.int64) for k, v in exact.items()}
        self._compact = {k: _np.asarray(v, dtype=_np.int64) for k, v in compact.items()}
        self._initials = {k: _np.asarray(v, dtype=_np.int64) for k, v in initials.items()}

        self._bm25 = bm25s.BM25(k1=k1, b=b)
        corpus = [[w for w in ws if w not in ZEMEL_STOPWORDS] or ws for ws in words]
        self._bm25.index(corpus, show_progress=False)
        _zemel_logger.info("Bm25RuleCandidates: indexed %d entity names (%d words)", len(self.names), len(self._postings))

    def __len__(self) -> int:
        return len(self.entity_ids)

    # -- rules -----------------------------------------------------------------------------------------------------
    def rule_hits(self, mention: str) -> dict[int, int]:
        """KB positions matched by the rules -> number of rules matched (1..3)."""
        counts = self._rule_counts(mention)
        hit = _np.flatnonzero(counts)
        return dict(zip(hit.tolist(), counts[hit].tolist()))

    def _rule_counts(self, mention: str) -> _np.ndarray:
        """Number of rules (0..3) each KB position matches, as an array in KB order (vectorised: a common word can
        match thousands of names)."""
        counts = _np.zeros(len(self.entity_ids), dtype=_np.int64)
        ws = _zemel_words(mention)
        if not ws:
            return counts

        def add(ix) -> None:  # one count per position however often it occurs in ix
            hit = _np.zeros(len(counts), dtype=bool)
            hit[ix] = True
            counts[hit] += 1

        # Rule 1: shared (non-stopword) words.
        content = [self._postings[w] for w in set(ws) if w not in ZEMEL_STOPWORDS and w in self._postings]
        if content:
            shared = _np.bincount(_np.concatenate(content), minlength=len(counts))  # shared words per name
            add(_np.flatnonzero(shared >= self.min_shared_words))
        # Rule 2a: the name is contained in the mention (the name equals a contiguous n-gram of the mention).
        contained = [
            self._exact[g]
            for g in {" ".join(ws[a:z]) for a in range(len(ws)) for z in range(a + 1, len(ws) + 1)}
            if g in self._exact and any(w not in ZEMEL_STOPWORDS for w in g.split())
        ]
        # Rule 2b: the name contains the mention (candidates share all mention words; check word boundaries).
        containing = []
        lists = [self._postings.get(w) for w in set(ws)]
        if all(p is not None for p in lists) and any(w not in ZEMEL_STOPWORDS for w in ws):
            common = lists[0]
            for p in lists[1:]:
                common = _np.intersect1d(common, p, assume_unique=True)
            key = f" {' '.join(ws)} "
            containing = [_np.asarray([i for i in common.tolist() if key in f" {self._name_keys[i]} "], dtype=_np.int64)]
        rule2 = contained + containing
        if rule2:
            add(_np.concatenate(rule2))
        # Rule 3: initials of the mention's words equal the (compacted) name.
        rule3 = []
        initials = "".join(w[0] for w in ws)
        if initials in self._compact:
            rule3.append(self._compact[initials])
        if self.symmetric_initials and "".join(ws) in self._initials:
            rule3.append(self._initials["".join(ws)])
        if rule3:
            add(_np.concatenate(rule3))
        return counts

    def bm25_scores(self, mention: str) -> _np.ndarray:
        """BM25 score of every entity name for `mention` (float32, KB order)."""
        ws = [w for w in _zemel_words(mention) if w not in ZEMEL_STOPWORDS] or _zemel_words(mention)
        if not ws:
            return _np.zeros(len(self.entity_ids), dtype=_np.float32)
        return _np.asarray(self._bm25.get_scores(ws), dtype=_np.float32)

    # -- retrieval -------------------------------------------------------------------------------------------------
    def _rank(self, mention: str, k: int) -> list[tuple[int, int, float]]:
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        scores = self.bm25_scores(mention)
        counts = self._rule_counts(mention)
        positive = _np.flatnonzero(scores > 0)
        if positive.size > k:  # only the k best BM25-only entries can make the cut
            positive = positive[_np.argpartition(-scores[positive], k - 1)[:k]]
        pool = _np.union1d(positive, _np.flatnonzero(counts))
        if pool.size == 0:
            return []
        n_rules = counts[pool]
        order = _np.lexsort((pool, -scores[pool], -n_rules))[:k]  # last key is primary
        return [(int(pool[o]), int(n_rules[o]), float(scores[pool[o]])) for o in order]

    def __call__(self, mention: str, k: int = 100) -> list[str]:
        """Top-`k` candidate entity ids for `mention` (see the class docstring for the merge order)."""
        return [self.entity_ids[i] for i, _, _ in self._rank(mention, k)]

    def scored(self, mention: str, k: int = 100) -> list[tuple[str, int, float]]:
        """Like ``__call__`` with ``(entity_id, rules_matched, bm25_score)`` triples."""
        return [(self.entity_ids[i], r, s) for i, r, s in self._rank(mention, k)]

    def retrieve(self, mentions: _Sequence[str], k: int = 100) -> list[list[str]]:
        """Top-`k` candidate ids for each mention."""
        return [self(m, k) for m in mentions]

    def recall_at_k(self, mentions: _Sequence[str], gold_ids: _Sequence[str], k=(5, 100)) -> dict[str, float]:
        """Fraction of mentions whose gold entity is among the top-k candidates, for each k in `k` (int or list).

        Returns ``{"recall@5": ..., "recall@100": ..., "n": number of mentions}``.
        """
        if len(mentions) != len(gold_ids):
            raise ValueError(f"{len(mentions)} mentions but {len(gold_ids)} gold ids")
        ks = [int(k)] if isinstance(k, int) else [int(x) for x in k]
        ranked = [self(m, max(ks)) for m in mentions]
        report: dict[str, float] = {}
        for kk in ks:
            hits = sum(str(g) in c[:kk] for c, g in zip(ranked, gold_ids))
            report[f"recall@{kk}"] = hits / len(mentions) if mentions else 0.0
        report["n"] = float(len(mentions))
        _zemel_logger.info("candidate recall: %s", report)
        return report


# ======================================================================================================================
# PFMEL candidates: the name rule (Li et al. 2022: "entities whose user name contains the mention") and a report
# ======================================================================================================================

import bisect as _pfmel_bisect
from typing import Any as _Any
from typing import Callable as _Callable
from typing import Iterable as _Iterable
from typing import Mapping as _Mapping


def name_contains_candidates(mention: str, kb_names: _Sequence[str]) -> list[int]:
    """Indices of the names that contain ``mention``, case-insensitive (PFMEL's candidate rule).

    Example: ``name_contains_candidates("wiggins", ["Andrew Wiggins", "Bradley Wiggins", "Tom"])``
    is ``[0, 1]``. An empty mention has no candidates.
    """
    needle = str(mention or "").strip().lower()
    if not needle:
        return []
    return [i for i, name in enumerate(kb_names) if needle in str(name or "").lower()]


def closest_first(hits: _Iterable[int], lower_names: _Sequence[str], mention: str) -> list[int]:
    """Name-rule hits (KB positions) ordered by closeness of name to ``mention``: the exact name first, then shorter
    names, then KB order. The one order of PFMEL's candidates (training data, evaluation, pipeline), so that a cap on
    the number of candidates cuts the same list everywhere."""
    key = str(mention or "").strip().lower()
    return sorted(dict.fromkeys(hits), key=lambda i: (lower_names[i] != key, len(lower_names[i]), i))


def _pfmel_kb_records(kb: _Any) -> list[_Mapping[str, _Any]]:
    """KB rows as mappings: a ``datasets.Dataset``, a list of dicts, or ``{entity_id: name}``."""
    if isinstance(kb, _Mapping):
        return [{"entity_id": str(k), "name": v} for k, v in kb.items()]
    if hasattr(kb, "column_names") and hasattr(kb, "select_columns"):  # datasets.Dataset: skip images
        cols = [c for c in ("entity_id", "name", "screen_name") if c in kb.column_names]
        data = kb.select_columns(cols).to_dict()
        return [dict(zip(cols, vals)) for vals in zip(*(data[c] for c in cols))]
    return list(kb)


class NameRuleCandidates:
    """PFMEL's rule as a callable: ``rule(mention) -> [entity_id, ...]`` (KB order).

    The lower-cased names are joined into one string once; a query is a few ``str.find`` scans over
    it (C speed) plus a bisect from match positions to entities, so a 100k-entity KB answers in
    about a millisecond. Results are memoized per lower-cased mention.

    Args:
        kb: a ``datasets.Dataset`` or list of mappings with ``entity_id`` and ``name`` (the KB config
            of any corpus builder), or a mapping ``{entity_id: name}``.
        fields: which fields are searched; PFMEL uses the user ``name`` only. Add ``"screen_name"``
            to also match the handle.
        cache_size: number of memoized mentions (0 disables the cache).
    """

    _SEP = "\x00"

    def __init__(self, kb: _Any, fields: _Sequence[str] = ("name",), cache_size: int = 100_000):
        records = _pfmel_kb_records(kb)
        self.entity_ids: list[str] = [str(r["entity_id"]) for r in records]
        self.fields = tuple(fields)
        starts, pieces, owners, pos = [], [], [], 0
        for i, r in enumerate(records):
            for f in self.fields:
                text = str(r.get(f) or "").lower().replace(self._SEP, " ")
                starts.append(pos)
                owners.append(i)
                pieces.append(text)
                pos += len(text) + 1
        self._first_field = [r.get(self.fields[0]) if self.fields else "" for r in records]
        self._lower_first: list[str] | None = None
        self._haystack = self._SEP.join(pieces)
        self._starts = starts
        self._owners = owners
        self._cache: dict[str, list[int]] = {}
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.entity_ids)

    def indices(self, mention: str) -> list[int]:
        """KB row indices of the candidates of ``mention`` (sorted, no duplicates)."""
        needle = str(mention or "").strip().lower()
        if not needle or self._SEP in needle:
            return []
        hit = self._cache.get(needle)
        if hit is not None:
            return list(hit)
        found: set[int] = set()
        hay, find = self._haystack, self._haystack.find
        pos = find(needle)
        while pos != -1:
            piece = _pfmel_bisect.bisect_right(self._starts, pos) - 1
            found.add(self._owners[piece])
            # jump to the next field: one match per field is enough
            nxt = self._starts[piece + 1] if piece + 1 < len(self._starts) else len(hay)
            pos = find(needle, max(pos + 1, nxt))
        out = sorted(found)
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[needle] = out
        return list(out)

    def __call__(self, mention: str) -> list[str]:
        """Entity ids whose name contains ``mention`` (case-insensitive), in KB order."""
        return [self.entity_ids[i] for i in self.indices(mention)]

    def closest(self, mention: str, k: int | None = None) -> list[int]:
        """KB positions of the candidates of ``mention`` in :func:`closest_first` order (by the first searched
        field), the first ``k`` (all when ``k`` is ``None`` or 0)."""
        if self._lower_first is None:
            self._lower_first = [str(r or "").lower() for r in self._first_field]
        ranked = closest_first(self.indices(mention), self._lower_first, mention)
        return ranked[:k] if k else ranked


# -- report (works for any generator, including Bm25RuleCandidates) ---------------------------------------------------


def _pfmel_key(entity_id: _Any) -> str:
    return str(entity_id or "").strip().lstrip("@").lower()


def candidate_report(
    mentions: _Iterable[_Mapping[str, _Any]],
    kb: _Any,
    generator: _Callable[[str], _Sequence[_Any]],
) -> dict[str, float]:
    """Quality of a candidate generator over gold-annotated mentions.

    Args:
        mentions: rows with ``mention`` and ``entity_id`` (e.g. a split of the ``mentions`` config).
            Only these two columns are read from a ``datasets.Dataset`` (images are not decoded).
        kb: the KB (as for :class:`NameRuleCandidates`); used to map integer candidates (row
            indices) to entity ids.
        generator: ``generator(mention_text) -> candidates``, entity ids or KB row indices.

    Returns:
        ``candidate_recall``: share of mentions whose gold entity is among the candidates;
        ``mean_candidates``: mean number of candidates; ``empty``: number of mentions with no
        candidate; ``n_mentions``. Entity ids are compared case-insensitively, ``@`` stripped.
    """
    if hasattr(mentions, "column_names") and hasattr(mentions, "select_columns"):
        data = mentions.select_columns(["mention", "entity_id"]).to_dict()
        mentions = [{"mention": m, "entity_id": e} for m, e in zip(data["mention"], data["entity_id"])]
    entity_ids = [str(r["entity_id"]) for r in _pfmel_kb_records(kb)] if kb is not None else []
    n = hits = total = empty = 0
    for row in mentions:
        cands = list(generator(row["mention"]))
        ids = {_pfmel_key(entity_ids[c] if isinstance(c, int) and not isinstance(c, bool) else c) for c in cands}
        n += 1
        total += len(cands)
        empty += not cands
        hits += _pfmel_key(row["entity_id"]) in ids
    return {
        "candidate_recall": hits / n if n else 0.0,
        "mean_candidates": total / n if n else 0.0,
        "empty": empty,
        "n_mentions": n,
    }

