"""RichpediaMEL: Wikipedia sentences whose mentions link to Wikidata entities of Richpedia, read as released.

``data_dir`` holds the files of seukgcode/MEL-GHMFC ``datasets/Richpedia-MEL/``::

    train.json       {key: {"id", "sentence", "mentions", "entities", "answer"}}   one mention a row (strings;
                     lists are accepted too: mentions[k] links to answer[k])
    test.json        same layout (optional: read when present)
    dev.json         same layout (optional; the release has none, see below)
    qid2ne.json      {QID: entity name}        the KB
    qid2abs.json     {QID: description}        (optional)
    images/<key>.jpg                           (optional; any image extension; also looked up by the row's id)

Usage::

    from modeling_mel.corpus import load_mel_corpus
    dd = load_mel_corpus("richpedia_mel", "path/to/richpedia")              # train, dev (, test)
    kb = load_mel_corpus("richpedia_mel", "path/to/richpedia", config="kb")

The release has no dev split: without ``dev.json`` a seeded ``dev_fraction`` (0.1, ``seed`` 0) of the train rows is
moved to dev (:func:`modeling_mel.corpus.seeded_holdout`); the same seed gives the same split. No mention is lost:
see :class:`modeling_mel.corpus.WikidataMelBuilder` and the dataset card.
"""

from __future__ import annotations

import logging
import os

import datasets

from modeling_mel.corpus import SkipReport, WikidataMelBuilder, WikidataMelConfig, load_json_file

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
RichpediaMEL: sentences from Wikipedia with one mention each, linked to a Wikidata entity of the Richpedia
multimodal KG. The KB is the released qid2ne.json / qid2abs.json. Same schema as mel_jsonl.
"""

_HOMEPAGE = "https://github.com/seukgcode/MEL-GHMFC"

_LICENSE = "MIT (seukgcode/MEL-GHMFC); Wikipedia text and images keep their own licences."

_URLS: dict[str, str] = {}  # nothing is downloaded: the builder reads data_dir

SPLIT_FILES = {"train": "train.json", "dev": "dev.json", "test": "test.json"}
DEV_ALIASES = ("dev.json", "valid.json", "validation.json")


class RichpediaMel(WikidataMelBuilder):
    """Mentions and KB of RichpediaMEL from its released files (see the module docstring)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIGS = [
        WikidataMelConfig(name="mentions", version=VERSION, description="One row per mention."),
        WikidataMelConfig(name="kb", version=VERSION, description="One row per Wikidata entity (qid2ne.json)."),
    ]
    DESCRIPTION, HOMEPAGE, LICENSE, CITATION = _DESCRIPTION, _HOMEPAGE, _LICENSE, _CITATION
    REQUIRED_FILES = ("train.json", "qid2ne.json")

    def _release_splits(self, data_dir: str, report: SkipReport) -> dict[str, list[tuple[str, dict, str]]]:
        out: dict[str, list[tuple[str, dict, str]]] = {}
        for split in ("train", "dev", "test"):
            names = DEV_ALIASES if split == "dev" else (SPLIT_FILES[split],)
            name = next((n for n in names if os.path.isfile(os.path.join(data_dir, n))), None)
            if name is None:
                continue
            path = os.path.join(data_dir, name)
            rows = load_json_file(path, "{key: {id, sentence, mentions, entities, answer}}")
            if isinstance(rows, list):  # a list of samples: keyed by their id, else their position
                rows = {str((r.get("id") if isinstance(r, dict) else None) or i): r for i, r in enumerate(rows)}
            if not isinstance(rows, dict):
                raise ValueError(f"{path} holds a {type(rows).__name__}; expected {{key: sample}}.")
            out[split] = [(str(k), v, f"{name}:{k}") for k, v in rows.items()]
        return out
