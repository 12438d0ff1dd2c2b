"""ZEMELD: zero-shot multimodal entity linking dataset (Wikipedia images, captions, boxes, entities).

Reads the raw layout documented in README.md (``annotations.jsonl``, ``kb.jsonl``, ``images/``) with
``Zemeld(config_name="mentions" | "kb", data_dir=D).download_and_prepare(); .as_dataset()``.
Checks the zero-shot split (no dev/test entity in training; entities gold in both dev and test are reported, and kept
in both KB splits) and skips bad annotations by reason
(counted, logged, written to ``skipped.json`` next to the prepared cache), or raises in ``strict`` mode. A mention
that is not verbatim in its caption is never skipped: it is located by token alignment (note ``aligned``) or kept
without a span (``mention_start``/``mention_end`` None, note ``unaligned``), in strict mode too.

The ``kb`` config keeps every KB entity: split ``full`` holds them all, each with ``splits`` (the splits where it is
the gold of a mention, in ``train, dev, test`` order; empty for an entity no mention uses), ``split`` (the first of
them, or ``unused``) and ``seen_in_training`` (gold of a training mention). Splits ``train``/``validation``/``test``
hold the gold entities of each split (an entity gold in dev and test is in both, with ``split`` set to that split).
The zero-shot evaluation KB of dev/test (every entity NOT seen in training, unused ones included) is
``full.filter(lambda r: not r["seen_in_training"])``.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from dataclasses import dataclass

import datasets

from modeling_mel.corpus import offset_note, resolve_offsets

logger = logging.getLogger(__name__)

_CITATION = """\
@article{zheng2022zemel,
  title   = {Faster Zero-shot Multi-modal Entity Linking via Visual-Linguistic Representation},
  author  = {Zheng, Qiushuo and Wen, Hao and Wang, Meng and Qi, Guilin and Bai, Chaoyu},
  journal = {Data Intelligence},
  volume  = {4},
  number  = {3},
  pages   = {493--508},
  year    = {2022},
  doi     = {10.1162/dint_a_00146}
}
"""
_DESCRIPTION = (
    "ZEMELD: images with captions from Wikipedia, annotated with entity bounding boxes, their text mentions in the "
    "caption, and the linked Wikipedia entity. Entities of the test (and dev) split never occur in training."
)
_HOMEPAGE = "https://doi.org/10.1162/dint_a_00146"
_LICENSE = "Wikipedia/Wikimedia content: CC BY-SA; check the license of each image. Annotations: as released by the authors."
_URLS: dict[str, str] = {}  # the corpus is read from a local copy (data_dir)

SPLITS = ("train", "dev", "test")
_SPLIT_NAMES = {"train": datasets.Split.TRAIN, "dev": datasets.Split.VALIDATION, "test": datasets.Split.TEST}


@dataclass
class ZemeldConfig(datasets.BuilderConfig):
    """BuilderConfig of ZEMELD.

    Args:
        strict: raise ValueError at the first bad annotation instead of skipping it.
    """

    strict: bool = False


def with_text(row: dict) -> dict:
    """A ZEMELD mention row as every linker reads it: ZEMELD names a mention's text ``caption``; the package's
    linkers, the pipeline and ``mel calibrate`` read ``text`` (the one place where a ZEMELD row is adapted)."""
    out = dict(row)
    caption = out.pop("caption", None)
    if out.get("text") is None:
        out["text"] = caption
    return out


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: invalid JSON: {err}") from err
    return rows


def _image_size(row: dict, path: str) -> tuple[float, float]:
    if row.get("width") and row.get("height"):
        return float(row["width"]), float(row["height"])
    from PIL import Image

    with Image.open(path) as img:  # reads the header only
        return float(img.size[0]), float(img.size[1])


def check_box(box, width: float, height: float) -> str | None:
    """Reason a box is invalid (None when valid): wrong length, x2<=x1 / y2<=y1, or outside the image."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return "bad_box_format"
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return "box_empty"
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        return "box_outside_image"
    return None


def split_overlaps(entities: dict[str, set[str]]) -> dict[str, list[str]]:
    """Entity ids gold in two splits (sorted): ``train&dev``, ``train&test``, ``train&(dev|test)`` (zero-shot
    violations) and ``dev&test`` (allowed in the zero-shot setting: neither is seen in training)."""
    train, dev, test = (set(entities.get(s, ())) for s in SPLITS)
    return {
        "train&dev": sorted(train & dev),
        "train&test": sorted(train & test),
        "train&(dev|test)": sorted(train & (dev | test)),
        "dev&test": sorted(dev & test),
    }


def _mention_rows(valid: list[dict], image_id: str, image: str, width: float, height: float, caption: str,
                  kb: dict[str, dict], split: str) -> list[dict]:
    """The ``mentions`` rows of one image: one per entry of ``valid`` (see :meth:`Zemeld._valid_entities`), each
    with the boxes, mentions, starts and entity ids of all of them."""
    return [
        {
            "id": f"{image_id}-{j}",
            "image_id": image_id,
            "image": image,
            "width": int(width),
            "height": int(height),
            "caption": caption,
            "mention": ent["mention"],
            "mention_start": ent["start"],
            "mention_end": ent["end"],
            "box": ent["box"],
            "box_index": j,
            "entity_id": ent["entity_id"],
            "entity_name": str(kb[ent["entity_id"]].get("name", "")),
            "image_boxes": [e["box"] for e in valid],
            "image_mentions": [e["mention"] for e in valid],
            "image_mention_starts": [e["start"] for e in valid],
            "image_entity_ids": [e["entity_id"] for e in valid],
            "split": split,
        }
        for j, ent in enumerate(valid)
    ]


class Zemeld(datasets.GeneratorBasedBuilder):
    """ZEMELD builder: configs ``mentions`` (one row per annotated box/mention/entity) and ``kb`` (entities)."""

    BUILDER_CONFIG_CLASS = ZemeldConfig
    VERSION = datasets.Version("1.1.0")  # 1.1.0: kb rows carry splits / seen_in_training
    BUILDER_CONFIGS = [
        ZemeldConfig(name="mentions", version=VERSION, description="One row per (box, mention, entity) annotation."),
        ZemeldConfig(name="kb", version=VERSION, description="Wikipedia entities: name, description, images."),
    ]
    DEFAULT_CONFIG_NAME = "mentions"

    def _info(self) -> datasets.DatasetInfo:
        if self.config.name == "kb":
            features = datasets.Features(
                {
                    "entity_id": datasets.Value("string"),
                    "name": datasets.Value("string"),
                    "description": datasets.Value("string"),
                    "images": datasets.Sequence(datasets.Value("string")),
                    "split": datasets.Value("string"),
                    "splits": datasets.Sequence(datasets.Value("string")),
                    "seen_in_training": datasets.Value("bool"),
                }
            )
        else:
            features = datasets.Features(
                {
                    "id": datasets.Value("string"),
                    "image_id": datasets.Value("string"),
                    "image": datasets.Value("string"),
                    "width": datasets.Value("int32"),
                    "height": datasets.Value("int32"),
                    "caption": datasets.Value("string"),
                    "mention": datasets.Value("string"),
                    "mention_start": datasets.Value("int32"),
                    "mention_end": datasets.Value("int32"),
                    "box": datasets.Sequence(datasets.Value("float32"), length=4),
                    "box_index": datasets.Value("int32"),
                    "entity_id": datasets.Value("string"),
                    "entity_name": datasets.Value("string"),
                    "image_boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                    "image_mentions": datasets.Sequence(datasets.Value("string")),
                    "image_mention_starts": datasets.Sequence(datasets.Value("int32")),
                    "image_entity_ids": datasets.Sequence(datasets.Value("string")),
                    "split": datasets.Value("string"),
                }
            )
        return datasets.DatasetInfo(
            description=_DESCRIPTION, features=features, homepage=_HOMEPAGE, license=_LICENSE, citation=_CITATION
        )

    # -- reading and validation ------------------------------------------------------------------------------------
    def _skip(self, reason: str, detail: dict) -> None:
        if self.config.strict:
            raise ValueError(f"ZEMELD: {reason}: {json.dumps(detail, ensure_ascii=False)}")
        self._skipped[reason] += 1
        self._skipped_records.append({"reason": reason, **detail})

    def _load(self, data_dir: str) -> tuple[dict, dict, dict]:
        """Read and validate; returns (kb rows by id, mention rows by split, entity ids by split)."""
        self._skipped = collections.Counter()
        self._notes = collections.Counter()
        self._skipped_records = []
        for name in ("annotations.jsonl", "kb.jsonl"):
            if not os.path.isfile(os.path.join(data_dir, name)):
                raise ValueError(f"ZEMELD: {name} not found in data_dir {data_dir!r} (see the dataset card for the layout)")
        kb = self._read_kb(data_dir)
        rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for n, ann in enumerate(_read_jsonl(os.path.join(data_dir, "annotations.jsonl"))):
            self._add_annotation(n, ann, data_dir, kb, rows)
        entities = {s: {r["entity_id"] for r in rows[s]} for s in SPLITS}
        self._check_zero_shot(entities)
        self._log_counts(rows)
        self._write_skipped()
        return kb, rows, entities

    def _read_kb(self, data_dir: str) -> dict[str, dict]:
        """The rows of ``kb.jsonl`` by entity id (a row without ``entity_id`` is skipped)."""
        kb = {}
        for row in _read_jsonl(os.path.join(data_dir, "kb.jsonl")):
            eid = str(row.get("entity_id", ""))
            if not eid:
                self._skip("kb_row_without_entity_id", {"row": row})
                continue
            kb[eid] = row
        return kb

    def _add_annotation(self, n: int, ann: dict, data_dir: str, kb: dict[str, dict],
                        rows: dict[str, list[dict]]) -> None:
        """Append to ``rows[split]`` one mention row per valid entity of the annotated image ``ann`` (line ``n`` of
        ``annotations.jsonl``); an unknown split or a missing / unreadable image skips the whole annotation."""
        image_id = str(ann.get("image_id") or os.path.splitext(os.path.basename(str(ann.get("image", n))))[0])
        split = ann.get("split")
        if split not in SPLITS:
            self._skip("unknown_split", {"image_id": image_id, "split": split})
            return
        path = os.path.join(data_dir, str(ann.get("image", "")))
        if not ann.get("image") or not os.path.isfile(path):
            self._skip("missing_image", {"image_id": image_id, "image": ann.get("image")})
            return
        try:
            width, height = _image_size(ann, path)
        except Exception as err:  # unreadable image header
            self._skip("unreadable_image", {"image_id": image_id, "image": ann.get("image"), "error": str(err)})
            return
        caption = str(ann.get("caption") or "")
        valid = self._valid_entities(ann, image_id, caption, width, height, kb)
        rows[split].extend(_mention_rows(valid, image_id, os.path.abspath(path), width, height, caption, kb, split))

    def _valid_entities(self, ann: dict, image_id: str, caption: str, width: float, height: float,
                        kb: dict[str, dict]) -> list[dict]:
        """The entities of ``ann`` kept (box in the image, non-empty mention, entity in the KB), each as ``box``,
        ``mention``, ``start``/``end`` (resolved in ``caption``; None when nothing aligns) and ``entity_id``; the
        others are skipped by reason, and offset notes are counted."""
        valid = []
        for j, ent in enumerate(ann.get("entities") or []):
            detail = {"image_id": image_id, "index": j, "box": ent.get("box"), "mention": ent.get("mention"),
                      "entity_id": ent.get("entity_id")}
            reason = check_box(ent.get("box"), width, height)
            if reason:
                self._skip(reason, detail)
                continue
            mention = str(ent.get("mention") or "")
            if not mention.strip():
                self._skip("empty_mention", detail)
                continue
            start = ent.get("mention_start")
            start = None if start is None else int(start)
            end = None if start is None else int(ent.get("mention_end") or start + len(mention))
            start, end, status = resolve_offsets(caption, mention, start, end)
            note = offset_note(status)
            if note:  # kept: aligned by tokens, or without a span when nothing aligns
                self._notes[note] += 1
            eid = str(ent.get("entity_id", ""))
            if eid not in kb:
                self._skip("entity_not_in_kb", detail)
                continue
            valid.append({"box": [float(v) for v in ent["box"]], "mention": mention, "start": start, "end": end,
                          "entity_id": eid})
        return valid

    def _check_zero_shot(self, entities: dict[str, set[str]]) -> None:
        """Record the split overlaps; raise ValueError when a dev/test entity is gold in training (ids listed); warn
        about entities gold in both dev and test (allowed)."""
        self._overlaps = split_overlaps(entities)
        leaks = [(s, self._overlaps[f"train&{s}"]) for s in ("dev", "test") if self._overlaps[f"train&{s}"]]
        if leaks:
            raise ValueError(
                "ZEMELD zero-shot split violated: "
                + "; ".join(f"{len(ids)} {s} entities also appear in train: {ids[:20]}" + (" ..." if len(ids) > 20 else "")
                            for s, ids in leaks)
            )
        shared = self._overlaps["dev&test"]
        if shared:  # allowed (both are unseen in training), but reported: each is in the KB of both splits
            logger.warning("ZEMELD: %d entities are gold in both dev and test (kept in both KBs): %s%s", len(shared),
                           shared[:20], " ..." if len(shared) > 20 else "")

    def _log_counts(self, rows: dict[str, list[dict]]) -> None:
        """Log the mentions per split, the skipped annotations by reason and the notes on kept mentions."""
        total = sum(self._skipped.values())
        logger.info(
            "ZEMELD: %s mentions; skipped %d annotations%s",
            {s: len(rows[s]) for s in SPLITS},
            total,
            f" ({dict(self._skipped)})" if total else "",
        )
        if total:
            logger.warning("ZEMELD: skipped %d bad annotations by reason: %s", total, dict(self._skipped))
        if self._notes:
            logger.info("ZEMELD: notes on kept mentions: %s", dict(sorted(self._notes.items())))

    def _write_skipped(self) -> None:
        path = os.path.join(self._cache_dir_root, f"zemeld-{self.config.name}-skipped.json")
        self.skipped_path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"counts": dict(self._skipped), "notes": dict(sorted(self._notes.items())),
                       "overlaps": getattr(self, "_overlaps", {}), "skipped": self._skipped_records}, f, indent=1)

    @property
    def skipped(self) -> collections.Counter:
        """Counts of skipped annotations by reason (after `download_and_prepare`)."""
        return getattr(self, "_skipped", collections.Counter())

    @property
    def overlaps(self) -> dict[str, list[str]]:
        """Entity ids gold in two splits (after `download_and_prepare`): ``train&dev``, ``train&test`` (zero-shot
        violations: the build raises), ``train&(dev|test)`` and ``dev&test`` (allowed; reported)."""
        return getattr(self, "_overlaps", {})

    @property
    def notes(self) -> collections.Counter:
        """Counts of notes on kept mentions (``aligned``, ``unaligned``, ``offsets repaired``...)."""
        return getattr(self, "_notes", collections.Counter())

    # -- splits ----------------------------------------------------------------------------------------------------
    def _split_generators(self, dl_manager):
        data_dir = self.config.data_dir
        if not data_dir:
            raise ValueError("ZEMELD is read from a local copy: pass data_dir=<folder with annotations.jsonl, kb.jsonl, images/>")
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
        kb, rows, entities = self._load(data_dir)
        if self.config.name == "kb":
            # every split an entity is gold in (an entity gold in dev AND test belongs to both); unused entities kept
            splits_of = {eid: [s for s in SPLITS if eid in entities[s]] for eid in kb}
            kb_rows = [
                {
                    "entity_id": eid,
                    "name": str(row.get("name", "")),
                    "description": str(row.get("description") or ""),
                    "images": [os.path.abspath(os.path.join(data_dir, p)) for p in row.get("images") or []],
                    "split": splits_of[eid][0] if splits_of[eid] else "unused",
                    "splits": splits_of[eid],
                    "seen_in_training": "train" in splits_of[eid],
                }
                for eid, row in kb.items()
            ]
            gens = [
                datasets.SplitGenerator(
                    name=_SPLIT_NAMES[s], gen_kwargs={"rows": [dict(r, split=s) for r in kb_rows if s in r["splits"]]}
                )
                for s in SPLITS
            ]
            gens.append(datasets.SplitGenerator(name="full", gen_kwargs={"rows": kb_rows}))
            return gens
        return [datasets.SplitGenerator(name=_SPLIT_NAMES[s], gen_kwargs={"rows": rows[s]}) for s in SPLITS]

    def _generate_examples(self, rows):
        for i, row in enumerate(rows):
            yield i, row
