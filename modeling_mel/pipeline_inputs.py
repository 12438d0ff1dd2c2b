"""What a caller gives the linking pipeline, checked before any work: the input dicts
(:func:`check_linking_input`: text, mention or its offsets, image, boxes) and the call-time parameters
(:func:`call_parameters`: ``top_k``, ``candidates``, ``num_candidates``, ``nil_threshold``, ...), each refused with a
one-line ``ValueError``. ``mel link``, ``mel calibrate`` and the HTTP service check their rows with the same code
(``MultimodalEntityLinkingPipeline._check_input`` / ``_sanitize_parameters``).

This file ships with saved models next to the pipeline (a relative import of ``pipeline_entity_linking.py``): it
imports only the standard library, ``knowledge_base.py`` and, lazily, ``mention_spans.py`` (shipped beside it).
"""

from __future__ import annotations

from typing import Any, Mapping

from .knowledge_base import _as_int

#: ZEMEL candidate sources of a call (``candidates=``)
CANDIDATE_MODES = ("auto", "rule", "bm25", "dense", "all")
_NOT_GIVEN = object()


def check_linking_input(item: Any, position: int | None = None) -> dict:
    """One pipeline input checked and completed: ``{"text", "mention", "mention_start", "mention_end", "image"}``
    (``"boxes"`` too when given, as float lists); the mention located in the text when no offsets are given.
    ``ValueError`` naming the input (``input <position>`` in a list) and what is wrong."""
    where = "input" if position is None else f"input {position}"
    if isinstance(item, str):
        raise ValueError(
            f"{where} is a string ({item[:60]!r}); every input must be a dict "
            "{'text': ..., 'mention': ... (or 'mention_start'/'mention_end'), 'image': ...}"
        )
    if not isinstance(item, Mapping):
        raise ValueError(f"{where} is a {type(item).__name__}; expected a dict with 'text' and 'mention'")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: 'text' must be a non-empty string, got {text!r:.80}")
    from .mention_spans import align_mention

    mention = item.get("mention")
    start, end = item.get("mention_start"), item.get("mention_end")
    if start is not None or end is not None:
        try:
            start = _as_int(start)
            end = _as_int(end) if end is not None else start + len(mention or "")
        except (TypeError, ValueError):
            raise ValueError(f"{where}: mention_start/mention_end must be integers, got {start!r}/{end!r}") from None
        if not (0 <= start < end <= len(text)):
            raise ValueError(f"{where}: mention span ({start}, {end}) is not inside the text {text[:80]!r}")
        if mention is not None:
            found = align_mention(text, str(mention), start, end)
            if found is None or found[2] != "ok":  # the span must hold the mention (case ignored, or aligned)
                raise ValueError(
                    f"{where}: mention {mention!r} is not at ({start}, {end}) of the text {text[:80]!r} "
                    f"(found {text[start:end]!r})"
                )
        if mention is None or text[start:end].casefold() == str(mention).strip().casefold():
            mention = text[start:end]
    else:
        if not isinstance(mention, str) or not mention.strip():
            raise ValueError(f"{where}: give 'mention' (a string) or 'mention_start'/'mention_end', got {mention!r}")
        # verbatim, case-insensitive, or aligned by tokens ("Hermann Beckerath" -> "Hermann von Beckerath");
        # a mention that aligns nowhere is linked without a span (ZEMEL marks it at the start of the context)
        found = align_mention(text, mention)
        start, end = (found[0], found[1]) if found is not None else (None, None)
        if found is not None and found[2] == "located" and text[start:end].casefold() == mention.strip().casefold():
            mention = text[start:end]
    out = {"text": text, "mention": mention, "mention_start": start, "mention_end": end, "image": item.get("image")}
    if item.get("boxes") is not None:
        out["boxes"] = [list(map(float, b)) for b in item["boxes"]]
    return out


def call_parameters(
    top_k: int | None = None,
    candidates: str | None = None,
    num_candidates: int | None = None,
    pair_batch_size: int | None = None,
    max_length: int | None = None,
    nil_threshold: Any = _NOT_GIVEN,
    retriever_k: int | None = None,
    **unknown: Any,
) -> tuple[dict, dict, dict]:
    """The call-time parameters checked and split as ``Pipeline._sanitize_parameters`` returns them: (preprocess,
    forward, postprocess) keyword dicts; ``ValueError`` for an unknown parameter, one that can only be set when the
    pipeline is built, or a bad value."""
    if unknown:
        fixed = {"kb", "retriever", "image_extractor", "use_images", "strict_images", "index_batch_size", "exact_threshold",
                 "bf16", "retriever_model", "allow_weight_mismatch", "max_image_pixels"}
        names = sorted(unknown)
        if set(names) & fixed:
            raise ValueError(f"{names} can only be set when the pipeline is built, not per call")
        raise ValueError(
            f"unknown pipeline parameter(s) {names}; known: top_k, candidates, num_candidates, pair_batch_size, "
            "max_length, nil_threshold, retriever_k, batch_size"
        )
    pre, fwd, post = {}, {}, {}
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k!r}")
        post["top_k"] = fwd["top_k"] = int(top_k)
    if candidates is not None:
        if candidates not in CANDIDATE_MODES:
            raise ValueError(f"unknown candidates {candidates!r}; expected one of {CANDIDATE_MODES}")
        fwd["candidates"] = candidates
    if num_candidates is not None:
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int):
            raise ValueError(f"num_candidates must be an integer >= 1, got {num_candidates!r}")
        if int(num_candidates) < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates!r}")
        fwd["num_candidates"] = int(num_candidates)
    if pair_batch_size is not None:
        if int(pair_batch_size) < 1:
            raise ValueError(f"pair_batch_size must be >= 1, got {pair_batch_size!r}")
        fwd["pair_batch_size"] = int(pair_batch_size)
    if max_length is not None:
        fwd["max_length"] = int(max_length)
    if retriever_k is not None:
        if isinstance(retriever_k, bool) or not isinstance(retriever_k, int) or retriever_k < 1:
            raise ValueError(f"retriever_k must be an integer >= 1, got {retriever_k!r}")
        fwd["retriever_k"] = int(retriever_k)
    if nil_threshold is not _NOT_GIVEN:
        if nil_threshold is not None and (isinstance(nil_threshold, bool) or not isinstance(nil_threshold, (int, float))):
            raise ValueError(f"nil_threshold must be a number or None (off), got {nil_threshold!r}")
        if nil_threshold is not None and nil_threshold != nil_threshold:  # NaN: every comparison false, never NIL
            raise ValueError("nil_threshold is NaN, which would mean 'never NIL'; give a number, or None (off)")
        post["nil_threshold"] = None if nil_threshold is None else float(nil_threshold)
    return pre, fwd, post


__all__ = ["CANDIDATE_MODES", "call_parameters", "check_linking_input"]
