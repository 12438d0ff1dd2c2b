"""Generic multimodal entity linking corpus in the JSONL layout of the project (any KB, any posts).

``data_dir`` holds::

    mentions.jsonl   {"id", "text", "mention", "mention_start"?, "mention_end"?, "image"?: path,
                      "entity_id", "split"?}          one row per mention (several rows per text allowed)
    kb.jsonl         {"entity_id", "name", "description"?, "images"?: [paths],
                      "screen_name"?, "location"?, "timeline"?: [{"tweet_id"?, "text", "image"?}]}

Image paths are relative to ``data_dir`` (absolute paths work too). The Features are exactly those
of ``twitter_mel`` (:data:`modeling_mel.corpus.MENTION_FEATURES`, :data:`~modeling_mel.corpus.KB_FEATURES`).
Splits come from the ``split`` field (train / dev / test; ``validation`` is read as dev) or, when no
row has one, from the seeded PFMEL split (train, train07, train05, dev, test).

Usage::

    from modeling_mel.corpus import load_mel_corpus
    dd = load_mel_corpus("mel_jsonl", "path/to/corpus")            # mentions
    kb = load_mel_corpus("mel_jsonl", "path/to/corpus", config="kb")

Every row that is dropped is counted by reason (log line, ``skipped.json``, ``info.description``).
"""

from __future__ import annotations

import json
import logging
import os

import datasets

from modeling_mel.corpus import (
    MelCorpusBuilder,
    ImageChecker,
    MelCorpusConfig,
    SkipReport,
    emit_split_rows,
    normalize_entity_key,
    offset_note,
    paper_split,
    read_lines,
    resolve_offsets,
    sort_timeline,
)

logger = logging.getLogger(__name__)

_CITATION = """\
@inproceedings{adjali-etal-2020-building,
    title = "Building a Multimodal Entity Linking Dataset From Tweets",
    author = "Adjali, Omar and Besan{\\c{c}}on, Romaric and Ferret, Olivier and Le Borgne, Herv{\\'e} and Grau, Brigitte",
    booktitle = "Proceedings of the Twelfth Language Resources and Evaluation Conference",
    year = "2020",
    address = "Marseille, France",
    publisher = "European Language Resources Association",
    pages = "4285--4292",
    url = "https://aclanthology.org/2020.lrec-1.528",
}
"""

_DESCRIPTION = """\
A multimodal entity linking corpus in the generic modeling-mel JSONL layout: mentions in short texts
with an optional image, each linked to an entity of a KB whose entries have a name, a description,
images and optionally a timeline of posts (Twitter-style KBs). Same schema as twitter_mel.
"""

_HOMEPAGE = ""

_LICENSE = "Set by the owner of the corpus."

_URLS: dict[str, str] = {}  # nothing is downloaded: the builder reads data_dir

MENTIONS_FILE = "mentions.jsonl"
KB_FILE = "kb.jsonl"
SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "test": "test"}


def _as_str(value) -> str:
    return "" if value is None else str(value)


class MelJsonl(MelCorpusBuilder):
    """Mentions and KB from ``mentions.jsonl`` and ``kb.jsonl`` (see the module docstring)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIGS = [
        MelCorpusConfig(name="mentions", version=VERSION, description="One row per mention."),
        MelCorpusConfig(name="kb", version=VERSION, description="One row per entity."),
    ]
    DESCRIPTION, HOMEPAGE, LICENSE, CITATION = _DESCRIPTION, _HOMEPAGE, _LICENSE, _CITATION
    KB_FILE = KB_FILE

    def _data_dir(self) -> str:
        data_dir = self.config.data_dir
        if not data_dir or not os.path.isdir(data_dir):
            raise ValueError(f"MelJsonl needs data_dir= a folder with {MENTIONS_FILE} and {KB_FILE}; got {data_dir!r}.")
        data_dir = os.path.abspath(data_dir)
        missing = [f for f in (MENTIONS_FILE, KB_FILE) if not os.path.isfile(os.path.join(data_dir, f))]
        if missing:
            raise FileNotFoundError(
                f"{data_dir} lacks {', '.join(missing)}; the mel_jsonl layout needs {MENTIONS_FILE} and {KB_FILE}."
            )
        return data_dir

    def _read_jsonl(self, path: str, report: SkipReport):
        name = os.path.basename(path)
        for no, line in read_lines(path, report):
            where = f"{name}:{no}"
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                report.skip("malformed JSON line", where)
                continue
            yield where, rec

    @staticmethod
    def _image(data_dir: str, value, check: ImageChecker) -> tuple[str | None, str | None]:
        """``(absolute path or None, problem or None)`` where problem is "no image", "image file missing"
        or "unreadable image"."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None, "no image"
        if not isinstance(value, str):
            return None, "unreadable image"
        path = value if os.path.isabs(value) else os.path.join(data_dir, value)
        if not os.path.isfile(path):
            return None, "image file missing"
        if not check(path):
            return None, "unreadable image"
        return os.path.abspath(path), None

    # ---------------------------------------------------------------------------------------------

    def _load_kb(self, data_dir: str, report: SkipReport, with_images: bool = True) -> list[dict]:
        check = ImageChecker()
        kb, seen = [], set()
        for where, rec in self._read_jsonl(os.path.join(data_dir, KB_FILE), report):
            entity_id = _as_str(rec.get("entity_id")).strip()
            if not entity_id:
                report.skip("missing entity_id", where)
                continue
            key = normalize_entity_key(entity_id)
            if key in seen:
                report.skip("duplicate entity", where)
                continue
            seen.add(key)
            row = {
                "entity_id": entity_id,
                "name": _as_str(rec.get("name")).strip(),
                "screen_name": _as_str(rec.get("screen_name")).strip().lstrip("@"),
                "location": _as_str(rec.get("location")).strip(),
                "description": _as_str(rec.get("description")).strip(),
                "images": [],
                "timeline": [],
            }
            if not row["name"]:
                report.note("missing name", where)
            if with_images:
                timeline = rec.get("timeline") or []
                if not isinstance(timeline, list):
                    report.note("timeline is not a list", where)
                    timeline = []
                for t in timeline:
                    if isinstance(t, str):
                        t = {"text": t}
                    if not isinstance(t, dict):
                        report.note("malformed timeline entry", where)
                        continue
                    image, problem = self._image(data_dir, t.get("image"), check)
                    if problem and problem != "no image":
                        report.note(problem, where)
                    row["timeline"].append(
                        {
                            "tweet_id": _as_str(t.get("tweet_id")).strip(),
                            "text": _as_str(t.get("text")).strip(),
                            "image": image,
                        }
                    )
                row["timeline"] = sort_timeline(row["timeline"])
                images = rec.get("images")
                if images is None:  # like twitter_mel: the timeline images
                    row["images"] = [t["image"] for t in row["timeline"] if t["image"] is not None]
                else:
                    for value in images if isinstance(images, list) else [images]:
                        image, problem = self._image(data_dir, value, check)
                        if problem:
                            report.note(problem, where)
                        else:
                            row["images"].append(image)
            kb.append(row)
        return kb

    def _mentions(self, data_dir: str, report: SkipReport) -> dict[str, list[dict]]:
        kb_report = SkipReport(self.name, "kb")
        kb = self._load_kb(data_dir, kb_report, with_images=False)
        if not kb:
            raise ValueError(f"{os.path.join(data_dir, KB_FILE)} has no usable entity ({kb_report.summary()}).")
        exact = {e["entity_id"] for e in kb}
        by_key = {normalize_entity_key(e["entity_id"]): e["entity_id"] for e in kb}
        check = ImageChecker()
        kept, seen = [], set()
        for where, rec in self._read_jsonl(os.path.join(data_dir, MENTIONS_FILE), report):
            mention_id, text, mention = rec.get("id"), rec.get("text"), rec.get("mention")
            entity = rec.get("entity_id")
            if mention_id is None or not isinstance(text, str) or not isinstance(mention, str) or entity is None:
                report.skip("missing or invalid field", where)
                continue
            mention_id, entity = str(mention_id), str(entity)
            if not text.strip():
                report.skip("empty text", where)
                continue
            start, end = rec.get("mention_start"), rec.get("mention_end")
            if (start is not None and not isinstance(start, int)) or (end is not None and not isinstance(end, int)):
                report.skip("missing or invalid field", where)
                continue
            if (start is None) != (end is None):
                start = end = None
            start, end, status = resolve_offsets(text, mention, start, end)
            notes = [n for n in [offset_note(status)] if n]
            if mention_id in seen:
                report.skip("duplicate mention", where)
                continue
            seen.add(mention_id)
            entity_id = entity if entity in exact else by_key.get(normalize_entity_key(entity))
            if entity_id is None:
                report.skip("entity not in KB", where)
                continue
            image, problem = self._image(data_dir, rec.get("image"), check)
            if problem:
                if self.config.require_image:
                    report.skip(problem, where)
                    continue
                notes.append(problem)
            kept.append(
                {
                    "row": {
                        "id": mention_id,
                        "text": text,
                        "mention": mention,
                        "mention_start": start,
                        "mention_end": end,
                        "image": image,
                        "entity_id": entity_id,
                    },
                    "split": rec.get("split"),
                    "where": where,
                    "notes": notes,
                }
            )
        if not kept:
            raise ValueError(f"No usable mention in {os.path.join(data_dir, MENTIONS_FILE)}: {report.summary()}")
        return emit_split_rows(self._split(kept, report), report)

    def _split(self, kept: list[dict], report: SkipReport) -> dict[str, list[dict]]:
        method = self.config.split_method
        if method in ("lists", "files"):
            raise ValueError(f"split_method={method!r} is for twitter_mel; MelJsonl takes 'auto', 'field' or 'seeded'.")
        has_field = any(k["split"] is not None for k in kept)
        if method == "field" and not has_field:
            raise ValueError("split_method='field' but no row of mentions.jsonl has a 'split' field.")
        if method == "auto":
            method = "field" if has_field else "seeded"
        logger.info("MelJsonl split method: %s", method)
        if method == "seeded":
            idx = paper_split([k["row"]["entity_id"] for k in kept], seed=self.config.seed)
            return {s: [kept[i] for i in ids] for s, ids in idx.items()}
        out: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
        for k in kept:
            if k["split"] is None:
                report.skip("missing split", k["where"])
                continue
            split = SPLIT_ALIASES.get(str(k["split"]).strip().lower())
            if split is None:
                report.skip("unknown split value", k["where"])
                continue
            out[split].append(k)
        return out
