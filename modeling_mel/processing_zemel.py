"""Processor of :class:`ZemelPolyEncoder`: context / candidate templates and visual region inputs.

* Context: ``[CLS] ctx_l [M] mention [/M] ctx_r [SEP]`` with a token window centred on the mention (left and right
  context truncated evenly; a side shorter than its half gives the rest to the other side).
* Candidate: ``[CLS] name [ENT] description [SEP]`` (the description is truncated first).
* Mention location: a ``(start, end)`` span, or the mention string located by
  :func:`~modeling_mel.mention_spans.align_mention` (case-insensitive substring, else normalised token alignment:
  case, punctuation and diacritics ignored, particles skipped). A mention that aligns nowhere is marked at the start
  of the context: ``[CLS] [M] mention [/M] text [SEP]``.
* Regions: the whole image is the FIRST region (spatial ``[0, 0, 1, 1, 1]``), then the boxes with their spatial vector
  ``(x1/W, y1/H, x2/W, y2/H, area/(W*H))``; candidate images are each a whole-image region. Padded to ``max_regions``
  with ``visual_attention_mask`` 0.

Mention alignment lives in ``mention_spans.py``, the region builders in ``regions.py``.

This file ships with saved models: it imports only torch, transformers and the other ZEMEL files (``mention_spans.py``
and ``regions.py`` ship with it).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from transformers import AddedToken, BatchFeature, ProcessorMixin

from .configuration_zemel import DEFAULT_ENTITY_TOKEN, DEFAULT_MENTION_END_TOKEN, DEFAULT_MENTION_START_TOKEN
from .mention_spans import _span_fits, align_mention
from .regions import WHOLE_IMAGE_SPATIAL, _as_2d

logger = logging.getLogger(__name__)

CONTEXT_TEMPLATES = ("paper", "mention_first")
IMAGE_REGION_SOURCES = ("boxes", "patches")


class ZemelProcessor(ProcessorMixin):
    """Tokenizer and input builders for :class:`ZemelPolyEncoder`.

    Args:
        tokenizer: a BERT tokenizer; `[M]`, `[/M]`, `[ENT]` are registered on it as special tokens (resize the model
            with `model.resize_for_processor(processor)`).
        (No image processor attribute: transformers 5 processors cannot hold an optional ``None`` sub-processor.
        Region features come from ``modeling_mel.image_features.ImageFeatureExtractor``; see
        :func:`~modeling_mel.regions.regions_from_image`.)
        max_regions (`int`, defaults to 10): regions per input after padding / truncation.
        feature_dim (`int`, defaults to 2048): size of one region feature.
        mention_start_token, mention_end_token, entity_token: the special tokens.
        image_encoder (`dict`, optional): the identity of the image encoder of training
            (``ImageFeatureExtractor.identity``, written by training; ``mel`` and the pipeline build that encoder and
            refuse another).
        image_regions (`str`, defaults to `"boxes"`): the regions after the whole image: `"boxes"` (one crop per
            box) or `"patches"` (the encoder's patch tokens, :func:`~modeling_mel.regions.patch_regions`).
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

        ``span``: the mention string (located by :func:`~modeling_mel.mention_spans.align_mention`), a ``(start, end)`` span, or a dict with
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

        `mention_spans[i]` is the mention string (located by :func:`~modeling_mel.mention_spans.align_mention`), a
        ``(start, end)`` character span, or a dict with ``mention`` and optional ``mention_start``/``mention_end``; a mention that aligns
        nowhere in its text is put first: ``[CLS] [M] mention [/M] text [SEP]``. `regions[i]` is None (text only) or
        ``{"features": (R, D), "spatial": (R, 5)}`` (see :func:`~modeling_mel.regions.make_regions`). Keys:
        ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) and, with regions, ``visual_*``; each prefixed with `prefix`.
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



__all__ = ["ZemelProcessor"]
