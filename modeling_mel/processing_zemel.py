"""Processor of :class:`ZemelPolyEncoder`: context / candidate templates and visual region inputs.

* Context: ``[CLS] ctx_l [M] mention [/M] ctx_r [SEP]`` with a token window centred on the mention (left and right
  context truncated evenly; a side shorter than its half gives the rest to the other side).
* Candidate: ``[CLS] name [ENT] description [SEP]`` (the description is truncated first).
* Mention location: a ``(start, end)`` span, or the mention string located by :func:`align_mention` (case-insensitive
  substring, else normalised token alignment: case, punctuation and diacritics ignored, particles skipped). A mention
  that aligns nowhere is marked at the start of the context: ``[CLS] [M] mention [/M] text [SEP]``.
* Regions: the whole image is the FIRST region (spatial ``[0, 0, 1, 1, 1]``), then the boxes with their spatial vector
  ``(x1/W, y1/H, x2/W, y2/H, area/(W*H))``; candidate images are each a whole-image region. Padded to ``max_regions``
  with ``visual_attention_mask`` 0.

This file ships with saved models: it imports only torch, transformers and the other ZEMEL files.
"""

from __future__ import annotations

import bisect
import logging
import re
import unicodedata
from typing import Any, Sequence

import torch
from transformers import AddedToken, BatchFeature, ProcessorMixin

from .configuration_zemel import DEFAULT_ENTITY_TOKEN, DEFAULT_MENTION_END_TOKEN, DEFAULT_MENTION_START_TOKEN

logger = logging.getLogger(__name__)

WHOLE_IMAGE_SPATIAL = (0.0, 0.0, 1.0, 1.0, 1.0)


def box_spatial(boxes: Sequence[Sequence[float]], width: float, height: float) -> list[list[float]]:
    """5-d spatial vectors of pixel boxes ``[x1, y1, x2, y2]`` in a ``width`` x ``height`` image.

    Raises ValueError naming the box for a box outside the image or with ``x2 <= x1`` / ``y2 <= y1``.
    The one definition of the spatial vector (``image_features.spatial_features``, the pipeline and the evaluation
    call it).
    """
    width, height = float(width), float(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    out = []
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"box {list(box)!r} must have 4 numbers [x1, y1, x2, y2]")
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"box {list(box)!r} is empty: expected [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ValueError(f"box {list(box)!r} lies outside the image of size {width:g}x{height:g}; clip it to the image")
        out.append([x1 / width, y1 / height, x2 / width, y2 / height, (x2 - x1) * (y2 - y1) / (width * height)])
    return out


# -- mention alignment (shared with the corpus builders and the pipeline; stdlib only) ----------------------------

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


def _as_2d(features: Any, where: str) -> torch.Tensor:
    t = torch.as_tensor(getattr(features, "numpy", lambda: features)() if isinstance(features, torch.Tensor) else features, dtype=torch.float32)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        raise ValueError(f"{where}: features of shape {tuple(t.shape)}; expected (n, feature_dim)")
    return t


def make_regions(
    image_feature: Any,
    box_features: Any = None,
    boxes: Sequence[Sequence[float]] | None = None,
    image_size: tuple[float, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Visual inputs of one image: the whole image first, then its boxes.

    `image_feature` `(D,)`; `box_features` `(n, D)` for `boxes` (pixel `[x1, y1, x2, y2]`) in an image of
    `image_size` `(W, H)`. Returns ``{"features": (1+n, D), "spatial": (1+n, 5)}``.
    """
    feats = [_as_2d(image_feature, "image_feature")]
    spatial = [list(WHOLE_IMAGE_SPATIAL)]
    if boxes is not None and len(boxes):
        if image_size is None:
            raise ValueError("image_size (W, H) is required with boxes")
        bf = _as_2d(box_features, "box_features")
        if bf.shape[0] != len(boxes):
            raise ValueError(f"{bf.shape[0]} box features for {len(boxes)} boxes")
        feats.append(bf)
        spatial += box_spatial(boxes, *image_size)
    return {"features": torch.cat(feats), "spatial": torch.tensor(spatial, dtype=torch.float32)}


def patch_grid_spatial(n_patches: int) -> list[list[float]]:
    """ZEMEL's 5-d spatial vectors of ``n`` patch tokens laid out as a square grid over the (cropped) image, row by
    row; the whole image for every patch when ``n`` is not a square."""
    side = int(round(n_patches ** 0.5))
    if side * side != n_patches:
        return [list(WHOLE_IMAGE_SPATIAL) for _ in range(n_patches)]
    return [[c / side, r / side, (c + 1) / side, (r + 1) / side, 1.0 / n_patches] for r in range(side) for c in range(side)]


def patch_regions(image_feature: Any, patch_features: Any) -> dict[str, torch.Tensor]:
    """Visual inputs of one image with ``image_regions="patches"``: the whole image first, then its patch tokens
    ``(P, D)`` (``ImageFeatureExtractor.encode_patches``) with grid spatial vectors. ``{"features": (1+P, D),
    "spatial": (1+P, 5)}``; the processor keeps the first ``max_regions``."""
    whole = _as_2d(image_feature, "image_feature")
    patches = _as_2d(patch_features, "patch_features") if patch_features is not None else whole[:0]
    spatial = [list(WHOLE_IMAGE_SPATIAL)] + patch_grid_spatial(int(patches.shape[0]))
    return {"features": torch.cat([whole, patches]), "spatial": torch.tensor(spatial, dtype=torch.float32)}


def regions_from_image(image: Any, boxes: Sequence[Sequence[float]], extractor: Any) -> dict[str, torch.Tensor]:
    """Region inputs of a PIL image / path with an ``ImageFeatureExtractor`` (``modeling_mel.image_features``):
    whole-image feature first (``extractor.encode``), then one crop feature per box (``extractor.encode_regions``)."""
    from PIL import Image

    pil = image if hasattr(image, "size") and not isinstance(image, str) else Image.open(image)
    pil = pil.convert("RGB")
    whole = extractor.encode([pil])[0]
    box_feats = extractor.encode_regions(pil, boxes) if len(boxes) else None
    return make_regions(whole, box_feats, boxes, pil.size)


CONTEXT_TEMPLATES = ("paper", "mention_first")
IMAGE_REGION_SOURCES = ("boxes", "patches")


class ZemelProcessor(ProcessorMixin):
    """Tokenizer and input builders for :class:`ZemelPolyEncoder`.

    Args:
        tokenizer: a BERT tokenizer; `[M]`, `[/M]`, `[ENT]` are registered on it as special tokens (resize the model
            with `model.resize_for_processor(processor)`).
        (No image processor attribute: transformers 5 processors cannot hold an optional ``None`` sub-processor.
        Region features come from ``modeling_mel.image_features.ImageFeatureExtractor``; see
        :func:`regions_from_image`.)
        max_regions (`int`, defaults to 10): regions per input after padding / truncation.
        feature_dim (`int`, defaults to 2048): size of one region feature.
        mention_start_token, mention_end_token, entity_token: the special tokens.
        image_encoder (`dict`, optional): the identity of the image encoder of training
            (``ImageFeatureExtractor.identity``, written by training; ``mel`` and the pipeline build that encoder and
            refuse another).
        image_regions (`str`, defaults to `"boxes"`): the regions after the whole image: `"boxes"` (one crop per
            box) or `"patches"` (the encoder's patch tokens, :func:`patch_regions`).
        context_template (`str`, defaults to `"paper"`): `"paper"` is the paper's
            ``[CLS] ctx_l [M] mention [/M] ctx_r [SEP]``; `"mention_first"` puts the mention once more in front,
            ``[CLS] mention . ctx_l [M] mention [/M] ctx_r [SEP]``, the way sentence-transformers checkpoints read a
            query best (WikiMEL dev, untrained MiniLM: whole-KB H@1 0.728 vs 0.612; see the README).
    """

    def __init__(
        self,
        tokenizer=None,
        max_regions: int = 10,
        feature_dim: int = 2048,
        mention_start_token: str = DEFAULT_MENTION_START_TOKEN,
        mention_end_token: str = DEFAULT_MENTION_END_TOKEN,
        entity_token: str = DEFAULT_ENTITY_TOKEN,
        context_template: str = "paper",
        image_encoder: dict | None = None,
        image_regions: str = "boxes",
        **kwargs,
    ):
        if context_template not in CONTEXT_TEMPLATES:
            raise ValueError(f"unknown context_template {context_template!r}; expected one of {CONTEXT_TEMPLATES}")
        self.context_template = context_template
        self.max_regions = int(max_regions)
        self.feature_dim = int(feature_dim)
        self.mention_start_token = mention_start_token
        self.mention_end_token = mention_end_token
        self.entity_token = entity_token
        # the identity of the image encoder of training (ImageFeatureExtractor.identity), and what a mention image's
        # regions after the whole image are: "boxes" (crops of its boxes) or "patches" (the encoder's patch tokens)
        self.image_encoder = None if image_encoder is None else dict(image_encoder)
        if image_regions not in IMAGE_REGION_SOURCES:
            raise ValueError(f"unknown image_regions {image_regions!r}; expected one of {IMAGE_REGION_SOURCES}")
        self.image_regions = image_regions
        if self.max_regions < 1:
            raise ValueError(f"max_regions must be >= 1, got {max_regions!r}")
        super().__init__(tokenizer, **kwargs)
        specials = [mention_start_token, mention_end_token, entity_token]
        missing = [t for t in specials if self.tokenizer.convert_tokens_to_ids(t) in (None, self.tokenizer.unk_token_id)]
        if missing:
            self.tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
        self.mention_start_id, self.mention_end_id, self.entity_id = (
            int(self.tokenizer.convert_tokens_to_ids(t)) for t in specials
        )

    @classmethod
    def from_backbone(cls, backbone: str | None = None, **kwargs) -> "ZemelProcessor":
        """A processor over the tokenizer of `backbone` (``"minilm"`` by default, see ``modeling_mel.backbones``)."""
        from .backbones import load_tokenizer

        return cls(load_tokenizer(backbone), **kwargs)

    # -- text ------------------------------------------------------------------------------------------------------
    def _tok(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    @staticmethod
    def _mention_text(span: Any) -> str | None:
        if isinstance(span, str):
            return span
        if isinstance(span, dict):
            return span.get("mention")
        return None

    @staticmethod
    def _find_mention(text: str, span: Any) -> tuple[int, int] | None:
        """Character span of the mention in ``text``; None when a mention given without offsets aligns nowhere.

        ``span``: the mention string (located by :func:`align_mention`), a ``(start, end)`` span, or a dict with
        ``mention`` and optional ``mention_start``/``mention_end`` (None: located like a string). Given offsets must
        hold the mention (case ignored, or its words aligned there) or ValueError names both.
        """
        if isinstance(span, str):
            if not span.strip():
                raise ValueError(f"mention {span!r} is empty; give the mention string or its (start, end) span")
            found = align_mention(text, span)
            return None if found is None else (found[0], found[1])
        if isinstance(span, dict):
            mention = span.get("mention")
            start = span.get("mention_start")
            if start is None:
                if not isinstance(mention, str):
                    raise ValueError(f"mention span {span!r} has neither a mention string nor mention_start")
                return ZemelProcessor._find_mention(text, mention)
            end = span.get("mention_end")
            if end is None:
                end = int(start) + len(mention or "")
            start, end = int(start), int(end)
            if not (0 <= start < end <= len(text)):
                raise ValueError(f"mention span {(start, end)!r} not inside caption {text!r}")
            if mention is not None and not _span_fits(text, str(mention).strip(), start, end):
                raise ValueError(f"mention {mention!r} not found at {(start, end)} in caption {text!r}")
            return start, end
        start, end = int(span[0]), int(span[1])
        if not (0 <= start < end <= len(text)):
            raise ValueError(f"mention span {(start, end)!r} not inside caption {text!r}")
        return start, end

    def _context_ids(self, text: str, span: Any, max_length: int) -> list[int]:
        found = self._find_mention(text, span)
        if found is None:  # aligns nowhere: [CLS] [M] mention [/M] text [SEP]
            mention_text = str(self._mention_text(span) or "").strip()
            logger.debug("mention %r aligns nowhere in %r: marked at the start of the context", mention_text, text[:80])
            left, mention, right = [], self._tok(mention_text), self._tok(text)
        else:
            start, end = found
            left, mention, right = self._tok(text[:start]), self._tok(text[start:end]), self._tok(text[end:])
        budget = max_length - 4  # [CLS] [M] [/M] [SEP]
        if budget < 1:
            raise ValueError(f"max_length {max_length} leaves no room for the mention")
        mention = mention[:budget]
        room = budget - len(mention)
        n_left = min(len(left), room // 2)
        n_right = min(len(right), room - n_left)
        n_left = min(len(left), room - n_right)  # give unused right room back to the left
        left = left[len(left) - n_left :]
        right = right[:n_right]
        tok = self.tokenizer
        head = []
        if self.context_template == "mention_first":
            head = mention[: max(0, (budget - len(mention)) // 2)]
            if head:
                head = [*head, *self._tok(".")]
                room = budget - len(mention) - len(head)
                n_left = min(len(left), room // 2)
                n_right = min(len(right), room - n_left)
                n_left = min(len(left), room - n_right)
                left = left[len(left) - n_left :] if n_left else []
                right = right[:n_right]
        return [tok.cls_token_id, *head, *left, self.mention_start_id, *mention, self.mention_end_id, *right, tok.sep_token_id]

    def _candidate_ids(self, name: str, description: str | None, max_length: int) -> list[int]:
        name_ids, desc_ids = self._tok(name or ""), self._tok(description or "")
        budget = max_length - 3  # [CLS] [ENT] [SEP]
        name_ids = name_ids[: max(budget, 0)]
        desc_ids = desc_ids[: max(budget - len(name_ids), 0)]
        tok = self.tokenizer
        return [tok.cls_token_id, *name_ids, self.entity_id, *desc_ids, tok.sep_token_id]

    def tokenize_candidates(
        self, names: Sequence[str], descriptions: Sequence[str | None] | None = None, max_length: int = 64
    ) -> list[list[int]]:
        """Unpadded ``[CLS] name [ENT] description [SEP]`` id lists of many candidates, tokenised in one batched
        call (same ids as :meth:`encode_candidates`). Cache them and encode with
        ``model.fast_encode_candidates(ids)`` to re-encode a KB without tokenising again."""
        descriptions = list(descriptions) if descriptions is not None else [None] * len(names)
        if len(descriptions) != len(names):
            raise ValueError(f"{len(names)} names but {len(descriptions)} descriptions")
        texts = [t or "" for t in list(names) + descriptions]
        present = [i for i, t in enumerate(texts) if t]
        ids: list[list[int]] = [[] for _ in texts]
        if present:
            enc = self.tokenizer([texts[i] for i in present], add_special_tokens=False)["input_ids"]
            for i, row in zip(present, enc):
                ids[i] = list(row)
        n = len(names)
        budget = max_length - 3  # [CLS] [ENT] [SEP]
        tok = self.tokenizer
        out = []
        for name_ids, desc_ids in zip(ids[:n], ids[n:]):
            name_ids = name_ids[: max(budget, 0)]
            desc_ids = desc_ids[: max(budget - len(name_ids), 0)]
            out.append([tok.cls_token_id, *name_ids, self.entity_id, *desc_ids, tok.sep_token_id])
        return out

    def _pad_text(self, sequences: list[list[int]], padding: str, max_length: int) -> dict[str, torch.Tensor]:
        length = max_length if padding == "max_length" else max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(sequences), length), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}

    # -- visual ----------------------------------------------------------------------------------------------------
    def pad_regions(self, regions: Sequence[dict | None]) -> dict[str, torch.Tensor]:
        """Stack per-example ``{"features": (R, D), "spatial": (R, 5)}`` (or None: text only) into
        ``visual_features`` (B, max_regions, D), ``visual_spatial`` (B, max_regions, 5), ``visual_attention_mask``
        (B, max_regions). Extra regions beyond `max_regions` are dropped (the whole image, first, is kept)."""
        n, r = len(regions), self.max_regions
        feats = torch.zeros(n, r, self.feature_dim)
        spatial = torch.zeros(n, r, 5)
        mask = torch.zeros(n, r, dtype=torch.long)
        for i, reg in enumerate(regions):
            if reg is None:
                continue
            f = _as_2d(reg["features"], f"regions[{i}]")
            s = _as_2d(reg["spatial"], f"regions[{i}] spatial")
            if f.shape[1] != self.feature_dim:
                raise ValueError(f"regions[{i}] features have size {f.shape[1]}, the processor expects {self.feature_dim}")
            if s.shape != (f.shape[0], 5):
                raise ValueError(f"regions[{i}] spatial has shape {tuple(s.shape)}, expected ({f.shape[0]}, 5)")
            k = min(r, f.shape[0])
            if f.shape[0] > r:
                logger.debug("regions[%d]: %d regions cut to max_regions=%d", i, f.shape[0], r)
            feats[i, :k], spatial[i, :k], mask[i, :k] = f[:k], s[:k], 1
        return {"visual_features": feats, "visual_spatial": spatial, "visual_attention_mask": mask}

    # -- public builders -------------------------------------------------------------------------------------------
    def encode_contexts(
        self,
        texts: Sequence[str],
        mention_spans: Sequence[Any],
        regions: Sequence[dict | None] | None = None,
        max_length: int = 64,
        padding: str = "longest",
        prefix: str = "",
    ) -> BatchFeature:
        """Context inputs ``[CLS] ctx_l [M] mention [/M] ctx_r [SEP]`` (window centred on the mention).

        `mention_spans[i]` is the mention string (located by :func:`align_mention`), a ``(start, end)`` character
        span, or a dict with ``mention`` and optional ``mention_start``/``mention_end``; a mention that aligns
        nowhere in its text is put first: ``[CLS] [M] mention [/M] text [SEP]``. `regions[i]` is None (text only) or
        ``{"features": (R, D), "spatial": (R, 5)}`` (see :func:`make_regions`). Keys: ``input_ids``,
        ``attention_mask``, ``token_type_ids`` (B, T) and, with regions, ``visual_*``; each prefixed with `prefix`.
        """
        if len(texts) != len(mention_spans):
            raise ValueError(f"{len(texts)} texts but {len(mention_spans)} mention spans")
        data = self._pad_text([self._context_ids(t, s, max_length) for t, s in zip(texts, mention_spans)], padding, max_length)
        if regions is not None:
            if len(regions) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(regions)} region entries")
            data.update(self.pad_regions(regions))
        return BatchFeature({prefix + k: v for k, v in data.items()})

    def encode_candidates(
        self,
        names: Sequence[str],
        descriptions: Sequence[str | None] | None = None,
        images_features: Sequence[Any] | None = None,
        max_length: int = 64,
        padding: str = "longest",
        prefix: str = "",
    ) -> BatchFeature:
        """Candidate inputs ``[CLS] name [ENT] description [SEP]``; `images_features[i]` is None or the features
        `(N, D)` of the entity's 1..N images, each a whole-image region (spatial ``[0, 0, 1, 1, 1]``)."""
        descriptions = list(descriptions) if descriptions is not None else [None] * len(names)
        if len(descriptions) != len(names):
            raise ValueError(f"{len(names)} names but {len(descriptions)} descriptions")
        data = self._pad_text([self._candidate_ids(n, d, max_length) for n, d in zip(names, descriptions)], padding, max_length)
        if images_features is not None:
            if len(images_features) != len(names):
                raise ValueError(f"{len(names)} names but {len(images_features)} image feature entries")
            regions = []
            for f in images_features:
                if f is None or len(f) == 0:
                    regions.append(None)
                    continue
                f = _as_2d(f, "images_features")
                regions.append({"features": f, "spatial": torch.tensor([WHOLE_IMAGE_SPATIAL] * f.shape[0])})
            data.update(self.pad_regions(regions))
        return BatchFeature({prefix + k: v for k, v in data.items()})

    def configure_model(self, model) -> None:
        """Resize `model`'s embeddings for the special tokens and record their ids in its config."""
        model.resize_for_processor(self)



__all__ = [
    "ZemelProcessor",
    "make_regions",
    "patch_regions",
    "regions_from_image",
    "box_spatial",
    "WHOLE_IMAGE_SPATIAL",
    "align_mention",
    "normalize_token",
    "word_tokens",
]
