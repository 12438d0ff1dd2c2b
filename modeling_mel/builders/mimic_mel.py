"""WikiMEL, RichpediaMEL and WikiDiverse in the layout MIMIC (KDD'23) released, the one M3EL, MMoE, KGMEL and OT-MEL
train and evaluate on. ``data_dir`` is ONE dataset folder of that release::

    WikiMEL/       kb_entity.json  qid2id.json  WIKIMEL_{train,dev,test}.json       kb_image/  mention_image/
    RichpediaMEL/  kb_entity.json  qid2id.json  RichpediaMEL_{train,dev,test}.json  kb_image/  mention_images/
    WikiDiverse/   kb_entity.json  qid2id.json  wiki_diverse_{train,dev,test}.json  kb_image/  mention_image/
                   (M3EL / MMoE ship replacement split files WikiDiverse_{train,dev,test}.json)

Usage::

    from modeling_mel.corpus import load_mel_corpus
    dd = load_mel_corpus("mimic_mel", "path/to/RichpediaMEL")              # mentions: train, dev, test
    kb = load_mel_corpus("mimic_mel", "path/to/RichpediaMEL", config="kb")  # one row per entity, in qid2id order

The rules (``../shared/formats/MIMIC_LAYOUT.md``; the dataset card ``datasets_scripts/mimic_mel/README.md``):

* every split file and ``kb_entity.json`` is one JSON list; the split files are found by their prefix (a folder with
  two prefix families, e.g. both WikiDiverse variants, needs ``split_prefix=``);
* mention records ``{mentions, sentence, imgPath, answer, entities, desc, id}``: ``mentions`` is URL-unquoted
  (``urllib.parse.unquote``); no offsets are given, so the mention is located in the sentence by
  :func:`modeling_mel.corpus.resolve_offsets` (kept without a span when nothing aligns); ``answer`` is the gold QID,
  or ``"nil"``: kept as a NIL mention (``entity_id`` :data:`modeling_mel.nil.NIL_ENTITY_ID`); a row's ``id`` is
  ``<split>-<position in the file>`` (the records' own ``id`` is not unique and not read);
* the mention image is ``mention_image/`` (RichpediaMEL: ``mention_images/``) + the base name of ``imgPath`` cut at its
  FIRST dot + ``.jpg``; ``imgPath`` ``""`` means no image;
* KB records ``{id, qid, type, entity_name, attr | desc, image_list}``: only ``type == "entity"``; sorted by ``id``,
  the k-th record is at position k, and ``qid2id.json`` (``{QID: position}``) names the QID at each position (as the
  loaders index scores by it; the ``qid`` field is used only for a position ``qid2id`` lacks); the KB rows come out in
  position order; ``entity_name`` is URL-unquoted; the description is ``attr`` (MIMIC) or ``desc`` (M3EL / MMoE);
  ``images`` are ``kb_image/`` + each ``image_list`` entry as is, in order (evaluation uses the first);
* a missing, unreadable or ``""`` image is kept as no image and counted; nothing is dropped silently: every skipped
  record and every note is counted by reason in the build report (log line, ``info.description``, ``skipped.json`` in
  ``<cache_dir>/mel_reports/mimic_mel/<config id>/``; the release folder is left untouched).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import urllib.parse
from typing import Any

import datasets

from modeling_mel.corpus import (
    ImageChecker,
    MelCorpusBuilder,
    MelCorpusConfig,
    SkipReport,
    emit_split_rows,
    load_json_file,
    mention_record,
    offset_note,
    resolve_offsets,
)
from modeling_mel.nil import NIL_ENTITY_ID

logger = logging.getLogger(__name__)

_CITATION = """\
@inproceedings{luo2023mimic,
  title     = {Multi-Grained Multimodal Interaction Network for Entity Linking},
  author    = {Luo, Pengfei and Xu, Tong and Wu, Shiwei and Zhu, Chen and Xu, Linli and Chen, Enhong},
  booktitle = {Proceedings of the 29th ACM SIGKDD Conference on Knowledge Discovery and Data Mining (KDD '23)},
  publisher = {ACM},
  year      = {2023}
}
"""

_DESCRIPTION = """\
WikiMEL, RichpediaMEL or WikiDiverse as preprocessed and released by MIMIC (KDD'23): captions / sentences with one
mention each, linked to Wikidata QIDs of a KB of 109,976 / 160,933 / 132,460 entities with images (or NIL). Same schema
as mel_jsonl; the KB rows are in the order of the release's qid2id.json.
"""

_HOMEPAGE = "https://github.com/pengfei-luo/MIMIC"

_LICENSE = ("See the MIMIC repository for the terms of the preprocessed release; the texts and images come from "
            "Wikipedia / Wikimedia Commons, Richpedia and WikiDiverse and keep their own licences.")

_URLS: dict[str, str] = {}  # nothing is downloaded: the builder reads data_dir

#: split file prefix -> dataset (MIMIC's names; ``WikiDiverse_`` are the replacement files of M3EL / MMoE)
SPLIT_PREFIXES = {
    "WIKIMEL_": "WikiMEL",
    "RichpediaMEL_": "RichpediaMEL",
    "wiki_diverse_": "WikiDiverse",
    "WikiDiverse_": "WikiDiverse",
}
SPLITS = ("train", "dev", "test")
KB_FILE, QID2ID_FILE = "kb_entity.json", "qid2id.json"
KB_IMAGE_DIR = "kb_image"
#: mention image folder as shipped, first choice first (RichpediaMEL's is plural)
MENTION_IMAGE_DIRS = {"RichpediaMEL": ("mention_images", "mention_image")}
DEFAULT_MENTION_IMAGE_DIRS = ("mention_image", "mention_images")
NIL_ANSWER = "nil"


def unquote(value: str) -> str:
    """``urllib.parse.unquote`` (how the MIMIC loaders read ``mentions`` and ``entity_name``)."""
    return urllib.parse.unquote(value)


def mention_image_name(img_path: str) -> str:
    """The mention image file of an ``imgPath``: its base name cut at the FIRST dot, plus ``.jpg``
    (``"a/b/123.png"`` -> ``"123.jpg"``, ``"x.y.jpg"`` -> ``"x.jpg"``)."""
    base = posixpath.basename(str(img_path).replace("\\", "/"))
    return base.split(".", 1)[0] + ".jpg"


def _files(directory: str) -> set[str]:
    """Names of the files directly in ``directory`` (empty when it is not a folder): one listing, no stat per image."""
    if not os.path.isdir(directory):
        return set()
    return {e.name for e in os.scandir(directory) if e.is_file()}


@dataclasses.dataclass
class MimicMelConfig(MelCorpusConfig):
    """Config of the ``mimic_mel`` builder.

    Args:
        split_prefix (`str`, *optional*): the split files' prefix, one of :data:`SPLIT_PREFIXES`; found in
            ``data_dir`` when not given (required when the folder holds files of two prefixes, e.g. ``wiki_diverse_``
            and ``WikiDiverse_``).
        Plus :class:`~modeling_mel.corpus.MelCorpusConfig` (``seed`` is unused, ``require_image``); ``split_method``
        must stay ``"auto"``: the splits are the release's files.
    """

    split_prefix: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.split_method != "auto":
            raise ValueError(f"split_method={self.split_method!r}: mimic_mel uses the release's split files; pass 'auto'.")
        if self.split_prefix is not None and self.split_prefix not in SPLIT_PREFIXES:
            raise ValueError(f"split_prefix={self.split_prefix!r} is not one of {list(SPLIT_PREFIXES)}.")


class MimicMel(MelCorpusBuilder):
    """Mentions and KB of one dataset of the MIMIC release (see the module docstring)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = MimicMelConfig
    BUILDER_CONFIGS = [
        MimicMelConfig(name="mentions", version=VERSION, description="One row per mention (NIL answers included)."),
        MimicMelConfig(name="kb", version=VERSION, description="One row per KB entity, in qid2id position order."),
    ]
    DESCRIPTION, HOMEPAGE, LICENSE, CITATION = _DESCRIPTION, _HOMEPAGE, _LICENSE, _CITATION
    KB_FILE = KB_FILE

    # -- layout ------------------------------------------------------------------------------------------------------
    def _prefixes_in(self, data_dir: str) -> dict[str, list[str]]:
        """``{prefix: [splits with a file]}`` of the prefixes present in ``data_dir``."""
        names = _files(data_dir)
        found = {p: [s for s in SPLITS if f"{p}{s}.json" in names] for p in SPLIT_PREFIXES}
        return {p: s for p, s in found.items() if s}

    def _data_dir(self) -> str:
        data_dir = self.config.data_dir
        if not data_dir or not os.path.isdir(data_dir):
            raise ValueError(f"MimicMel needs data_dir= one dataset folder of the MIMIC release (WikiMEL/, RichpediaMEL/ "
                             f"or WikiDiverse/); got {data_dir!r}.")
        data_dir = os.path.abspath(data_dir)
        self._prefix = self._split_prefix(data_dir)
        missing = [f for f in (KB_FILE, QID2ID_FILE) if not os.path.isfile(os.path.join(data_dir, f))]
        if missing:
            raise FileNotFoundError(
                f"{data_dir} lacks {', '.join(missing)}; the MIMIC layout needs {KB_FILE}, {QID2ID_FILE} and the split "
                "files (see datasets_scripts/mimic_mel/README.md)."
            )
        return data_dir

    def _split_prefix(self, data_dir: str) -> str:
        present = self._prefixes_in(data_dir)
        wanted = self.config.split_prefix
        if wanted is not None:
            if wanted not in present:
                raise FileNotFoundError(f"{data_dir} has no {wanted}{{train,dev,test}}.json (split_prefix={wanted!r}).")
            return wanted
        if len(present) == 1:
            return next(iter(present))
        if len(present) > 1:
            raise ValueError(
                f"{data_dir} holds split files of {len(present)} prefixes ({', '.join(sorted(present))}); pass "
                "split_prefix= one of them (WikiDiverse: 'wiki_diverse_' are MIMIC's files, 'WikiDiverse_' the "
                "replacements shipped by M3EL / MMoE)."
            )
        subfolders = sorted(n for n in ("WikiMEL", "RichpediaMEL", "WikiDiverse") if os.path.isdir(os.path.join(data_dir, n)))
        hint = f" It has the dataset folders {subfolders}: pass one of them." if subfolders else ""
        expected = ", ".join(f"{p}train.json" for p in SPLIT_PREFIXES)
        raise FileNotFoundError(f"{data_dir} holds no MIMIC split file ({expected}, ... with _dev / _test).{hint}")

    def _report_dirs(self, data_dir: str) -> list[str]:
        # the release folder is left untouched: the report goes next to the Arrow cache
        return [os.path.join(self._cache_dir_root, "mel_reports", self.name, self.config_id)]

    # -- KB ------------------------------------------------------------------------------------------------------------
    def _qid2id(self, data_dir: str, report: SkipReport, size: int) -> dict[int, str]:
        """``{position: QID}`` from ``qid2id.json``; entries without a usable position are counted (notes: they are
        not rows, and their mentions get the note ``entity not in KB``)."""
        path = os.path.join(data_dir, QID2ID_FILE)
        raw = load_json_file(path, "{QID: position}")
        if not isinstance(raw, dict):
            raise ValueError(f"{path} holds a {type(raw).__name__}; expected {{QID: position}} on one line.")
        out: dict[int, str] = {}
        for qid, pos in raw.items():
            qid = str(qid).strip()
            if isinstance(pos, bool) or not isinstance(pos, int):
                report.note("qid2id: position not an int", f"{QID2ID_FILE}:{qid}")
            elif not 0 <= pos < size:
                report.note("qid2id: position out of range", f"{QID2ID_FILE}:{qid}")
            elif pos in out:
                report.note("qid2id: position given to several QIDs (first kept)", f"{QID2ID_FILE}:{qid}")
            else:
                out[pos] = qid
        return out

    def _load_kb(self, data_dir: str, report: SkipReport) -> list[dict]:
        path = os.path.join(data_dir, KB_FILE)
        records = load_json_file(path, "a list of {id, qid, type, entity_name, attr, image_list}")
        if not isinstance(records, list):
            raise ValueError(f"{path} holds a {type(records).__name__}; expected a JSON list of entity records.")
        valid: list[tuple[int, dict, str]] = []
        for i, rec in enumerate(records):
            where = f"{KB_FILE}:{i}"
            if not isinstance(rec, dict):
                report.skip("malformed record", where)
            elif rec.get("type") != "entity":
                report.skip("type is not 'entity'", where)
            elif isinstance(rec.get("id"), bool) or not isinstance(rec.get("id"), int):
                report.skip("id not an int", where)
            else:
                valid.append((rec["id"], rec, where))
        valid.sort(key=lambda t: t[0])  # stable: equal ids keep the file order
        positions = self._qid2id(data_dir, report, len(valid))
        image_dir = os.path.join(data_dir, KB_IMAGE_DIR)
        on_disk = _files(image_dir)
        check = ImageChecker()
        kb, seen = [], set()
        for pos, (_, rec, where) in enumerate(valid):
            own = str(rec.get("qid") or "").strip()
            qid = positions.get(pos)
            if qid is None:
                if not own:
                    report.skip("entity without QID (no qid2id position, no qid field)", where)
                    continue
                qid = own
                report.note("QID from the qid field (position not in qid2id)", where)
            elif own and own != qid:
                report.note("qid field differs from qid2id (qid2id used)", where)
            if qid in seen:
                report.skip("duplicate QID", where)
                continue
            seen.add(qid)
            name = rec.get("entity_name")
            name = unquote(name) if isinstance(name, str) else ""
            if name != rec.get("entity_name") and name:
                report.note("entity name URL-unquoted", where)
            if not name.strip():
                report.note("missing name", where)
            if isinstance(rec.get("attr"), str):
                description = rec["attr"]
            elif isinstance(rec.get("desc"), str):
                description = rec["desc"]
                report.note("description from desc (M3EL / MMoE files)", where)
            else:
                description = ""
                report.note("no description (neither attr nor desc)", where)
            images = []
            image_list = rec.get("image_list")
            if image_list is None:
                image_list = []
            if not isinstance(image_list, list):
                report.note("image_list not a list (no image)", where)
                image_list = []
            for entry in image_list:
                if not isinstance(entry, str) or not entry.strip():
                    report.note("KB image '' (no image)", where)
                elif entry not in on_disk:
                    report.note("missing KB image file", f"{where}:{entry}")
                elif not check(os.path.join(image_dir, entry)):
                    report.note("unreadable KB image", f"{where}:{entry}")
                else:
                    images.append(os.path.join(image_dir, entry))
            if not images:
                report.note("entity without image", where)
            kb.append(
                {
                    "entity_id": qid,
                    "name": name.strip(),
                    "screen_name": "",
                    "location": "",
                    "description": description.strip(),
                    "images": images,
                    "timeline": [],
                }
            )
        return kb

    # -- mentions ------------------------------------------------------------------------------------------------------
    def _mention_image_dir(self, data_dir: str) -> str | None:
        dataset = SPLIT_PREFIXES[self._prefix]
        for name in MENTION_IMAGE_DIRS.get(dataset, DEFAULT_MENTION_IMAGE_DIRS):
            if os.path.isdir(os.path.join(data_dir, name)):
                if name != MENTION_IMAGE_DIRS.get(dataset, DEFAULT_MENTION_IMAGE_DIRS)[0]:
                    logger.info("%s: mention images read from %s/ (the %s release names it %s/)", self.name, name,
                                dataset, MENTION_IMAGE_DIRS.get(dataset, DEFAULT_MENTION_IMAGE_DIRS)[0])
                return os.path.join(data_dir, name)
        logger.warning("%s: %s has no mention image folder (%s): every mention image is missing", self.name, data_dir,
                       " or ".join(f"{n}/" for n in MENTION_IMAGE_DIRS.get(dataset, DEFAULT_MENTION_IMAGE_DIRS)))
        return None

    def _record_entry(
        self, split: str, i: int, rec: Any, name: str, kb_ids: set, image_dir: str | None, on_disk: set,
        check: ImageChecker, report: SkipReport,
    ) -> dict | None:
        where = f"{name}:{i}"
        if not isinstance(rec, dict):
            report.skip("malformed record", where)
            return None
        text = rec.get("sentence")
        if not isinstance(text, str) or not text.strip():
            report.skip("sample without sentence", where)
            return None
        mention, answer = rec.get("mentions"), rec.get("answer")
        if not isinstance(mention, str) or not isinstance(answer, str) or not mention.strip() or not answer.strip():
            report.skip("empty mention or answer", where)
            return None
        notes = []
        unquoted = unquote(mention)
        if unquoted != mention:
            notes.append("mention URL-unquoted")
        mention = unquoted
        answer = answer.strip()
        if answer.lower() == NIL_ANSWER:
            entity_id = NIL_ENTITY_ID
            notes.append("NIL answer (kept as a NIL mention)")
        else:
            entity_id = answer
            if entity_id not in kb_ids:
                notes.append("entity not in KB")
        start, end, status = resolve_offsets(text, mention, None, None)
        notes += [n for n in [offset_note(status)] if n]
        image, problem = None, None
        img_path = rec.get("imgPath")
        if img_path is None:
            problem = "no image (no imgPath)"
        elif not isinstance(img_path, str) or not img_path.strip():
            problem = "no image (imgPath '')"
        else:
            file_name = mention_image_name(img_path)
            if image_dir is None or file_name not in on_disk:
                problem = "missing image file"
            elif not check(os.path.join(image_dir, file_name)):
                problem = "unreadable image"
            else:
                image = os.path.join(image_dir, file_name)
        if problem:
            if self.config.require_image:
                report.skip(problem, where)
                return None
            notes.append(problem)
        return mention_record(f"{split}-{i}", text, mention, start, end, image, entity_id, where, notes)

    def _mentions(self, data_dir: str, report: SkipReport) -> dict[str, list[dict]]:
        kb_ids = {e["entity_id"] for e in self._load_kb(data_dir, SkipReport(self.name, "kb"))}
        prefix = self._prefix
        names = _files(data_dir)
        for other in sorted(n for n in names if n.startswith(prefix) and n.endswith(".json")
                            and n not in {f"{prefix}{s}.json" for s in SPLITS}):
            report.note(f"split file not read: {other}")
            logger.warning("%s: %s is not one of %s{train,dev,test}.json: not read", self.name, other, prefix)
        image_dir = self._mention_image_dir(data_dir)
        on_disk = _files(image_dir) if image_dir else set()
        check = ImageChecker()
        out: dict[str, list[dict]] = {}
        for split in SPLITS:
            name = f"{prefix}{split}.json"
            if name not in names:
                continue
            records = load_json_file(os.path.join(data_dir, name), "a list of {mentions, sentence, imgPath, answer}")
            if not isinstance(records, list):
                raise ValueError(f"{os.path.join(data_dir, name)} holds a {type(records).__name__}; expected a JSON list "
                                 "of mention records.")
            entries = [self._record_entry(split, i, rec, name, kb_ids, image_dir, on_disk, check, report)
                       for i, rec in enumerate(records)]
            out[split] = [e for e in entries if e is not None]
        if not any(out.values()):
            raise ValueError(f"No usable mention in {data_dir}: {report.summary()}")
        logger.info("%s: %s (%s)", self.name, SPLIT_PREFIXES[prefix], prefix)
        return emit_split_rows(out, report)
