"""WikiMEL (Wikidata-MEL): Wikipedia image captions whose person mentions link to Wikidata, read as released.

``data_dir`` holds the files of seukgcode/MELBench (``Wikidata-MEL/Wikidata-MEL.zip``) and seukgcode/MEL-GHMFC
(``datasets/WikiMEL/``)::

    Wikidata-MEL.json   {sample id: {"id", "sentence", "mentions": [..], "entities": [..], "answer": [QID, ..]}}
                        (mentions[k] links to answer[k]; one row per mention)
    splits.json         {"train": [sample ids], "dev": [..], "test": [..]}   (optional; see below)
    qid2ne.json         {QID: entity name}        the KB
    qid2abs.json        {QID: description}        (optional)
    images/<sample id>.jpg                        (optional; any image extension)

Usage::

    from modeling_mel.corpus import load_mel_corpus
    dd = load_mel_corpus("wikimel", "path/to/wikimel")              # mentions: train, dev (, test)
    kb = load_mel_corpus("wikimel", "path/to/wikimel", config="kb")

Splits come from ``splits.json`` (ids listed there without a sample are counted, per split, as the note
``split id without sample (<split>)``: they are not mentions). Without ``splits.json`` every sample is train; without
a dev split a seeded ``dev_fraction`` (0.1) of the train samples becomes dev. No mention is lost: see
:class:`modeling_mel.corpus.WikidataMelBuilder` and the dataset card.
"""

from __future__ import annotations

import logging
import os

import datasets

from modeling_mel.corpus import (
    RELEASE_SPLIT_ALIASES,
    SkipReport,
    WikidataMelBuilder,
    WikidataMelConfig,
    load_json_file,
)

logger = logging.getLogger(__name__)

_CITATION = """\
@inproceedings{wang2022ghmfc,
  title     = {Multimodal Entity Linking with Gated Hierarchical Fusion and Contrastive Training},
  author    = {Wang, Peng and Wu, Jiangheng and Chen, Xiaohang},
  booktitle = {Proceedings of the 45th International ACM SIGIR Conference on Research and Development in Information
               Retrieval (SIGIR '22)},
  publisher = {ACM},
  year      = {2022}
}
"""

_DESCRIPTION = """\
WikiMEL (Wikidata-MEL): Wikipedia image captions with mentions of people, each linked to a Wikidata item. The KB is
the released qid2ne.json / qid2abs.json (entity name and short description per QID). Same schema as mel_jsonl.
"""

_HOMEPAGE = "https://github.com/seukgcode/MELBench"

_LICENSE = "MIT (seukgcode/MELBench, seukgcode/MEL-GHMFC); Wikipedia captions and images keep their own licences."

_URLS: dict[str, str] = {}  # nothing is downloaded: the builder reads data_dir

SAMPLES_FILE = "Wikidata-MEL.json"
SPLITS_FILE = "splits.json"


class WikiMel(WikidataMelBuilder):
    """Mentions and KB of WikiMEL from its released files (see the module docstring)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIGS = [
        WikidataMelConfig(name="mentions", version=VERSION, description="One row per mention."),
        WikidataMelConfig(name="kb", version=VERSION, description="One row per Wikidata entity (qid2ne.json)."),
    ]
    DESCRIPTION, HOMEPAGE, LICENSE, CITATION = _DESCRIPTION, _HOMEPAGE, _LICENSE, _CITATION
    REQUIRED_FILES = (SAMPLES_FILE, "qid2ne.json")

    def _release_splits(self, data_dir: str, report: SkipReport) -> dict[str, list[tuple[str, dict, str]]]:
        samples = load_json_file(os.path.join(data_dir, SAMPLES_FILE), "{sample id: {id, sentence, mentions, answer}}")
        if not isinstance(samples, dict):
            raise ValueError(f"{os.path.join(data_dir, SAMPLES_FILE)} holds a {type(samples).__name__}; expected "
                             "{sample id: sample}.")
        samples = {str(k): v for k, v in samples.items()}
        path = os.path.join(data_dir, SPLITS_FILE)
        if not os.path.isfile(path):
            logger.warning("%s: no %s; every sample goes to train (a seeded dev is cut from it)", self.name, SPLITS_FILE)
            report.note(f"no {SPLITS_FILE}: all samples in train")
            return {"train": [(k, v, f"{SAMPLES_FILE}:{k}") for k, v in samples.items()]}
        lists = load_json_file(path, "{split: [sample ids]}")
        if not isinstance(lists, dict) or not all(isinstance(v, list) for v in lists.values()):
            raise ValueError(f"{path} must hold {{split: [sample ids]}}, e.g. {{\"train\": [\"21717\", ...]}}.")
        out: dict[str, list[tuple[str, dict, str]]] = {}
        placed: dict[str, str] = {}
        for name, ids in lists.items():
            split = RELEASE_SPLIT_ALIASES.get(str(name).strip().lower())
            if split is None:
                raise ValueError(f"{path}: unknown split {name!r}; expected one of {sorted(RELEASE_SPLIT_ALIASES)}.")
            rows = out.setdefault(split, [])
            missing = 0
            for sid in map(str, ids):
                if sid not in samples:
                    missing += 1
                    continue
                if sid in placed:
                    report.note("sample in several splits (first kept)", f"{SPLITS_FILE}:{split}:{sid}")
                    continue
                placed[sid] = split
                rows.append((sid, samples[sid], f"{SAMPLES_FILE}:{sid}"))
            if missing:
                report.notes[f"split id without sample ({split})"] += missing
                logger.warning("%s: %s lists %d %s ids without a sample in %s (not mentions)", self.name, SPLITS_FILE,
                               missing, split, SAMPLES_FILE)
        for sid in samples:
            if sid not in placed:  # a sample no split lists: its mentions are kept in train, with a note
                report.note("sample in no split (put in train)", f"{SAMPLES_FILE}:{sid}")
                out.setdefault("train", []).append((sid, samples[sid], f"{SAMPLES_FILE}:{sid}"))
        return out
