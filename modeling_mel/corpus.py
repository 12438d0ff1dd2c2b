"""Shared corpus schema, the PFMEL split procedure and the corpus loader.

Every corpus builder of :mod:`modeling_mel.builders` (``twitter_mel``, ``mel_jsonl``, ...) produces the two
configs defined here:

- ``mentions``: one row per mention, :data:`MENTION_FEATURES`;
- ``kb``: one row per entity, :data:`KB_FEATURES`.

:func:`load_mel_corpus` imports a builder from ``modeling_mel.builders.<name>`` (dataset scripts are not supported by
``datasets.load_dataset`` since datasets 4.0, but a ``GeneratorBasedBuilder`` instantiated directly works) and
returns its ``DatasetDict``. ``datasets_scripts/<name>/`` of the repository holds each corpus's card beside a
thin script that re-exports the builder.

The helpers below (:class:`SkipReport`, :func:`resolve_offsets`, :class:`ImageChecker`,
:func:`url_cache_name`) are what the builders share to count every row they drop, by reason. No builder drops a
mention because it is not verbatim in its text: :func:`resolve_offsets` aligns it (note ``aligned``) or keeps it
without a span (``mention_start``/``mention_end`` None, note ``unaligned``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import random
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import datasets
import torch

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------

MENTION_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),  # tweetId, or tweetId-startPos when a tweet has several mentions
        "text": datasets.Value("string"),
        "mention": datasets.Value("string"),
        "mention_start": datasets.Value("int32"),  # None when the mention aligns nowhere in the text
        "mention_end": datasets.Value("int32"),  # exclusive; None with mention_start
        "image": datasets.Image(),  # None when the post has no (readable) image
        "entity_id": datasets.Value("string"),
    }
)

KB_FEATURES = datasets.Features(
    {
        "entity_id": datasets.Value("string"),  # Twitter: screen name without "@", original case
        "name": datasets.Value("string"),
        "screen_name": datasets.Value("string"),  # "" if none
        "location": datasets.Value("string"),
        "description": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "timeline": datasets.List(
            {
                "tweet_id": datasets.Value("string"),
                "text": datasets.Value("string"),
                "image": datasets.Image(),
            }
        ),  # most recent first
    }
)

CONFIG_NAMES = ("mentions", "kb")
SPLIT_NAMES = ("train", "train07", "train05", "dev", "test")
SPLIT_METHODS = ("auto", "lists", "files", "field", "seeded")


def normalize_entity_key(entity_id: str) -> str:
    """Key used to match a gold entity to the KB: stripped, leading ``@`` removed, lower case."""
    return str(entity_id or "").strip().lstrip("@").strip().lower()


def entity_display_name(entity: Mapping[str, Any]) -> str:
    """Human-readable name of a KB row: its ``name``, else ``@screen_name``, else ``entity_id``."""
    name = str(entity.get("name") or "").strip()
    if name:
        return name
    screen = str(entity.get("screen_name") or "").strip().lstrip("@")
    if screen:
        return "@" + screen
    return str(entity.get("entity_id") or "")


def sort_timeline(timeline: list[dict]) -> list[dict]:
    """Most recent first: largest tweet id first when every id is numeric, else the given order."""
    if timeline and all(str(t.get("tweet_id", "")).isdigit() for t in timeline):
        return sorted(timeline, key=lambda t: -int(t["tweet_id"]))
    return list(timeline)


# --------------------------------------------------------------------------------------------------
# Builder config shared by the corpus builders
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MelCorpusConfig(datasets.BuilderConfig):
    """Config of a MEL corpus builder.

    Args:
        seed (`int`, defaults to 0): seed of the PFMEL split (:func:`paper_split`) when it is used.
        require_image (`bool`, defaults to False): skip mentions without a readable image (counted
            under "no image" / "unreadable image") instead of keeping them with ``image=None``.
        split_method (`str`, defaults to ``"auto"``): where splits come from. ``"lists"``: id lists
            (``Train_ids.txt``...); ``"files"``: Adjali's ``Train.txt``/``Dev.txt``/``Test.txt``;
            ``"field"``: the ``split`` field of ``mentions.jsonl``; ``"seeded"``: :func:`paper_split`;
            ``"auto"``: the first of these the data provides.
        image_cache_dir (`str`, *optional*): folder of images downloaded from media URLs, each file
            named by :func:`url_cache_name` (``sha1(url)`` hex, any extension). Defaults to
            ``<data_dir>/image_cache``.
    """

    seed: int = 0
    require_image: bool = False
    split_method: str = "auto"
    image_cache_dir: str | None = None

    def __post_init__(self):
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Check the options (datasets sets overrides after ``__post_init__``, so builders call this)."""
        if self.split_method not in SPLIT_METHODS:
            raise ValueError(f"split_method={self.split_method!r} is not one of {list(SPLIT_METHODS)}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}.")
        if not isinstance(self.require_image, bool):
            raise ValueError(f"require_image must be True or False, got {self.require_image!r}.")


# --------------------------------------------------------------------------------------------------
# The PFMEL split procedure (Li et al. 2022, section 4.1)
# --------------------------------------------------------------------------------------------------


def _share(n: int, fraction: float) -> int:
    """``round(n * fraction)`` with halves rounded up (deterministic, unlike banker's rounding)."""
    return int(n * fraction + 0.5)


def split_parts(entity_ids: Sequence[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Halve the entity groups into the unique and the random part (seeded shuffle).

    Returns ``(unique_entities, random_entities)``, each in shuffled order. With an odd number of
    groups the random part gets the extra one.
    """
    groups = sorted(set(map(str, entity_ids)))
    random.Random(seed).shuffle(groups)
    half = len(groups) // 2
    return groups[:half], groups[half:]


def paper_split(
    entity_ids: Sequence[str],
    seed: int = 0,
    random_fractions: tuple[float, float, float] = (0.1, 0.8, 0.1),
    drop_fractions: Mapping[str, float] | None = None,
) -> dict[str, list[int]]:
    """The PFMEL split of mentions (paper, section 4.1), as row indices per split.

    1. Mentions are grouped by gold entity; the groups are shuffled (``seed``) and halved into a
       *unique* and a *random* part (:func:`split_parts`).
    2. Unique groups are divided equally (by number of groups) into train, dev and test: an entity
       of the unique part has all its mentions in one split.
    3. The rows of the random part are shuffled and 10% / 80% / 10% go to train / dev / test.
    4. ``train07`` and ``train05`` are train minus 30% / 50% of the random-part rows of train
       (``train05`` is a subset of ``train07``).

    Args:
        entity_ids: gold entity of each mention row.
        seed: seed of every shuffle; the same seed gives the same split.
        random_fractions: train/dev/test shares of the random part.
        drop_fractions: share of the random-part train rows dropped, per reduced train split.

    Returns:
        ``{"train", "train07", "train05", "dev", "test"}`` -> sorted row indices.
    """
    if abs(sum(random_fractions) - 1.0) > 1e-6:
        raise ValueError(f"random_fractions={random_fractions} must sum to 1.")
    drop_fractions = dict(drop_fractions or {"train07": 0.3, "train05": 0.5})
    entity_ids = [str(e) for e in entity_ids]
    unique, _ = split_parts(entity_ids, seed)
    rng = random.Random(f"{seed}-rows")

    q, r = divmod(len(unique), 3)
    sizes = [q + (1 if i < r else 0) for i in range(3)]
    unique_split: dict[str, str] = {}
    start = 0
    for name, size in zip(("train", "dev", "test"), sizes):
        for e in unique[start : start + size]:
            unique_split[e] = name
        start += size

    out: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    random_rows = []
    for i, e in enumerate(entity_ids):
        if e in unique_split:
            out[unique_split[e]].append(i)
        else:
            random_rows.append(i)
    rng.shuffle(random_rows)
    n = len(random_rows)
    n_train, n_test = _share(n, random_fractions[0]), _share(n, random_fractions[2])
    train_random = random_rows[:n_train]
    out["train"] += train_random
    out["dev"] += random_rows[n_train : n - n_test]
    out["test"] += random_rows[n - n_test :]

    in_train_random = set(train_random)
    train_unique = [i for i in out["train"] if i not in in_train_random]
    for name, fraction in drop_fractions.items():
        keep = train_random[: len(train_random) - _share(len(train_random), fraction)]
        out[name] = train_unique + keep
    order = [s for s in SPLIT_NAMES if s in out] + [s for s in out if s not in SPLIT_NAMES]
    return {s: sorted(out[s]) for s in order}


# --------------------------------------------------------------------------------------------------
# Counting what is dropped
# --------------------------------------------------------------------------------------------------


class SkipReport:
    """Counts of skipped rows by reason (and of informational notes on kept rows).

    ``skip(reason, where)`` counts a dropped row; ``note(reason, where)`` counts something about a
    row that is kept (e.g. "no image", "offsets repaired"). ``where`` (``file:line``) is kept for the
    first few rows of each reason so the user can find them.
    """

    MAX_EXAMPLES = 5

    def __init__(self, dataset: str, config: str):
        self.dataset, self.config = dataset, config
        self.skipped: Counter = Counter()
        self.notes: Counter = Counter()
        self.examples: dict[str, list[str]] = {}
        self.kept: dict[str, int] = {}

    def _example(self, reason: str, where: str | None) -> None:
        if where is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < self.MAX_EXAMPLES:
                ex.append(where)

    def skip(self, reason: str, where: str | None = None) -> None:
        self.skipped[reason] += 1
        self._example(reason, where)

    def note(self, reason: str, where: str | None = None) -> None:
        self.notes[reason] += 1
        self._example(reason, where)

    def summary(self) -> str:
        """One line: kept counts, skipped counts by reason, notes."""
        kept = ", ".join(f"{k} {v}" for k, v in self.kept.items()) or "none"
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        line = f"{self.dataset}/{self.config}: kept {kept}; skipped {sum(self.skipped.values())} ({skipped})"
        if self.notes:
            line += "; notes (rows kept): " + ", ".join(f"{k}: {v}" for k, v in sorted(self.notes.items()))
        return line

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "config": self.config,
            "kept": dict(self.kept),
            "skipped": dict(sorted(self.skipped.items())),
            "notes": dict(sorted(self.notes.items())),
            "examples": self.examples,
        }

    def write(self, directories: Sequence[str | None]) -> str | None:
        """Merge this report into ``skipped.json`` (keyed by config) in the first writable directory."""
        for d in directories:
            if not d:
                continue
            path = os.path.join(d, "skipped.json")
            try:
                os.makedirs(d, exist_ok=True)
                data = {}
                if os.path.exists(path):
                    try:
                        with open(path, encoding="utf-8") as f:
                            data = json.load(f)
                    except (OSError, ValueError):
                        data = {}
                data[self.config] = self.to_dict()
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=2, ensure_ascii=False)
                return path
            except OSError:
                continue
        logger.warning("Could not write skipped.json in any of %s", list(directories))
        return None

    def finish(self, directories: Sequence[str | None]) -> str:
        """Log the summary line, write ``skipped.json``; returns the text for ``info.description``."""
        path = self.write(directories)
        line = self.summary()
        logger.info("%s%s", line, f" (details: {path})" if path else "")
        return "\n\nBuild report: " + line + (f"\nDetails: {path}" if path else "")


def emit_split_rows(split_entries: Mapping[str, list[dict]], report: SkipReport) -> dict[str, list[dict]]:
    """Rows per split from builder entries ``{"row", "notes", "where"}``, dropping empty splits.

    The notes of an entry (e.g. "no image") are counted once, only for entries that are kept, so the
    notes describe the published rows.
    """
    counted: set[int] = set()
    out: dict[str, list[dict]] = {}
    for split, entries in split_entries.items():
        for e in entries:
            if id(e) not in counted:
                counted.add(id(e))
                for reason in e.get("notes", ()):
                    report.note(reason, e.get("where"))
        if entries:
            out[split] = [e["row"] for e in entries]
        else:
            logger.warning("%s/%s: split %r is empty and is left out.", report.dataset, report.config, split)
            report.note(f"empty split left out: {split}")
    return out


PROGRESS_MIN_BYTES = 20_000_000  # show a progress bar when reading files larger than this


def read_lines(path: str | os.PathLike, report: SkipReport) -> Iterable[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a text file, decoding each line as UTF-8.

    A line that is not valid UTF-8 is counted as "non-UTF-8 line" and skipped; blank lines are
    ignored; ``\\r\\n`` endings are accepted.
    """
    from tqdm.auto import tqdm

    name = os.path.basename(str(path))
    size = os.path.getsize(path)
    with (
        open(path, "rb") as f,
        tqdm(total=size, unit="B", unit_scale=True, desc=f"Reading {name}", disable=size < PROGRESS_MIN_BYTES) as bar,
    ):
        for no, raw in enumerate(f, start=1):
            bar.update(len(raw))
            raw = raw.rstrip(b"\r\n")
            if raw.startswith(b"\xef\xbb\xbf") and no == 1:
                raw = raw[3:]  # BOM
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                report.skip("non-UTF-8 line", f"{name}:{no}")
                continue
            yield no, line


# --------------------------------------------------------------------------------------------------
# Offsets and images
# --------------------------------------------------------------------------------------------------


#: Note (``SkipReport.note``) counted for each way a mention was located; ``"ok"`` offsets get none.
OFFSET_NOTES = {
    "located": "offsets located",
    "repaired": "offsets repaired",
    "aligned": "aligned",
    "unaligned": "unaligned",
}


def resolve_offsets(
    text: str, mention: str, start: int | None, end: int | None
) -> tuple[int | None, int | None, str]:
    """Check, repair or find the character offsets of ``mention`` in ``text``; no mention is ever lost.

    Returns ``(start, end, status)``, offsets into the original ``text`` (end exclusive). Status (see
    :func:`modeling_mel.mention_spans.align_mention`, the one alignment function of the package):

    - ``"ok"``: the given offsets hold the mention (case ignored, or its words aligned there);
    - ``"located"`` (no offsets given) / ``"repaired"`` (given offsets wrong): a case-insensitive occurrence, whole
      words preferred; with offsets, the one nearest to the given start;
    - ``"aligned"``: not a substring, located by normalised token alignment (case, punctuation, diacritics;
      skipped particles, extra words on either side);
    - ``"unaligned"``: nothing aligns; ``(None, None, "unaligned")``: keep the mention without a span.

    :data:`OFFSET_NOTES` maps a status to the note builders count (:func:`offset_note`).
    """
    from .mention_spans import align_mention

    found = align_mention(text, mention, start, end)
    if found is None:
        return None, None, "unaligned"
    return found


def offset_note(status: str) -> str | None:
    """The build-report note of a :func:`resolve_offsets` status (None for ``"ok"``)."""
    if status != "ok" and status not in OFFSET_NOTES:
        raise ValueError(f"unknown offsets status {status!r}; expected 'ok' or one of {sorted(OFFSET_NOTES)}")
    return OFFSET_NOTES.get(status)


def mention_record(row_id: str, text: str, mention: str, start: int | None, end: int | None, image: Any,
                   entity_id: str, where: str, notes: list[str]) -> dict:
    """A built mention sample as the builders hand it to :func:`emit_split_rows`: the ``mentions`` row, where it was
    read (for the skip report) and its build notes."""
    row = {"id": row_id, "text": text, "mention": mention, "mention_start": start, "mention_end": end, "image": image,
           "entity_id": entity_id}
    return {"row": row, "where": where, "notes": notes}


def url_cache_name(url: str) -> str:
    """File name (without extension) of a media URL in the image cache: ``sha1(url.encode("utf-8"))`` hex."""
    return hashlib.sha1(url.strip().encode("utf-8")).hexdigest()


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")


def index_image_dir(directory: str | None) -> dict[str, str]:
    """``{file stem: absolute path}`` of the image files directly in ``directory`` (empty if missing)."""
    out: dict[str, str] = {}
    if not directory or not os.path.isdir(directory):
        return out
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if not entry.is_file():
            continue
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() in IMAGE_EXTENSIONS or ext == "":
            out.setdefault(stem, os.path.abspath(entry.path))
    return out


class ImageChecker:
    """Tells whether an image file is readable (PIL ``Image.open(...).verify()``), with a cache."""

    def __init__(self):
        self._ok: dict[str, bool] = {}

    def __call__(self, path: str) -> bool:
        if path not in self._ok:
            from PIL import Image as PILImage

            try:
                with PILImage.open(path) as im:
                    im.verify()
                self._ok[path] = True
            except Exception:  # PIL raises many kinds (OSError, SyntaxError, ValueError...)
                self._ok[path] = False
        return self._ok[path]


# --------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------

class MelCorpusBuilder(datasets.GeneratorBasedBuilder):
    """Shared base of the MEL corpus builders: :class:`MelCorpusConfig`, validation, the typed features.

    Subclasses set ``BUILDER_CONFIGS`` and the card fields ``DESCRIPTION``, ``HOMEPAGE``, ``LICENSE``, ``CITATION``,
    and implement ``_data_dir()``, ``_mentions(data_dir, report)`` (``{split: rows}``) and
    ``_load_kb(data_dir, report)`` (entity rows); ``KB_FILE`` names the KB file in the "no entity" error and
    ``_report_dirs`` says where the build report goes (``data_dir`` and the cache by default).
    """

    BUILDER_CONFIG_CLASS = MelCorpusConfig
    DEFAULT_CONFIG_NAME = "mentions"
    DESCRIPTION = HOMEPAGE = LICENSE = CITATION = ""
    KB_FILE: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.validate()

    def _report_dirs(self, data_dir: str) -> list[str]:
        return [data_dir, os.path.join(self._cache_dir_root, "mel_reports", self.name, self.config_id)]

    def _split_generators(self, dl_manager):
        data_dir = self._data_dir()
        report = SkipReport(self.name, self.config.name)
        if self.config.name == "mentions":
            self._rows = self._mentions(data_dir, report)
            report.kept = {s: len(rows) for s, rows in self._rows.items()}
        else:
            kb = self._load_kb(data_dir, report)
            if not kb:
                where = os.path.join(data_dir, self.KB_FILE) if self.KB_FILE else data_dir
                raise ValueError(f"No usable entity in {where}: {report.summary()}")
            self._rows = {"train": kb}
            report.kept = {"entities": len(kb)}
        self.info.description = self.DESCRIPTION + report.finish(self._report_dirs(data_dir))
        self.build_report = report
        return [datasets.SplitGenerator(name=s, gen_kwargs={"split": s}) for s in self._rows]

    def _generate_examples(self, split: str):
        for i, row in enumerate(self._rows[split]):
            yield i, row

    def _info(self) -> datasets.DatasetInfo:
        features = MENTION_FEATURES if self.config.name == "mentions" else KB_FEATURES
        return datasets.DatasetInfo(
            description=self.DESCRIPTION, features=features, homepage=self.HOMEPAGE, license=self.LICENSE,
            citation=self.CITATION,
        )


# --------------------------------------------------------------------------------------------------
# Wikidata MEL releases (WikiMEL, RichpediaMEL): shared reading of their JSON layout
# --------------------------------------------------------------------------------------------------

RELEASE_SPLIT_ALIASES = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "val": "dev", "test": "test"}


@dataclasses.dataclass
class WikidataMelConfig(MelCorpusConfig):
    """Config of the builders of the Wikidata MEL releases (``wikimel``, ``richpedia_mel``).

    Args:
        dev_fraction (`float`, defaults to 0.1): share of the train samples moved (seeded shuffle, ``seed``) into
            ``dev`` when the release has no dev split (RichpediaMEL ships train and test only).
        Plus :class:`MelCorpusConfig` (``seed``, ``require_image``); ``split_method`` must stay ``"auto"``: the
        splits are those of the release.
    """

    dev_fraction: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.split_method != "auto":
            raise ValueError(
                f"split_method={self.split_method!r}: the Wikidata MEL builders use the release splits; pass 'auto'."
            )
        if isinstance(self.dev_fraction, bool) or not isinstance(self.dev_fraction, (int, float)) or not (
            0 <= self.dev_fraction < 1
        ):
            raise ValueError(f"dev_fraction must be a number in [0, 1), got {self.dev_fraction!r}.")


def load_json_file(path: str, what: str) -> Any:
    """The JSON value of ``path``; ValueError naming the file (``what`` says what it should hold) when invalid."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it should hold {what}.") from err


def seeded_holdout(keys: Iterable[str], fraction: float, seed: int = 0) -> set[str]:
    """The keys moved to a held-out split: ``round(n * fraction)`` of them after a seeded shuffle of the sorted keys."""
    keys = sorted(set(map(str, keys)))
    random.Random(f"{seed}-holdout").shuffle(keys)
    return set(keys[: _share(len(keys), fraction)])


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class WikidataMelBuilder(MelCorpusBuilder):
    """Shared base of ``wikimel`` and ``richpedia_mel``: samples ``{id, sentence, mentions, entities, answer}``, a KB
    from ``qid2ne.json`` (QID -> name) and ``qid2abs.json`` (QID -> description), images ``images/<sample id>.*``.

    Subclasses set ``REQUIRED_FILES`` and implement :meth:`_release_splits`. Every mention is kept: located
    case-insensitively (note ``offsets located``), by token alignment (``aligned``) or without a span
    (``unaligned``); a gold QID missing from the KB is kept too (note ``entity not in KB``; evaluation counts it
    wrong). Only malformed samples are skipped, counted by reason.
    """

    BUILDER_CONFIG_CLASS = WikidataMelConfig
    REQUIRED_FILES: tuple[str, ...] = ("qid2ne.json",)
    NAMES_FILE, DESCRIPTIONS_FILE, IMAGES_DIR = "qid2ne.json", "qid2abs.json", "images"
    KB_FILE = NAMES_FILE

    def _release_splits(self, data_dir: str, report: SkipReport) -> dict[str, list[tuple[str, Any, str]]]:
        """``{split: [(sample key, sample, where)]}`` as released (subclasses)."""
        raise NotImplementedError

    def _data_dir(self) -> str:
        data_dir = self.config.data_dir
        cls = type(self).__name__
        if not data_dir or not os.path.isdir(data_dir):
            raise ValueError(f"{cls} needs data_dir= the folder with {', '.join(self.REQUIRED_FILES)}; got {data_dir!r}.")
        data_dir = os.path.abspath(data_dir)
        missing = [f for f in self.REQUIRED_FILES if not os.path.isfile(os.path.join(data_dir, f))]
        if missing:
            raise FileNotFoundError(
                f"{data_dir} lacks {', '.join(missing)}; the {self.name} layout needs {', '.join(self.REQUIRED_FILES)} "
                "(see datasets_scripts/" + self.name + "/README.md for how to obtain them)."
            )
        return data_dir

    def _load_kb(self, data_dir: str, report: SkipReport) -> list[dict]:
        names = load_json_file(os.path.join(data_dir, self.NAMES_FILE), "{QID: entity name}")
        if not isinstance(names, dict):
            raise ValueError(f"{os.path.join(data_dir, self.NAMES_FILE)} holds a {type(names).__name__}; expected {{QID: name}}.")
        path = os.path.join(data_dir, self.DESCRIPTIONS_FILE)
        descriptions = load_json_file(path, "{QID: description}") if os.path.isfile(path) else {}
        if not isinstance(descriptions, dict):
            raise ValueError(f"{path} holds a {type(descriptions).__name__}; expected {{QID: description}}.")
        if not descriptions:
            report.note(f"no {self.DESCRIPTIONS_FILE}")
        kb = []
        for qid, name in names.items():
            qid = str(qid).strip()
            if not qid:
                report.skip("missing entity_id", self.NAMES_FILE)
                continue
            name = "" if name is None else str(name).strip()
            if not name:
                report.note("missing name", f"{self.NAMES_FILE}:{qid}")
            description = descriptions.get(qid)
            kb.append(
                {
                    "entity_id": qid,
                    "name": name,
                    "screen_name": "",
                    "location": "",
                    "description": "" if description is None else str(description).strip(),
                    "images": [],
                    "timeline": [],
                }
            )
        return kb

    def _sample_entries(
        self, key: str, sample: Any, where: str, kb_ids: set, images: dict, check: ImageChecker, report: SkipReport
    ) -> list[dict]:
        """Builder entries (``row``, ``notes``, ``where``) of the mentions of one sample; mentions[k] -> answer[k]."""
        if not isinstance(sample, dict) or not isinstance(sample.get("sentence"), str) or not sample["sentence"].strip():
            n = max(len(_as_list(sample.get("mentions"))), 1) if isinstance(sample, dict) else 1
            for _ in range(n):
                report.skip("sample without sentence", where)
            return []
        text = sample["sentence"]
        mentions, answers = _as_list(sample.get("mentions")), _as_list(sample.get("answer"))
        if len(mentions) != len(answers):
            for _ in range(abs(len(mentions) - len(answers))):
                report.skip("mention without answer" if len(mentions) > len(answers) else "answer without mention", where)
        pairs = list(zip(mentions, answers))
        sample_id = str(sample.get("id") or key)
        image = images.get(str(key)) or images.get(sample_id)
        image_note = None
        if image is None:
            image_note = "no image"
        elif not check(image):
            image, image_note = None, "unreadable image"
        out = []
        for k, (mention, answer) in enumerate(pairs):
            mention = "" if mention is None else str(mention)
            entity_id = "" if answer is None else str(answer).strip()
            if not mention.strip() or not entity_id:
                report.skip("empty mention or answer", where)
                continue
            start, end, status = resolve_offsets(text, mention, None, None)
            notes = [n for n in [offset_note(status)] if n]
            if entity_id not in kb_ids:
                notes.append("entity not in KB")
            if image_note:
                if self.config.require_image:
                    report.skip(image_note, where)
                    continue
                notes.append(image_note)
            out.append(mention_record(str(key) if len(pairs) == 1 else f"{key}-{k}", text, mention, start, end, image,
                                      entity_id, where, notes))
        return out

    def _cut_dev(self, splits: dict[str, list], report: SkipReport) -> dict[str, list]:
        """Move a seeded ``dev_fraction`` of the train samples to ``dev`` when the release has no dev split."""
        if splits.get("dev") or not splits.get("train") or not self.config.dev_fraction:
            return splits
        dev_keys = seeded_holdout([k for k, _, _ in splits["train"]], self.config.dev_fraction, self.config.seed)
        report.note("dev split cut from train (seeded)")
        logger.info("%s: no dev split in the release; %d train samples moved to dev (seed %d, dev_fraction %g)",
                    self.name, len(dev_keys), self.config.seed, self.config.dev_fraction)
        out = dict(splits)
        out["train"] = [s for s in splits["train"] if s[0] not in dev_keys]
        out["dev"] = [s for s in splits["train"] if s[0] in dev_keys]
        return out

    def _mentions(self, data_dir: str, report: SkipReport) -> dict[str, list[dict]]:
        kb_ids = {e["entity_id"] for e in self._load_kb(data_dir, SkipReport(self.name, "kb"))}
        splits = self._cut_dev(self._release_splits(data_dir, report), report)
        images = index_image_dir(os.path.join(data_dir, self.IMAGES_DIR))
        check = ImageChecker()
        out: dict[str, list[dict]] = {}
        for split in ("train", "dev", "test"):
            if split in splits:
                out[split] = [
                    e for key, sample, where in splits[split]
                    for e in self._sample_entries(key, sample, where, kb_ids, images, check, report)
                ]
        if not any(out.values()):
            raise ValueError(f"No usable mention in {data_dir}: {report.summary()}")
        return emit_split_rows(out, report)

    def _report_dirs(self, data_dir: str) -> list[str]:
        # the release folder is left untouched: the report goes next to the Arrow cache
        return [os.path.join(self._cache_dir_root, "mel_reports", self.name, self.config_id)]


#: dataset name -> builder class name in ``modeling_mel/builders/<name>.py``; add new corpora here.
DATASET_BUILDERS: dict[str, str] = {
    "twitter_mel": "TwitterMel",
    "mel_jsonl": "MelJsonl",
    "zemeld": "Zemeld",
    "wikimel": "WikiMel",
    "richpedia_mel": "RichpediaMel",
    "mimic_mel": "MimicMel",
}


def get_builder_class(dataset: str) -> type[datasets.DatasetBuilder]:
    """The builder class of a registered corpus name (see :data:`DATASET_BUILDERS`), imported from
    :mod:`modeling_mel.builders`."""
    if dataset not in DATASET_BUILDERS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {sorted(DATASET_BUILDERS)}.")
    module = importlib.import_module(f"modeling_mel.builders.{dataset}")
    return getattr(module, DATASET_BUILDERS[dataset])


def load_mel_corpus(
    dataset: str,
    data_dir: str,
    config: str = "mentions",
    cache_dir: str | None = None,
    **builder_kwargs: Any,
) -> datasets.DatasetDict | datasets.Dataset:
    """Build (or reuse the cache of) one config of a corpus and return it.

    Args:
        dataset: a key of :data:`DATASET_BUILDERS` (``"twitter_mel"``, ``"mel_jsonl"``, ...).
        data_dir: folder with the corpus files in the builder's raw layout.
        config: ``"mentions"`` (a ``DatasetDict`` of splits) or ``"kb"`` (a ``Dataset``).
        cache_dir: Arrow cache folder (defaults to ``$HF_DATASETS_CACHE``).
        **builder_kwargs: config options (``seed``, ``require_image``, ``split_method``,
            ``image_cache_dir``) and ``download_mode="force_redownload"`` to rebuild a cached corpus
            whose files changed (the cache is keyed by the options, not by the file contents).

    Returns:
        ``DatasetDict`` for ``mentions``; the single ``Dataset`` for ``kb``.
    """
    cls = get_builder_class(dataset)
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if config not in names:
        raise ValueError(f"Unknown config {config!r} for {dataset}; valid configs: {names}.")
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir={data_dir!r} is not a folder; pass the folder holding the {dataset} files.")
    download_mode = builder_kwargs.pop("download_mode", None)
    builder = cls(config_name=config, data_dir=os.path.abspath(data_dir), cache_dir=cache_dir, **builder_kwargs)
    builder.download_and_prepare(download_mode=download_mode)
    dd = builder.as_dataset()
    if config == "kb" and isinstance(dd, datasets.DatasetDict) and list(dd) == ["train"]:
        return dd["train"]
    return dd


class ListDataset(torch.utils.data.Dataset):
    """A list of example dicts as a torch dataset, for ``Trainer`` (both families' training rows and features;
    ``LengthGroupedSampler`` reads ``input_ids`` where they have them)."""

    def __init__(self, features: list[dict]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]

