"""ZEMEL corpora as the training and evaluation runs read them: :func:`load_zemel_data` loads ZEMELD (its zero-shot
builder) or a corpus of the shared mel_jsonl schema into a :class:`ZemelData` (mention rows per split, the KB, the
entities seen in training), whose :meth:`ZemelData.kb_for` gives the KB a split is linked against (``eval_kb``:
``unseen``, ``full``, ``gold_only``); :func:`check_zero_shot` lists the entities an evaluation split shares with
training. Split names and ``eval_kb`` modes have one canonical spelling (:func:`canonical_split`,
:func:`canonical_eval_kb`).

:mod:`modeling_mel.zemel_evaluation` re-exports every name of this module.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import datasets

from .image_features import image_source

logger = logging.getLogger(__name__)

ZEMEL_DATASETS = ("zemeld", "mel_jsonl", "wikimel", "richpedia_mel", "mimic_mel")  # all but zemeld: one KB for all splits
EVAL_KB_MODES = ("unseen", "full", "gold_only", "split")  # "split": the default's former name, an alias of "unseen"
DEFAULT_EVAL_KB = "unseen"
EVAL_KB_HELP = (
    "KB the candidates come from. unseen (default; alias: split): every KB entity not seen in training, unused ones "
    "included (ZEMELD zero-shot setting; the whole KB on a corpus without a zero-shot split); full: the whole KB; "
    "gold_only: only the gold entities of the evaluated split (a closed pool of answers: optimistic)"
)
_EVAL_KB_ALIASES = {"split": "unseen"}

_SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "test": "test"}


def canonical_split(name: str) -> str:
    """``validation``/``valid`` -> ``dev``; other names unchanged."""
    return _SPLIT_ALIASES.get(str(name), str(name))


def canonical_eval_kb(mode: str) -> str:
    """``split`` -> ``unseen``; ValueError for a name outside :data:`EVAL_KB_MODES`."""
    if mode not in EVAL_KB_MODES:
        raise ValueError(f"unknown eval_kb {mode!r}; choose one of {list(EVAL_KB_MODES)}")
    return _EVAL_KB_ALIASES.get(mode, mode)


@dataclass
class ZemelData:
    """A corpus ready for ZEMEL: mention rows per split, the gold entities of each split (``kbs``), the full KB and,
    for a zero-shot corpus, the ids of the entities seen in training (gold of a training mention).

    Rows are plain dicts: ``id``, ``text``, ``mention``, ``mention_start``, ``mention_end``, ``entity_id``, ``image``
    (path, PIL image or None), ``image_key`` (rows of one image share it) and, for corpora with boxes (ZEMELD),
    ``box``, ``box_index``, ``image_boxes``, ``image_id``. KB entries: ``entity_id``, ``name``, ``description``,
    ``images`` (paths / PIL images).
    """

    dataset: str
    mentions: dict[str, list[dict]]
    kbs: dict[str, dict[str, dict]]
    full_kb: dict[str, dict]
    has_boxes: bool = False
    zero_shot: bool = False
    seen_in_training: frozenset[str] | None = None  # None: the gold entities of the ``train`` mentions

    @property
    def has_images(self) -> bool:
        """Whether any mention or KB entity has an image."""
        return any(r.get("image") is not None for rows in self.mentions.values() for r in rows) or any(
            e.get("images") for e in self.full_kb.values()
        )

    def split(self, name: str) -> list[dict]:
        """Rows of a split (``dev`` and ``validation`` are the same); ValueError naming the available splits."""
        key = canonical_split(name)
        if key not in self.mentions:
            raise ValueError(
                f"split {name!r} is not in the {self.dataset} corpus; available splits: {sorted(self.mentions)}"
            )
        return self.mentions[key]

    def seen_entities(self) -> frozenset[str]:
        """Entity ids seen in training (gold of a ``train`` mention)."""
        if self.seen_in_training is not None:
            return frozenset(self.seen_in_training)
        return frozenset(r["entity_id"] for r in self.mentions.get("train", ()))

    def gold_kb(self, name: str) -> dict[str, dict]:
        """The gold entities of a split's mentions (KB order); ValueError when the split has none."""
        key = canonical_split(name)
        if self.kbs.get(key):
            return self.kbs[key]
        gold = {r["entity_id"] for r in self.mentions.get(key, ())}
        kb = {e: v for e, v in self.full_kb.items() if e in gold}
        if not kb:
            raise ValueError(f"split {name!r} has no gold entity in the {self.dataset} KB")
        return kb

    def kb_for(self, name: str, eval_kb: str = DEFAULT_EVAL_KB) -> dict[str, dict]:
        """KB a split is linked against.

        * ``"unseen"`` (default; ``"split"`` is an alias): on a zero-shot corpus (ZEMELD), every KB entity NOT seen in
          training, entities that no mention uses included (the training split itself gets its own gold entities:
          the training KB); on a corpus without a zero-shot split, the full KB.
        * ``"full"``: the whole KB.
        * ``"gold_only"``: only the gold entities of the split's mentions. Optimistic: the candidates are drawn
          from the closed pool of the split's answers, and KB entities no mention uses never compete.
        """
        mode = canonical_eval_kb(eval_kb)
        key = canonical_split(name)
        if mode == "full":
            return self.full_kb
        if mode == "gold_only":
            return self.gold_kb(key)
        if not self.zero_shot:  # one KB for all splits: nothing is unseen by construction
            return self.full_kb
        if key == "train":
            return self.gold_kb(key)
        seen = self.seen_entities()
        return {e: v for e, v in self.full_kb.items() if e not in seen}


def _import_zemeld():
    from .builders.zemeld import Zemeld

    return Zemeld


def _load_zemeld(data_dir: str, cache_dir: str | None) -> ZemelData:
    from .builders.zemeld import with_text  # ZEMELD's caption becomes the row's text, once

    zemeld_cls = _import_zemeld()
    built = {}
    for config in ("mentions", "kb"):
        builder = zemeld_cls(config_name=config, data_dir=os.path.abspath(data_dir), cache_dir=cache_dir)
        builder.download_and_prepare()  # raises ValueError on a zero-shot violation (a dev/test entity in train)
        built[config] = builder.as_dataset()
    mentions = {}
    for split, ds in built["mentions"].items():
        rows = []
        for r in ds:
            rows.append(
                {
                    "id": r["id"],
                    "text": with_text(r)["text"],
                    "mention": r["mention"],
                    "mention_start": _opt_int(r["mention_start"]),
                    "mention_end": _opt_int(r["mention_end"]),
                    "entity_id": r["entity_id"],
                    "image": r["image"],
                    "image_key": r["image_id"],
                    "image_id": r["image_id"],
                    "box": [float(v) for v in r["box"]],
                    "box_index": int(r["box_index"]),
                    "image_boxes": [[float(v) for v in b] for b in r["image_boxes"]],
                }
            )
        mentions[canonical_split(split)] = rows

    def kb_rows(ds) -> dict[str, dict]:
        return {
            r["entity_id"]: {"entity_id": r["entity_id"], "name": r["name"], "description": r["description"],
                             "images": list(r["images"] or [])}
            for r in ds
        }

    full = built["kb"]["full"]
    kbs = {canonical_split(s): kb_rows(ds) for s, ds in built["kb"].items() if s != "full"}  # gold entities per split
    seen = frozenset(e for e, flag in zip(full["entity_id"], full["seen_in_training"]) if flag)
    return ZemelData("zemeld", mentions, kbs, kb_rows(full), has_boxes=True, zero_shot=True, seen_in_training=seen)


def _opt_int(value: Any) -> int | None:
    """``int(value)``, or None for a mention kept without a span."""
    return None if value is None else int(value)


def _load_mel_corpus(dataset: str, data_dir: str, cache_dir: str | None) -> ZemelData:
    """A corpus of the shared mel_jsonl schema (``mel_jsonl``, ``wikimel``, ``richpedia_mel``, ``mimic_mel``): one KB
    for all splits."""
    from .corpus import load_mel_corpus

    dd = load_mel_corpus(dataset, data_dir, "mentions", cache_dir=cache_dir)
    kb = load_mel_corpus(dataset, data_dir, "kb", cache_dir=cache_dir)
    if isinstance(kb, datasets.DatasetDict):
        kb = kb[list(kb)[0]]
    mentions = {}
    for split, ds in dd.items():
        ds = ds.cast_column("image", datasets.Image(decode=False))
        mentions[canonical_split(split)] = [
            {
                "id": r["id"],
                "text": r["text"],
                "mention": r["mention"],
                "mention_start": _opt_int(r["mention_start"]),
                "mention_end": _opt_int(r["mention_end"]),
                "entity_id": r["entity_id"],
                "image": image_source(r["image"]),
                "image_key": r["id"],
            }
            for r in ds
        ]
    kb = kb.select_columns([c for c in ("entity_id", "name", "description", "images") if c in kb.column_names])
    if "images" in kb.column_names:
        kb = kb.cast_column("images", datasets.List(datasets.Image(decode=False)))
    full = {
        r["entity_id"]: {
            "entity_id": r["entity_id"],
            "name": r.get("name") or "",
            "description": r.get("description") or "",
            "images": [x for x in (image_source(v) for v in r.get("images") or []) if x is not None],
        }
        for r in kb
    }
    return ZemelData(dataset, mentions, {}, full, has_boxes=False, zero_shot=False)


def load_zemel_data(dataset: str, data_dir: str, cache_dir: str | None = None) -> ZemelData:
    """Load a corpus for ZEMEL: ``zemeld`` (builder of :mod:`modeling_mel.builders.zemeld`; its zero-shot check raises
    ValueError when a dev/test entity occurs in train) or a corpus of the generic schema (``mel_jsonl``, ``wikimel``,
    ``richpedia_mel``, ``mimic_mel``; one KB for all splits). Mentions kept without a span have ``mention_start`` None."""
    if dataset not in ZEMEL_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(ZEMEL_DATASETS)}")
    if not data_dir or not os.path.isdir(data_dir):
        raise ValueError(f"data_dir {data_dir!r} is not a directory; pass the folder holding the {dataset} files")
    data = _load_zemeld(data_dir, cache_dir) if dataset == "zemeld" else _load_mel_corpus(dataset, data_dir, cache_dir)
    logger.info(
        "%s: mentions %s, KB %d entities%s", dataset, {s: len(r) for s, r in data.mentions.items()}, len(data.full_kb),
        "" if data.has_images else " (no images: text only)",
    )
    return data


def check_zero_shot(train_rows: Sequence[Mapping], eval_rows: Sequence[Mapping], split: str) -> list[str]:
    """Entity ids of ``eval_rows`` that also occur in ``train_rows`` (sorted)."""
    seen = {r["entity_id"] for r in train_rows}
    return sorted({r["entity_id"] for r in eval_rows} & seen)


__all__ = [
    "ZEMEL_DATASETS",
    "EVAL_KB_MODES",
    "DEFAULT_EVAL_KB",
    "EVAL_KB_HELP",
    "canonical_split",
    "canonical_eval_kb",
    "ZemelData",
    "load_zemel_data",
    "check_zero_shot",
]
