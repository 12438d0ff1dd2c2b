"""PFMEL data: NSP linking (fine-tuning / evaluation) examples, the encoding and collation of NSP pairs, and the
corpus view (sentences, linking examples, image features and candidates, computed once).

The pre-training sentences and pairs (paper, section 3.3) are made by :mod:`modeling_mel.pfmel_pretraining_pairs`,
the image feature table by :mod:`modeling_mel.pfmel_features`; their names are importable from here too.

Linking (section 3.4). Sentence A is ``mention_prompt(text, mention)`` (``"<text>. <mention> is"``) plus the
tweet image, sentence B ``entity_prompt(screen_name, entity_context)`` (``"@screen. <entity context>"``) plus
the entity image (the mean feature of its timeline images, else of its ``images``). For a KB whose entities are
not Twitter users (empty ``screen_name`` and no timeline), sentence B is ``generic_entity_prompt(name,
description)`` plus the mean of the entity's ``images``. Training and the pipeline build sentence B and the entity
image with the same functions (``kb_entity_prompt``, ``kb_entity_images`` of the processor module). The
candidates of a mention are the entities whose ``name`` contains the mention (case-insensitive; the paper's
"userName contains the mention" rule, for both kinds of KB), ordered by closeness of name (exact name, then shorter
names, then KB order) and cut at ``max_candidates`` (32) in that order. Training: the gold entity (label 0) plus up to
``num_negatives`` other candidates (label 1). Evaluation: every candidate is scored; a mention whose gold entity
is not a candidate (or that has none, or whose gold is not in the KB) counts as wrong and stays in the denominator.
The prompt needs no span: a mention that is not verbatim in its text (``mention_start`` None) is linked the same.

Image features are computed once per image (content-hash cache of :class:`~modeling_mel.ImageFeatureExtractor`)
and kept in one :class:`FeatureTable`; encoded examples carry row numbers into it and the collator gathers the
vectors per batch. Each distinct text is tokenised once.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .candidates import NameRuleCandidates, closest_first
from .corpus import ListDataset  # noqa: F401 - re-exported
from .image_features import image_source
from .pfmel_features import FeatureTable, load_precomputed_features, save_precomputed_features  # noqa: F401
from .pfmel_pretraining_pairs import (  # noqa: F401 - re-exported (they lived here before)
    NEGATIVE_DRAWS,
    TASK_ALIASES,
    TASKS,
    NSPPair,
    Sentence,
    check_tasks,
    draw_next_sentences,
    make_pretraining_pairs,
)
from .processing_multimodal_nsp import (
    is_twitter_user,
    kb_entity_context,
    kb_entity_images,
    kb_entity_prompt,
    mention_prompt,
)

logger = logging.getLogger(__name__)

#: The ids of the tasks (``task_ids`` of an encoded example; ``link``: fine-tuning) and their loss names
#: (``loss_mix`` ...).
TASK_IDS: dict[str, int] = {"mixed": 0, "text": 1, "multi": 2, "link": 3}
TASK_LOSS_NAMES: dict[int, str] = {0: "mix", 1: "text", 2: "multi", 3: "link"}
IMAGE_FEATURE_MODES = ("resnet50", "precomputed", "none")
FEATURE_NORMS = ("center_l2", "l2", "none")
DEFAULT_MAX_CANDIDATES = 32


def _undecoded(ds):
    """``ds`` with every Image feature (nested ones too) set to ``decode=False`` (paths, not PIL images)."""
    from datasets import Image

    def walk(feat):
        if isinstance(feat, Image):
            return Image(decode=False)
        if isinstance(feat, dict):
            return {k: walk(v) for k, v in feat.items()}
        if isinstance(feat, list):
            return [walk(v) for v in feat]
        if hasattr(feat, "feature") and hasattr(type(feat), "__dataclass_fields__"):
            import dataclasses

            return dataclasses.replace(feat, feature=walk(feat.feature))
        return feat

    try:
        from datasets import Features

        new = Features({k: walk(v) for k, v in ds.features.items()})
        if new != ds.features:
            return ds.cast(new)
    except Exception as err:  # pragma: no cover - decoded images work too, only slower
        logger.debug("could not switch images to decode=False: %s", err)
    return ds


# ---------------------------------------------------------------------------------------------------------------------
# Encoding and collation
# ---------------------------------------------------------------------------------------------------------------------
def encode_pairs(processor, pairs: Sequence[NSPPair], max_length: int | None = None, use_images: bool = True) -> list[dict]:
    """Tokenise ``pairs`` (each distinct text once) into features for :class:`PFMELCollator`.

    Each feature has ``input_ids``, ``token_type_ids``, ``attention_mask``, ``image_rows`` (rows of the
    :class:`FeatureTable`, A's then B's, in the order of the image tokens), ``labels`` and ``task_ids``.
    With ``use_images=False`` image rows are dropped (text-only NSP-BERT); a side left empty raises.
    """
    max_length = int(max_length or processor.max_length)
    texts = sorted({t for p in pairs for t in (p.text_a, p.text_b) if t})
    ids: dict[str, list[int]] = {}
    step = 1024
    for start in range(0, len(texts), step):
        chunk = texts[start : start + step]
        enc = processor.tokenizer(chunk, add_special_tokens=False)["input_ids"]
        ids.update(zip(chunk, (list(e) for e in enc)))
    features = []
    for k, p in enumerate(pairs):
        img_a = tuple(p.images_a) if use_images else ()
        img_b = tuple(p.images_b) if use_images else ()
        ia = ids.get(p.text_a, []) if p.text_a else []
        ib = ids.get(p.text_b, []) if p.text_b else []
        if (not ia and not img_a) or (not ib and not img_b):
            raise ValueError(
                f"pair {k} (task {p.task!r}) has an empty side without images; text-only training "
                "(--image_features none) supports only the 'text' pre-training task and text linking"
            )
        input_ids, type_ids = processor.encode_pair(ia, ib, len(img_a), len(img_b), max_length)
        features.append(
            {
                "input_ids": input_ids,
                "token_type_ids": type_ids,
                "attention_mask": [1] * len(input_ids),
                "image_rows": list(img_a + img_b),
                "labels": int(p.label),
                "task_ids": TASK_IDS[p.task],
            }
        )
    return features


class PFMELCollator:
    """Dynamic padding (``processor.pad``) plus image features gathered from a :class:`FeatureTable`.

    Keys other than model inputs (``labels``, ``task_ids``) are kept as tensors; ``image_rows`` becomes
    ``image_features`` ``(B, n_images_max, D)``, absent when no example of the batch has an image token.
    """

    def __init__(self, processor, table: FeatureTable | None = None, pad_to_multiple_of: int | None = 8) -> None:
        self.processor = processor
        self.table = table
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = [list(e.get("image_rows") or []) for e in examples]
        feats = [{k: v for k, v in e.items() if k != "image_rows"} for e in examples]
        batch = self.processor.pad(feats, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of)
        if any(rows):
            if self.table is None:
                raise ValueError("examples carry image rows but the collator has no FeatureTable")
            batch["image_features"] = self.table.gather(rows)  # (B, n_img, D)
        return batch


# ---------------------------------------------------------------------------------------------------------------------
# Linking examples
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class LinkingMention:
    """A mention to link: sentence A (prompt + image row), its gold entity and its candidate entities."""

    mention_id: str
    prompt: str
    image: int
    gold: str
    candidates: list[str]
    mention: str = ""
    gold_in_kb: bool = True
    text: str = ""
    span: tuple[int, int] | None = None
    retriever_scores: dict[str, float] | None = None  # first-stage scores of the candidates (retrieve-then-rerank)
    gold_before_cap: bool | None = None  # gold among the name-rule candidates before the max_candidates cap


@dataclass
class LinkingData:
    """Mentions plus what sentence B of each candidate needs; see :func:`predict_linking`."""

    mentions: list[LinkingMention]
    entity_text: dict[str, str]
    entity_image: dict[str, int]
    table: FeatureTable
    use_images: bool = True
    kb_order: dict[str, int] = field(default_factory=dict)  # KB position of each entity (the linkers' tie rule)
    _encoded: dict = field(default_factory=dict, repr=False)

    def pair(self, m: LinkingMention, entity_id: str, label: int) -> NSPPair:
        """The linking pair of mention ``m`` and an entity."""
        return NSPPair(
            m.prompt,
            (m.image,) if self.use_images else (),
            self.entity_text[entity_id],
            (self.entity_image.get(entity_id, 0),) if self.use_images else (),
            label=label,
            task="link",
        )

    def training_pairs(self, num_negatives: int | None = DEFAULT_MAX_CANDIDATES, seed: int = 0) -> list[NSPPair]:
        """Gold (label 0) plus up to ``num_negatives`` candidate negatives (label 1) per mention (seeded sample)."""
        rng = random.Random(seed)
        pairs = []
        unusable = sum(not m.gold_in_kb for m in self.mentions)
        if unusable:
            logger.warning("%d mentions whose gold entity is not in the KB give no training pair", unusable)
        for m in self.mentions:
            if not m.gold_in_kb:
                continue
            pairs.append(self.pair(m, m.gold, 0))
            negatives = [c for c in m.candidates if c != m.gold]
            if num_negatives is not None and len(negatives) > num_negatives:
                negatives = rng.sample(negatives, int(num_negatives))
            pairs += [self.pair(m, c, 1) for c in negatives]
        return pairs

    def candidate_features(self, processor) -> tuple[list[dict], list[tuple[int, str]]]:
        """Encoded ``(mention, candidate)`` pairs of every mention (cached per processor length) and their keys."""
        key = (id(processor), processor.max_length)
        if key not in self._encoded:
            pairs, keys = [], []
            for i, m in enumerate(self.mentions):
                for c in m.candidates:
                    pairs.append(self.pair(m, c, 0))
                    keys.append((i, c))
            self._encoded[key] = (encode_pairs(processor, pairs, use_images=self.use_images), keys)
        return self._encoded[key]

    def candidate_recall(self, before_cap: bool = False) -> float:
        """Share of mentions whose gold entity is among their candidates; ``before_cap``: among the name-rule
        candidates before the ``max_candidates`` cap (the same when nothing was cut)."""
        if not self.mentions:
            return 0.0
        if before_cap:
            hits = sum(m.gold in m.candidates if m.gold_before_cap is None else m.gold_before_cap for m in self.mentions)
        else:
            hits = sum(m.gold in m.candidates for m in self.mentions)
        return hits / len(self.mentions)

    def unusable_counts(self) -> dict[str, int]:
        """Mentions that can only be wrong, counted (they stay in every denominator): ``n_gold_not_in_kb``,
        ``n_no_candidates`` and ``n_unusable`` (either)."""
        no_kb = [not m.gold_in_kb for m in self.mentions]
        no_cands = [not m.candidates for m in self.mentions]
        return {
            "n_gold_not_in_kb": sum(no_kb),
            "n_no_candidates": sum(no_cands),
            "n_unusable": sum(a or b for a, b in zip(no_kb, no_cands)),
        }


# ---------------------------------------------------------------------------------------------------------------------
# Corpus access
# ---------------------------------------------------------------------------------------------------------------------
class PFMELCorpus:
    """A MEL corpus prepared for PFMEL: entity texts, image features and candidates, computed once.

    Args:
        mentions: ``DatasetDict`` of mention splits (rows ``id, text, mention, image, entity_id``).
        kb: the KB ``Dataset`` (rows ``entity_id, name, screen_name, location, description, images, timeline``).
        image_features: ``"resnet50"`` (extract with ``extractor``), ``"precomputed"`` (from ``features_path``),
            or ``"none"`` (text only: NSP-BERT).
        extractor: an :class:`~modeling_mel.ImageFeatureExtractor` (built with defaults when needed and missing).
        features_path: the ``.safetensors``/``.npz`` map of :func:`save_precomputed_features`.
        max_candidates: keep at most this many candidates per mention, closest names first (exact name, then
            shorter names, then KB order), ``None`` for all.
        candidate_fn: ``mention -> list[entity_id]``; default: the name rule of the paper.
        feature_norm: how image vectors (a tweet image, or an entity's mean image) are normalised before the
            model's projection. ``"center_l2"`` (default): subtract a centre vector (the mean feature of the first
            training run's images, stored in the processor (``feature_mean``) and reused by every later run of that
            model), then divide by the L2 norm. ``"l2"``: only the L2 norm. ``"none"``: raw ResNet features, as in
            the paper. Raw pooled ResNet features share a large common component (cosine ~0.95 between any two
            images) and have norms of hundreds against word embeddings of norm ~1; the new projection learns badly
            from them. Centred unit vectors keep what tells images apart at the scale of the text tokens. A model
            records its normalisation (the processor's ``feature_norm``) and later runs must use the same.
    """

    def __init__(
        self,
        mentions,
        kb,
        image_features: str = "resnet50",
        extractor=None,
        features_path: str | None = None,
        max_candidates: int | None = DEFAULT_MAX_CANDIDATES,
        candidate_fn: Callable[[str], list[str]] | None = None,
        feature_dim: int = 2048,
        feature_norm: str = "center_l2",
    ) -> None:
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"unknown feature_norm {feature_norm!r}; choose one of {list(FEATURE_NORMS)}")
        self.feature_norm = feature_norm
        if image_features not in IMAGE_FEATURE_MODES:
            raise ValueError(f"unknown image_features {image_features!r}; choose one of {list(IMAGE_FEATURE_MODES)}")
        if image_features == "precomputed" and not features_path:
            raise ValueError("image_features='precomputed' needs features_path (a .safetensors or .npz map)")
        self.mentions = mentions
        self.image_mode = image_features
        self.use_images = image_features != "none"
        self.max_candidates = max_candidates
        self._extractor = extractor
        self._precomputed = load_precomputed_features(features_path) if image_features == "precomputed" else None
        if self._precomputed:
            dims = {v.shape[-1] for v in self._precomputed.values()}
            if len(dims) != 1:
                raise ValueError(f"features file {features_path!r} mixes feature sizes {sorted(dims)}")
            feature_dim = dims.pop()
        elif extractor is not None:
            feature_dim = extractor.feature_dim
        self.table = FeatureTable(feature_dim, l2=feature_norm != "none")
        kb = _undecoded(kb)
        self.kb = kb
        self.entities: dict[str, dict] = {}
        for row in kb:
            eid = str(row["entity_id"])
            self.entities[eid] = row
        if not self.entities:
            raise ValueError("the KB has no entities")
        ids = list(self.entities)
        self._kb_position = {e: i for i, e in enumerate(ids)}
        if candidate_fn is None:
            candidate_fn = NameRuleCandidates({e: self._rule_name(e) for e in ids})
        self.candidate_fn = candidate_fn
        self._entity_text: dict[str, str] = {}
        self._entity_context: dict[str, str] = {}

    def _rule_name(self, eid: str) -> str:
        """The name the name rule reads: ``name``, else the screen name (as the pipeline's KB reader)."""
        row = self.entities.get(eid) or {}
        return str(row.get("name") or row.get("screen_name") or "")

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, dataset: str, data_dir: str, cache_dir: str | None = None, **kwargs) -> "PFMELCorpus":
        """Load ``dataset`` (``twitter_mel`` or ``mel_jsonl``) from ``data_dir`` with :func:`modeling_mel.corpus.load_mel_corpus`."""
        from .corpus import load_mel_corpus

        if not data_dir or not os.path.isdir(data_dir):
            raise ValueError(f"data_dir {data_dir!r} is not a directory; point --data_dir at the corpus files")
        mentions = load_mel_corpus(dataset, data_dir, config="mentions", cache_dir=cache_dir)
        kb = load_mel_corpus(dataset, data_dir, config="kb", cache_dir=cache_dir)
        return cls(mentions, kb, **kwargs)

    @property
    def extractor(self):
        if self._extractor is None:
            from .image_features import ImageFeatureExtractor

            self._extractor = ImageFeatureExtractor()
        return self._extractor

    def split(self, name: str, max_samples: int | None = None, rows: Sequence[int] | None = None):
        """The mention rows of split ``name`` whose entity is linked (only the positions ``rows`` of them when
        given, else the first ``max_samples``), ``ValueError`` for a missing or empty split."""
        available = list(self.mentions.keys())
        if name not in self.mentions:
            raise ValueError(f"split {name!r} does not exist; available splits: {available}")
        ds = self.mentions[name]
        if "image" in ds.column_names:
            ds = _undecoded(ds)
        ds = ds.filter(lambda e: bool(e) and str(e).strip() != "", input_columns="entity_id")
        if len(ds) == 0:
            raise ValueError(f"split {name!r} has no linked mentions (rows with an entity_id); nothing to train or evaluate")
        if rows is not None:
            bad = [r for r in rows if not 0 <= int(r) < len(ds)]
            if bad:
                raise ValueError(f"split {name!r} has {len(ds)} linked mentions; rows {bad[:5]} are out of range")
            ds = ds.select([int(r) for r in rows])
        if max_samples is not None and max_samples < len(ds):
            ds = ds.select(range(int(max_samples)))
        return ds

    def split_size(self, name: str) -> int:
        """How many linked mentions split ``name`` has (what :meth:`split` returns in full)."""
        return len(self.split(name))

    def _add(self, key: str, vector: np.ndarray) -> int:
        return self.table.add(key, np.asarray(vector, np.float32).reshape(-1))

    # -- entities -------------------------------------------------------------------------------------------------
    def _check_entity(self, eid: str) -> dict:
        if eid not in self.entities:
            raise ValueError(f"entity {eid!r} is not in the KB; the corpus must link mentions to KB entities")
        return self.entities[eid]

    def is_twitter_user(self, eid: str) -> bool:
        return is_twitter_user(self._check_entity(eid))

    def entity_context(self, eid: str) -> str:
        """The pre-training entity context (:func:`~modeling_mel.processing_multimodal_nsp.kb_entity_context`)."""
        if eid not in self._entity_context:
            self._entity_context[eid] = kb_entity_context(self._check_entity(eid))
        return self._entity_context[eid]

    def entity_text(self, eid: str) -> str:
        """Sentence B of linking (:func:`~modeling_mel.processing_multimodal_nsp.kb_entity_prompt`, as the pipeline)."""
        if eid not in self._entity_text:
            self._entity_text[eid] = kb_entity_prompt(self._check_entity(eid))
        return self._entity_text[eid]

    def _entity_images(self, eid: str) -> list:
        images = [image_source(x) for x in kb_entity_images(self.entities[eid])]
        return [x for x in images if x is not None]

    def ensure_entity_features(self, eids: Iterable[str]) -> None:
        """Compute (batched, once) the entity image of every entity in ``eids``."""
        if not self.use_images:
            return
        todo = [e for e in dict.fromkeys(eids) if f"entity:{e}" not in self.table.index]
        if not todo:
            return
        if self._precomputed is not None:
            for e in todo:
                v = self._precomputed.get(f"entity:{e}")
                self._add(f"entity:{e}", v if v is not None else np.zeros(self.table.dim, np.float32))
            return
        per_entity = [self._entity_images(e) for e in todo]
        flat = [x for imgs in per_entity for x in imgs]
        feats = self.extractor.encode(flat, progress=len(flat) > 64) if flat else np.zeros((0, self.table.dim), np.float32)
        k = 0
        for e, imgs in zip(todo, per_entity):
            block = feats[k : k + len(imgs)]
            k += len(imgs)
            ok = block[np.abs(block).sum(1) > 0] if len(block) else block
            vec = ok.mean(0) if len(ok) else np.zeros(self.table.dim, np.float32)
            self._add(f"entity:{e}", vec)

    def ensure_mention_features(self, ds) -> list[int]:
        """Rows of the tweet images of the mention rows ``ds`` (computed once, batched)."""
        keys = [f"mention:{i}" for i in ds["id"]]
        if not self.use_images:
            return [0] * len(keys)
        todo = [(k, n) for n, k in enumerate(keys) if k not in self.table.index]
        if todo:
            if self._precomputed is not None:
                for k, _ in todo:
                    v = self._precomputed.get(k)
                    self._add(k, v if v is not None else np.zeros(self.table.dim, np.float32))
            else:
                images = ds["image"] if "image" in ds.column_names else [None] * len(ds)
                feats = self.extractor.encode([image_source(images[n]) for _, n in todo], progress=len(todo) > 64)
                for (k, _), v in zip(todo, feats):
                    self._add(k, v)
        return [self.table.row(k) for k in keys]

    # -- examples -------------------------------------------------------------------------------------------------
    def sentences(self, split: str = "train", max_samples: int | None = None) -> list[Sentence]:
        """Pre-training sentences of the linked mentions of ``split``."""
        ds = self.split(split, max_samples)
        eids = [str(e) for e in ds["entity_id"]]
        missing = sorted({e for e in eids if e not in self.entities})
        if missing:
            logger.warning("%d mentions of %s link to %d entities not in the KB (e.g. %s): no pre-training sentence",
                           sum(e in set(missing) for e in eids), split, len(missing), missing[:5])
        self.ensure_entity_features([e for e in eids if e in self.entities])
        rows = self.ensure_mention_features(ds)
        return [
            Sentence(
                mention_id=str(mid),
                text=str(text),
                image=row,
                entity_id=e,
                entity_context=self.entity_context(e),
                entity_image=self.table.row(f"entity:{e}"),
            )
            for mid, text, row, e in zip(ds["id"], ds["text"], rows, eids)
            if e in self.entities
        ]

    def candidates(self, mention: str) -> list[str]:
        """Candidate entity ids of a mention (name rule), closest names first, at most ``max_candidates``.

        The cap cuts the ordered list (:meth:`closest_names`: exact name, then shorter names, then KB order), as the
        pipeline does, never the KB order: a gold entity late in the KB is not lost to the cap when its name is close.
        """
        return self.closest_names(mention, self.max_candidates)

    def closest_names(self, mention: str, k: int | None = None) -> list[str]:
        """Name-rule candidates ordered by closeness of name (exact name first, then shorter names, then KB order,
        as the pipeline orders them), the first ``k`` (all when ``k`` is ``None``)."""
        cands = list(dict.fromkeys(str(c) for c in self.candidate_fn(mention)))  # KB order
        order = [cands[i] for i in closest_first(range(len(cands)), [self._rule_name(e).lower() for e in cands], mention)]
        return order[:k] if k is not None else order

    def linking_data(
        self, split: str, max_samples: int | None = None, retriever: Any = None, retriever_k: int = 10,
        rows: Sequence[int] | None = None,
    ) -> LinkingData:
        """Linking examples of ``split``: prompt, image, gold and candidates of each linked mention (the mentions
        at positions ``rows`` only, when given).

        With ``retriever`` (an :class:`~modeling_mel.entity_index.EntityIndex` loaded with its ZEMEL model) the
        candidates are retrieve-then-rerank's: the retriever's dense top ``retriever_k`` merged with the name-rule
        candidates, ordered by retriever score, each score kept in ``retriever_scores``.
        """
        ds = self.split(split, max_samples, rows)
        feature_rows = self.ensure_mention_features(ds)
        mentions = []
        starts = ds["mention_start"] if "mention_start" in ds.column_names else [None] * len(ds)
        ends = ds["mention_end"] if "mention_end" in ds.column_names else [None] * len(ds)
        for mid, text, mention, gold, row, a, b in zip(ds["id"], ds["text"], ds["mention"], ds["entity_id"], feature_rows,
                                                     starts, ends):
            gold = str(gold)
            ranked = self.closest_names(mention)
            mentions.append(
                LinkingMention(str(mid), mention_prompt(text, mention), row, gold, ranked[: self.max_candidates]
                               if self.max_candidates is not None else ranked, mention,
                               gold_in_kb=gold in self.entities, text=str(text),
                               span=(int(a), int(b)) if a is not None and b is not None else None,
                               gold_before_cap=gold in ranked)
            )
        if retriever is not None:
            scored = retriever.retrieve_scored(
                [m.text for m in mentions],
                [{"mention": m.mention, "mention_start": m.span[0] if m.span else None,
                  "mention_end": m.span[1] if m.span else None} for m in mentions],
                retriever_k,
                extra=[self.closest_names(m.mention, retriever_k) for m in mentions],
            )
            for m, ranked in zip(mentions, scored):
                ranked = [(e, s) for e, s in ranked if e in self.entities]
                m.candidates = [e for e, _ in ranked]
                m.retriever_scores = dict(ranked)
        if self.max_candidates is not None and retriever is None:
            data = LinkingData(mentions, {}, {}, self.table)
            before, after = data.candidate_recall(before_cap=True), data.candidate_recall()
            cut = sum(m.gold_before_cap and m.gold not in m.candidates for m in mentions)
            logger.info("%s: name-rule candidate recall %.4f before the cap of %d (closest names first), %.4f after "
                        "(%d gold entities cut)", split, before, self.max_candidates, after, cut)
        missing = sum(not m.gold_in_kb for m in mentions)
        if missing:
            logger.warning("%s: %d of %d mentions link to an entity not in the KB (scored as wrong)", split, missing,
                           len(mentions))
        eids = list(dict.fromkeys([m.gold for m in mentions if m.gold_in_kb] + [c for m in mentions for c in m.candidates]))
        self.ensure_entity_features(eids)
        return LinkingData(
            mentions=mentions,
            entity_text={e: self.entity_text(e) for e in eids},
            entity_image={e: self.table.row(f"entity:{e}") for e in eids},
            table=self.table,
            use_images=self.use_images,
            kb_order={e: self._kb_position[e] for e in eids if e in self._kb_position},
        )


__all__ = [
    "TASKS",
    "TASK_IDS",
    "TASK_LOSS_NAMES",
    "IMAGE_FEATURE_MODES",
    "FEATURE_NORMS",
    "check_tasks",
    "FeatureTable",
    "save_precomputed_features",
    "load_precomputed_features",
    "Sentence",
    "NSPPair",
    "NEGATIVE_DRAWS",
    "draw_next_sentences",
    "make_pretraining_pairs",
    "encode_pairs",
    "ListDataset",
    "PFMELCollator",
    "LinkingMention",
    "LinkingData",
    "PFMELCorpus",
]
