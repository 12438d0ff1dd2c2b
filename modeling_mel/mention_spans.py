"""Locating a mention in its text: case-insensitive occurrence, else normalised token alignment.

:func:`align_mention` is the one alignment function of the package: the corpus builders (``corpus.resolve_offsets``),
the pipeline and :class:`~modeling_mel.processing_zemel.ZemelProcessor` call it. Words are compared by
:func:`normalize_token` (case and diacritics ignored), text and mention in one Unicode normal form
(:data:`ALIGN_FORM`), and the offsets returned always index the original text.

This file ships with saved ZEMEL models (``processing_zemel.py`` imports it): it imports only the standard library.
"""

from __future__ import annotations

import bisect
import re
import unicodedata

_WORD = re.compile(r"[^\W_]+")
# letters that NFKD does not decompose into a base letter + combining mark
_FOLD = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "æ": "ae",
                       "Æ": "AE", "œ": "oe", "Œ": "OE", "ı": "i", "þ": "th", "Þ": "TH"})
ALIGN_MAX_TEXT_GAP = 2  # text tokens skipped between two aligned mention tokens ("von", "van der", "of the")
ALIGN_MAX_MENTION_GAP = 2  # mention tokens skipped between two aligned ones (the text drops them)


def normalize_token(token: str) -> str:
    """A word compared without case or diacritics: ``"Kératry"`` -> ``"keratry"``, ``"Heß"`` -> ``"hess"``."""
    token = unicodedata.normalize("NFKD", token.translate(_FOLD))
    return "".join(c for c in token if not unicodedata.combining(c)).casefold()


def word_tokens(text: str) -> list[tuple[str, int, int]]:
    """``(normalised word, start, end)`` of each run of letters and digits of ``text`` (offsets into ``text``)."""
    out = []
    for m in _WORD.finditer(text):
        norm = normalize_token(m.group())
        if norm:
            out.append((norm, m.start(), m.end()))
    return out


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by at most one inserted, deleted or replaced letter."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i + (len(a) == len(b)) :] == b[i + 1 :]


def _word_match(text_word: str, mention_word: str) -> int:
    """Letters credited for aligning two normalised words: all when equal; one less for a one-letter slip between
    words of 5+ letters ("Sangershausen"/"Sangerhausen", "Hambuechen"/"Hambüchen"); 0 when they do not match."""
    if text_word == mention_word:
        return len(mention_word)
    if min(len(text_word), len(mention_word)) >= 5 and _one_edit(text_word, mention_word):
        return len(mention_word) - 1
    return 0


def _token_alignment(text: str, mention: str, near: int | None = None) -> tuple[int, int] | None:
    """Character span of the best in-order alignment of the mention's words with the text's words, or None.

    Words are compared by :func:`normalize_token` (a one-letter slip is allowed in words of 5+ letters). Between two aligned words the text may hold up to
    ``ALIGN_MAX_TEXT_GAP`` extra words ("Hermann [von] Beckerath") and the mention up to ``ALIGN_MAX_MENTION_GAP``
    words the text lacks ("Karl Robert Eduard [von] Hartmann"); words of the mention before the first or after the
    last aligned word are skipped too. An alignment counts when its words hold at least half of the mention's letters.
    Best first: most aligned letters, fewest skipped text words, start nearest to ``near`` (else the earliest).
    """
    m = [w for w, _, _ in word_tokens(mention)]
    t = word_tokens(text)
    if not m or not t:
        return None
    weight = [len(w) for w in m]
    best: dict[tuple[int, int], tuple[int, int, int]] = {}  # (j, i) -> (letters, -skipped text words, first i)
    for i, (word, _, _) in enumerate(t):
        for j, w in enumerate(m):
            credit = _word_match(word, w)
            if not credit:
                continue
            chain = (credit, 0, i)
            for i2 in range(max(0, i - ALIGN_MAX_TEXT_GAP - 1), i):
                for j2 in range(max(0, j - ALIGN_MAX_MENTION_GAP - 1), j):
                    prev = best.get((j2, i2))
                    if prev is not None:
                        cand = (prev[0] + credit, prev[1] - (i - i2 - 1), prev[2])
                        if cand[:2] > chain[:2]:
                            chain = cand
            best[(j, i)] = chain
    total = sum(weight)
    options = []
    for (_, last), (letters, gaps, first) in best.items():
        if 2 * letters >= total:
            dist = abs(t[first][1] - near) if near is not None else t[first][1]
            options.append((-letters, -gaps, dist, first, last))
    if not options:
        return None
    *_, first, last = min(options)
    return t[first][1], t[last][2]


def _span_fits(text: str, mention: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is the mention: equal without case, or its token alignment spans it exactly."""
    piece = text[start:end]
    if piece.casefold() == mention.casefold():
        return True
    return _token_alignment(piece, mention) == (len(piece) - len(piece.lstrip()), len(piece.rstrip()))


def _bounded(text: str, start: int, end: int) -> bool:
    return (start == 0 or not text[start - 1].isalnum() or not text[start].isalnum()) and (
        end == len(text) or not text[end].isalnum() or not text[end - 1].isalnum()
    )


def align_mention(text: str, mention: str, start: int | None = None, end: int | None = None) -> tuple[int, int, str] | None:
    """Locate ``mention`` in ``text``: ``(start, end, status)`` with offsets into the ORIGINAL text, or None.

    Status, in the order tried:

    - ``"ok"``: the given ``text[start:end]`` is the mention (case ignored, or its words aligned exactly there);
    - ``"located"`` (no offsets given) / ``"repaired"`` (given offsets wrong): a case-insensitive occurrence, whole
      words preferred; with offsets, the one nearest to ``start``;
    - ``"aligned"``: not a substring, but the mention's words align with the text's words in order, ignoring case,
      punctuation and diacritics, skipping particles and extra words on either side ("Hermann Beckerath" ->
      "Hermann von Beckerath"; "Karl Robert Eduard von Hartmann" -> "Karl Robert Eduard Hartmann");
    - None: nothing aligns (keep the mention without a span).

    Text and mention are compared in one Unicode normal form (:data:`ALIGN_FORM`, NFKC): a precomposed "É" in the
    text matches a decomposed "E" + U+0301 in the mention and the reverse; the offsets still index the original text
    (a decomposed "É" spans its two code points).
    """
    mention = (mention or "").strip()
    if not mention or not text:
        return None
    if start is not None and end is not None and 0 <= start < end <= len(text) and _span_fits(text, mention, start, end):
        return start, end, "ok"
    if not (unicodedata.is_normalized(ALIGN_FORM, text) and unicodedata.is_normalized(ALIGN_FORM, mention)):
        return _align_normalized(text, mention, start, end)
    return _align(text, mention, start, end)


#: The Unicode normal form text and mention are compared in: "École" precomposed (U+00C9) and decomposed
#: ("E" + U+0301) are the same word, as are compatibility forms (full-width letters, ligatures).
ALIGN_FORM = "NFKC"


def _normalized_with_offsets(text: str) -> tuple[str, list[int], list[int]]:
    """``text`` in :data:`ALIGN_FORM`, with, for each of its characters, the ``[start, end)`` in ``text`` of the
    character cluster (a character and the combining marks after it) it comes from."""
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        piece = unicodedata.normalize(ALIGN_FORM, text[i:j])
        pieces.append(piece)
        starts.extend([i] * len(piece))
        ends.extend([j] * len(piece))
        i = j
    return "".join(pieces), starts, ends


def _align_normalized(text: str, mention: str, start: int | None, end: int | None) -> tuple[int, int, str] | None:
    """:func:`align_mention` where text or mention is not in :data:`ALIGN_FORM`: both are normalised (per character
    cluster), aligned, and the span mapped back to offsets into the ORIGINAL text."""
    norm, starts, ends = _normalized_with_offsets(text)
    norm_mention = unicodedata.normalize(ALIGN_FORM, mention).strip()
    if not norm or not norm_mention:
        return None
    n_start = bisect.bisect_left(starts, start) if start is not None else None
    n_end = bisect.bisect_left(starts, end) if end is not None else None
    found = _align(norm, norm_mention, n_start, n_end)
    if found is None:
        return None
    span = (starts[found[0]], ends[found[1] - 1])
    status = found[2]
    if status == "ok" and span != (start, end):
        status = "repaired"  # the given offsets cut a character cluster: the mention is the whole cluster span
    return span[0], span[1], status


def _align(text: str, mention: str, start: int | None, end: int | None) -> tuple[int, int, str] | None:
    """:func:`align_mention` on a text and a mention in the same normal form."""
    if start is not None and end is not None and 0 <= start < end <= len(text) and _span_fits(text, mention, start, end):
        return start, end, "ok"
    hits = [(h.start(), h.end()) for h in re.finditer(re.escape(mention), text, flags=re.IGNORECASE)]
    if hits:
        hits = [h for h in hits if _bounded(text, *h)] or hits
        if start is None:
            return hits[0][0], hits[0][1], "located"
        best = min(hits, key=lambda h: (abs(h[0] - start), h[0]))
        return best[0], best[1], "repaired"
    span = _token_alignment(text, mention, near=start)
    if span is None:
        return None
    return span[0], span[1], "aligned"

__all__ = ["ALIGN_FORM", "ALIGN_MAX_MENTION_GAP", "ALIGN_MAX_TEXT_GAP", "align_mention", "normalize_token", "word_tokens"]
