"""Shared corpus schema, the PFMEL split procedure and the corpus loader.

Every corpus builder of ``datasets_scripts/`` (``twitter_mel``, ``mel_jsonl``, ...) produces the two
configs defined here:

- ``mentions``: one row per mention, :data:`MENTION_FEATURES`;
- ``kb``: one row per entity, :data:`KB_FEATURES`.

:func:`load_mel_corpus` imports a builder from ``<repo>/datasets_scripts/<name>/<name>.py`` (dataset
scripts are not supported by ``datasets.load_dataset`` since datasets 4.0, but a
``GeneratorBasedBuilder`` instantiated directly works) and returns its ``DatasetDict``.

The helpers below (:class:`SkipReport`, :func:`resolve_offsets`, :class:`ImageChecker`,
:func:`url_cache_name`) are what the builders share to count every row they drop, by reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import datasets

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------

MENTION_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),  # tweetId, or tweetId-startPos when a tweet has several mentions
        "text": datasets.Value("string"),
        "mention": datasets.Value("string"),
        "mention_start": datasets.Value("int32"),
        "mention_end": datasets.Value("int32"),  # exclusive
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


def resolve_offsets(text: str, mention: str, start: int | None, end: int | None) -> tuple[int, int, str] | None:
    """Check or repair the character offsets of ``mention`` in ``text``.

    Policy: offsets are kept (status ``"ok"``) when ``text[start:end]`` equals the mention, case
    ignored. Otherwise, when the mention occurs in the text (case-insensitive), the occurrence whose
    start is nearest to the given start is used (status ``"repaired"``; ``"located"`` when no offsets
    were given: the first occurrence). Returns ``None`` when the mention is not in the text.
    """
    mention = mention.strip()
    if not mention:
        return None
    if start is not None and end is not None and 0 <= start < end <= len(text):
        if text[start:end].lower() == mention.lower() or text[start:end].casefold() == mention.casefold():
            return start, end, "ok"
    hits = [m.start() for m in re.finditer(re.escape(mention), text, flags=re.IGNORECASE)]
    if not hits:
        return None
    if start is None:
        return hits[0], hits[0] + len(mention), "located"
    best = min(hits, key=lambda h: (abs(h - start), h))
    return best, best + len(mention), "repaired"


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

# dataset name -> builder class name in datasets_scripts/<name>/<name>.py; add new corpora here.
class MelCorpusBuilder(datasets.GeneratorBasedBuilder):
    """Shared base of the MEL corpus builders: :class:`MelCorpusConfig`, validation, the typed features.

    Subclasses set ``BUILDER_CONFIGS`` and the card fields ``DESCRIPTION``, ``HOMEPAGE``, ``LICENSE``, ``CITATION``,
    and implement ``_split_generators`` / ``_generate_examples``.
    """

    BUILDER_CONFIG_CLASS = MelCorpusConfig
    DEFAULT_CONFIG_NAME = "mentions"
    DESCRIPTION = HOMEPAGE = LICENSE = CITATION = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.validate()

    def _info(self) -> datasets.DatasetInfo:
        features = MENTION_FEATURES if self.config.name == "mentions" else KB_FEATURES
        return datasets.DatasetInfo(
            description=self.DESCRIPTION, features=features, homepage=self.HOMEPAGE, license=self.LICENSE,
            citation=self.CITATION,
        )


DATASET_BUILDERS: dict[str, str] = {
    "twitter_mel": "TwitterMel",
    "mel_jsonl": "MelJsonl",
    "zemeld": "Zemeld",
}


def datasets_scripts_dir() -> Path:
    """Folder of the corpus builders: ``$MEL_DATASETS_SCRIPTS`` or ``<repo>/datasets_scripts``."""
    env = os.environ.get("MEL_DATASETS_SCRIPTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "datasets_scripts"


def import_script(folder: str, module: str | None = None):
    """Import ``datasets_scripts/<folder>/<module>.py`` (module defaults to the folder name).

    The module is registered in ``sys.modules`` under its own name: a ``datasets`` builder takes its
    name from its module name.
    """
    module = module or folder
    path = datasets_scripts_dir() / folder / f"{module}.py"
    if not path.is_file():
        raise FileNotFoundError(f"No script {path}; expected datasets_scripts/{folder}/{module}.py in the repository.")
    existing = sys.modules.get(module)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == str(path.resolve()):
        return existing
    spec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(module, None)
        raise
    return mod


def get_builder_class(dataset: str) -> type[datasets.DatasetBuilder]:
    """The builder class of a registered corpus name (see :data:`DATASET_BUILDERS`)."""
    if dataset not in DATASET_BUILDERS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {sorted(DATASET_BUILDERS)}.")
    mod = import_script(dataset)
    cls_name = DATASET_BUILDERS[dataset]
    if not hasattr(mod, cls_name):
        raise AttributeError(f"datasets_scripts/{dataset}/{dataset}.py defines no class {cls_name}.")
    return getattr(mod, cls_name)


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
