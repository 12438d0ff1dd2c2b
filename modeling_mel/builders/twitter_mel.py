"""Twitter MEL (Adjali et al., LREC 2020): builder over the user's hydrated copy of the raw files.

Tweets and images cannot be redistributed, so this builder reads a local folder (``data_dir``)::

    ground_truth.tsv        7 tab-separated columns: tweetId, startPos, endPos (exclusive), mention,
                            @screenName (gold), tweet full text, media URL.
                            (or Adjali's Train.txt / Dev.txt / Test.txt with the same columns)
    timeline_kb.tsv         4 columns: screen name (with or without @), tweetId, text, media URL
    users.sqlite            table twitterUsers (userScreenName, userName, userLocation,
                            userDescription, ...)  -- or users.jsonl with the same field names
    Train_ids.txt Train07_ids.txt Train05_ids.txt Dev_ids.txt Test_ids.txt   (optional split lists)
    (the release's own names are read too: timeline_KB.txt, ambiguousUsers.db, mel_{train,dev,test}_ids)
    images/<tweetId>.<ext>  tweet images (optional)
    image_cache/<sha1(url)>[.<ext>]   images downloaded from the media URLs (optional)

Usage (dataset scripts are not supported by ``load_dataset`` since datasets 4.0)::

    from modeling_mel.corpus import load_mel_corpus
    dd = load_mel_corpus("twitter_mel", "path/to/raw", config="mentions", seed=0)

or ``TwitterMel(config_name="mentions", data_dir=D, cache_dir=C).download_and_prepare()``.

Every row that is dropped is counted by reason: see the one-line summary in the log,
``skipped.json`` next to the data and ``dataset.info.description``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
from collections import Counter

import datasets

from modeling_mel.corpus import (
    MelCorpusBuilder,
    ImageChecker,
    MelCorpusConfig,
    SkipReport,
    emit_split_rows,
    index_image_dir,
    normalize_entity_key,
    offset_note,
    paper_split,
    read_lines,
    resolve_offsets,
    sort_timeline,
    url_cache_name,
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
@article{li2022pfmel,
    title = {Pre-Training and Fine-Tuning with Next Sentence Prediction for Multimodal Entity Linking},
    author = {Li, Lu and Wang, Qipeng and Zhao, Baohua and Li, Xinwei and Zhou, Aihua and Wu, Hanqian},
    journal = {Electronics},
    volume = {11},
    pages = {2134},
    year = {2022},
    doi = {10.3390/electronics11142134},
}
"""

_DESCRIPTION = """\
Twitter MEL: multimodal entity linking of ambiguous mentions in tweets (text + image) to Twitter
users, each described by a profile (screen name, user name, location, description) and a timeline of
recent tweets with images (Adjali et al., LREC 2020). Built from the user's own hydrated copy of the
released ids. Splits follow the PFMEL paper (Li et al. 2022, section 4.1): the authors' id lists when
given, otherwise the seeded split procedure (train, train07, train05, dev, test).
"""

_HOMEPAGE = "https://github.com/OA256864/MEL_Tweets"

_LICENSE = (
    "Annotations: research use as released by the authors; tweets and images remain subject to the "
    "X/Twitter terms of service and may not be redistributed."
)

_URLS: dict[str, str] = {}  # nothing is downloaded: the builder reads data_dir

GROUND_TRUTH_FILES = ("ground_truth.tsv", "groundTruth.tsv", "ground_truth.txt", "groundTruth.txt")
SPLIT_FILES = {"train": "Train.txt", "dev": "Dev.txt", "test": "Test.txt"}
ID_LIST_FILES = {
    "train": "Train_ids.txt",
    "train07": "Train07_ids.txt",
    "train05": "Train05_ids.txt",
    "dev": "Dev_ids.txt",
    "test": "Test_ids.txt",
}
TIMELINE_FILE = "timeline_kb.tsv"
PROFILE_FILES = ("users.sqlite", "users.jsonl")
PROFILE_TABLE = "twitterUsers"
#: the names Adjali et al.'s release gives some files: read under either name (the first that exists)
RELEASED_NAMES = {
    TIMELINE_FILE: ("timeline_KB.txt",),
    PROFILE_FILES[0]: ("ambiguousUsers.db",),
    "Train_ids.txt": ("mel_train_ids", "mel_train_ids.txt"),
    "Dev_ids.txt": ("mel_dev_ids", "mel_dev_ids.txt"),
    "Test_ids.txt": ("mel_test_ids", "mel_test_ids.txt"),
}


def corpus_file(data_dir: str, name: str) -> str:
    """Path of ``name`` in ``data_dir``, or of its name in the original release (:data:`RELEASED_NAMES`) when only
    that exists."""
    for candidate in (name, *RELEASED_NAMES.get(name, ())):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    return os.path.join(data_dir, name)
IMAGES_DIR = "images"
IMAGE_CACHE_DIR = "image_cache"

_HEADER_WORDS = {"tweetid", "tweet_id", "id", "screenname", "screen_name", "userscreenname"}
_MENTION_ID = re.compile(r"^\d+(-\d+)?$")


class TwitterMel(MelCorpusBuilder):
    """Twitter MEL mentions and KB from the raw released formats (see the module docstring)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIGS = [
        MelCorpusConfig(name="mentions", version=VERSION, description="One row per mention (tweet text + image)."),
        MelCorpusConfig(name="kb", version=VERSION, description="One row per entity (Twitter user)."),
    ]
    DESCRIPTION, HOMEPAGE, LICENSE, CITATION = _DESCRIPTION, _HOMEPAGE, _LICENSE, _CITATION

    # ---------------------------------------------------------------------------------------------
    # files

    def _data_dir(self) -> str:
        data_dir = self.config.data_dir
        if not data_dir or not os.path.isdir(data_dir):
            raise ValueError(
                f"TwitterMel needs data_dir= a folder with the raw Twitter MEL files; got {data_dir!r}. "
                f"Expected {GROUND_TRUTH_FILES[0]} (or {', '.join(SPLIT_FILES.values())}), {TIMELINE_FILE}, "
                f"{' or '.join(PROFILE_FILES)}."
            )
        return os.path.abspath(data_dir)

    def _image_finder(self, data_dir: str):
        """``find(tweet_id, url) -> path | None``: ``images/<tweetId>.*`` first, then the URL cache."""
        by_id = index_image_dir(os.path.join(data_dir, IMAGES_DIR))
        cache_dir = self.config.image_cache_dir or os.path.join(data_dir, IMAGE_CACHE_DIR)
        by_url = index_image_dir(cache_dir)

        def find(tweet_id: str, url: str) -> str | None:
            if tweet_id in by_id:
                return by_id[tweet_id]
            if url and by_url:
                return by_url.get(url_cache_name(url))
            return None

        return find

    # ---------------------------------------------------------------------------------------------
    # KB

    def _read_profiles(self, data_dir: str, report: SkipReport) -> list[dict] | None:
        """Profiles from users.sqlite (table twitterUsers) or users.jsonl; None when neither exists."""
        sqlite_path = corpus_file(data_dir, PROFILE_FILES[0])
        jsonl_path = os.path.join(data_dir, PROFILE_FILES[1])
        records: list[tuple[str, dict]] = []
        if os.path.isfile(sqlite_path):
            con = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
            try:
                cols = [r[1] for r in con.execute(f"PRAGMA table_info({PROFILE_TABLE})")]
                con.text_factory = bytes  # decode values ourselves: count non-UTF-8 ones
                if "userScreenName" not in cols:
                    raise ValueError(
                        f"{sqlite_path} has no table {PROFILE_TABLE} with a userScreenName column (found columns "
                        f"{cols}); expected userScreenName, userName, userLocation, userDescription."
                    )
                fields = [c for c in ("userScreenName", "userName", "userLocation", "userDescription") if c in cols]
                query = f"SELECT {', '.join(fields)} FROM {PROFILE_TABLE} ORDER BY rowid"
                for no, values in enumerate(con.execute(query), start=1):
                    where = f"{PROFILE_FILES[0]}:row {no}"
                    try:
                        rec = {
                            f: (v.decode("utf-8") if isinstance(v, bytes) else ("" if v is None else str(v)))
                            for f, v in zip(fields, values)
                        }
                    except UnicodeDecodeError:
                        report.skip("non-UTF-8 text", where)
                        continue
                    records.append((where, rec))
            finally:
                con.close()
        elif os.path.isfile(jsonl_path):
            for no, line in read_lines(jsonl_path, report):
                where = f"{PROFILE_FILES[1]}:{no}"
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if not isinstance(rec, dict):
                    report.skip("malformed JSON line", where)
                    continue
                records.append((where, {k: "" if v is None else str(v) for k, v in rec.items()}))
        else:
            return None

        profiles, seen = [], set()
        for where, rec in records:
            screen = rec.get("userScreenName", "").strip().lstrip("@").strip()
            if not screen:
                report.skip("empty screen name", where)
                continue
            key = normalize_entity_key(screen)
            if key in seen:
                report.skip("duplicate entity", where)
                continue
            seen.add(key)
            profiles.append(
                {
                    "entity_id": screen,
                    "name": rec.get("userName", "").strip(),
                    "screen_name": screen,
                    "location": rec.get("userLocation", "").strip(),
                    "description": rec.get("userDescription", "").strip(),
                }
            )
        return profiles

    def _read_timeline(
        self, data_dir: str, known: set[str] | None, report: SkipReport, with_images: bool
    ) -> dict[str, tuple[str, list[dict]]]:
        """``{entity key: (screen name as first seen, [timeline entries])}`` from timeline_kb.tsv."""
        path = corpus_file(data_dir, TIMELINE_FILE)
        out: dict[str, tuple[str, list[dict]]] = {}
        if not os.path.isfile(path):
            return out
        find = self._image_finder(data_dir) if with_images else None
        check = ImageChecker()
        seen: set[tuple[str, str]] = set()
        first = True
        for no, line in read_lines(path, report):
            where = f"{os.path.basename(path)}:{no}"
            cols = line.split("\t")
            if first and len(cols) >= 2 and cols[1].strip().lower() in _HEADER_WORDS:
                report.note("header line", where)
                first = False
                continue
            first = False
            if len(cols) == 3:
                cols.append("")  # media URL column dropped with its trailing tab
            if len(cols) != 4:
                report.skip("wrong column count", where)
                continue
            screen, tweet_id, text, url = cols[0].strip().lstrip("@").strip(), cols[1].strip(), cols[2], cols[3].strip()
            if not tweet_id.isdigit():
                report.skip("non-numeric id", where)
                continue
            key = normalize_entity_key(screen)
            if not key:
                report.skip("empty screen name", where)
                continue
            if known is not None and key not in known:
                report.skip("timeline of unknown user", where)
                continue
            if (key, tweet_id) in seen:
                report.skip("duplicate timeline tweet", where)
                continue
            image, problem = None, None
            if find is not None:
                image = find(tweet_id, url)
                if image is None and url:
                    problem = "timeline image missing"
                elif image is not None and not check(image):
                    image, problem = None, "unreadable image"
            if not text.strip() and image is None and (find is not None or not url):
                report.skip("tweet not hydrated", where)
                continue
            if problem:
                report.note(problem, where)
            seen.add((key, tweet_id))
            out.setdefault(key, (screen, []))[1].append({"tweet_id": tweet_id, "text": text.strip(), "image": image})
        return out

    def _load_kb(self, data_dir: str, report: SkipReport, with_images: bool = True) -> list[dict]:
        profiles = self._read_profiles(data_dir, report)
        timeline_path = corpus_file(data_dir, TIMELINE_FILE)
        if profiles is None and not os.path.isfile(timeline_path):
            raise FileNotFoundError(
                f"No KB in {data_dir}: expected user profiles ({' or '.join(PROFILE_FILES)}, table "
                f"{PROFILE_TABLE}) and/or the timeline file {TIMELINE_FILE}."
            )
        known = None if profiles is None else {normalize_entity_key(p["entity_id"]) for p in profiles}
        timelines = self._read_timeline(data_dir, known, report, with_images)
        if profiles is None:
            logger.warning(
                "No user profiles (%s) in %s: the KB is made of the timeline users, with name = screen name.",
                " / ".join(PROFILE_FILES),
                data_dir,
            )
            profiles = []
            for key, (screen, _) in timelines.items():
                report.note("no profile (name = screen name)", screen)
                profiles.append(
                    {"entity_id": screen, "name": screen, "screen_name": screen, "location": "", "description": ""}
                )
        elif not os.path.isfile(timeline_path):
            logger.warning("No %s in %s: every entity has an empty timeline.", TIMELINE_FILE, data_dir)
        kb = []
        for p in profiles:
            timeline = sort_timeline(timelines.get(normalize_entity_key(p["entity_id"]), ("", []))[1])
            row = dict(p)
            row["timeline"] = timeline
            row["images"] = [t["image"] for t in timeline if t["image"] is not None]
            kb.append(row)
        return kb

    # ---------------------------------------------------------------------------------------------
    # mentions

    def _ground_truth_files(self, data_dir: str) -> list[tuple[str, str | None]]:
        """``[(path, split from the file name or None)]``: ground_truth.tsv, else Train/Dev/Test.txt."""
        split_files = [(os.path.join(data_dir, f), s) for s, f in SPLIT_FILES.items()]
        split_files = [(p, s) for p, s in split_files if os.path.isfile(p)]
        if self.config.split_method == "files":
            if not split_files:
                raise FileNotFoundError(
                    f"split_method='files' needs {', '.join(SPLIT_FILES.values())} in {data_dir}; none found."
                )
            return split_files
        for name in GROUND_TRUTH_FILES:
            path = os.path.join(data_dir, name)
            if os.path.isfile(path):
                return [(path, None)]
        if split_files:
            return split_files
        raise FileNotFoundError(
            f"No ground truth in {data_dir}: expected {GROUND_TRUTH_FILES[0]} (7 tab-separated columns: tweetId, "
            f"startPos, endPos, mention, @screenName, text, media URL) or Adjali's {', '.join(SPLIT_FILES.values())}."
        )

    def _read_ground_truth(self, files: list[tuple[str, str | None]], report: SkipReport) -> list[dict]:
        rows = []
        for path, source_split in files:
            name = os.path.basename(path)
            first = True
            for no, line in read_lines(path, report):
                where = f"{name}:{no}"
                cols = line.split("\t")
                if first and cols[0].strip().lower() in _HEADER_WORDS:
                    report.note("header line", where)
                    first = False
                    continue
                first = False
                if len(cols) == 6:
                    cols.append("")  # media URL column dropped with its trailing tab
                if len(cols) != 7:
                    report.skip("wrong column count", where)
                    continue
                tweet_id = cols[0].strip()
                if not tweet_id.isdigit():
                    report.skip("non-numeric id", where)
                    continue
                try:
                    start, end = int(cols[1].strip()), int(cols[2].strip())
                except ValueError:
                    report.skip("non-numeric offset", where)
                    continue
                rows.append(
                    {
                        "tweet_id": tweet_id,
                        "start": start,
                        "end": end,
                        "mention": cols[3].strip(),
                        "gold": cols[4].strip(),
                        "text": cols[5],
                        "url": cols[6].strip(),
                        "source_split": source_split,
                        "where": where,
                    }
                )
        return rows

    def _mentions(self, data_dir: str, report: SkipReport) -> dict[str, list[dict]]:
        files = self._ground_truth_files(data_dir)
        raw = self._read_ground_truth(files, report)
        known_tweets = {r["tweet_id"] for r in raw}

        kb_report = SkipReport(self.name, "kb")
        kb = self._load_kb(data_dir, kb_report, with_images=False)
        kb_ids = {normalize_entity_key(e["entity_id"]): e["entity_id"] for e in kb}
        if not kb_ids:
            raise ValueError(f"The KB in {data_dir} is empty ({kb_report.summary()}); no mention can be linked.")

        valid, seen = [], set()
        for r in raw:
            if not r["text"].strip():
                report.skip("tweet not hydrated", r["where"])
                continue
            start, end, status = resolve_offsets(r["text"], r["mention"], r["start"], r["end"])
            key = (r["tweet_id"], start, end) if start is not None else (r["tweet_id"], r["start"], r["mention"])
            if key in seen:
                report.skip("duplicate mention", r["where"])
                continue
            seen.add(key)
            # unaligned mentions keep no span; their id uses the released startPos
            id_start = start if start is not None else r["start"]
            notes = [n for n in [offset_note(status)] if n and status != "located"]
            valid.append(dict(r, start=start, end=end, id_start=id_start, notes=notes))
        per_tweet = Counter(r["tweet_id"] for r in valid)

        find = self._image_finder(data_dir)
        check = ImageChecker()
        kept = []
        for r in valid:
            entity_id = kb_ids.get(normalize_entity_key(r["gold"]))
            if entity_id is None:
                report.skip("entity not in KB", r["where"])
                continue
            image = find(r["tweet_id"], r["url"])
            if image is None:
                if self.config.require_image:
                    report.skip("no image", r["where"])
                    continue
                r["notes"].append("no image")
            elif not check(image):
                if self.config.require_image:
                    report.skip("unreadable image", r["where"])
                    continue
                r["notes"].append("unreadable image")
                image = None
            mention_id = r["tweet_id"] if per_tweet[r["tweet_id"]] == 1 else f"{r['tweet_id']}-{r['id_start']}"
            kept.append(
                {
                    "row": {
                        "id": mention_id,
                        "text": r["text"],
                        "mention": r["mention"],
                        "mention_start": r["start"],
                        "mention_end": r["end"],
                        "image": image,
                        "entity_id": entity_id,
                    },
                    "tweet_id": r["tweet_id"],
                    "id_start": r["id_start"],
                    "source_split": r["source_split"],
                    "where": r["where"],
                    "notes": r["notes"],
                }
            )
        if not kept:
            raise ValueError(f"No usable mention in {data_dir}: {report.summary()}")
        return emit_split_rows(self._split(data_dir, kept, files, known_tweets, report), report)

    def _split(
        self,
        data_dir: str,
        kept: list[dict],
        files: list[tuple[str, str | None]],
        known_tweets: set[str],
        report: SkipReport,
    ) -> dict[str, list[dict]]:
        """Kept entries per split, following ``config.split_method``."""
        method = self.config.split_method
        core = ("train", "dev", "test")
        has_lists = all(os.path.isfile(corpus_file(data_dir, ID_LIST_FILES[s])) for s in core)
        from_files = files[0][1] is not None
        if method == "field":
            raise ValueError(
                "split_method='field' is for mel_jsonl; TwitterMel takes 'auto', 'lists', 'files' or 'seeded'."
            )
        if method == "lists" and not has_lists:
            raise FileNotFoundError(
                f"split_method='lists' needs {', '.join(ID_LIST_FILES[s] for s in core)} in {data_dir}."
            )
        if method == "auto":
            method = "lists" if has_lists else "files" if from_files else "seeded"
        logger.info("TwitterMel split method: %s", method)

        if method == "seeded":
            idx = paper_split([k["row"]["entity_id"] for k in kept], seed=self.config.seed)
            return {s: [kept[i] for i in ids] for s, ids in idx.items()}
        if method == "files":
            return {s: [k for k in kept if k["source_split"] == s] for s in core}

        lists: dict[str, set[str]] = {}
        for split, fname in ID_LIST_FILES.items():
            path = corpus_file(data_dir, fname)
            fname = os.path.basename(path)
            if not os.path.isfile(path):
                logger.info("No %s in %s: split %s is not built.", fname, data_dir, split)
                continue
            ids = set()
            for no, line in read_lines(path, report):
                value, where = line.strip(), f"{fname}:{no}"
                if not _MENTION_ID.match(value):
                    report.skip("malformed id list line", where)
                    continue
                if value.split("-")[0] not in known_tweets:
                    report.skip("id list names unknown tweet", where)
                    continue
                ids.add(value)
            lists[split] = ids
        out: dict[str, list[dict]] = {s: [] for s in ID_LIST_FILES if s in lists}
        overlaps: list[tuple[str, list[str]]] = []
        for k in kept:
            keys = {k["tweet_id"], k["row"]["id"], f"{k['tweet_id']}-{k['id_start']}"}
            in_core = [s for s in core if keys & lists[s]]
            if not in_core:
                report.skip("not in any split list", k["where"])
                continue
            first = in_core[0]  # train, then dev, then test: a row is never in two evaluation splits
            if len(in_core) > 1:
                report.note("in several split lists: kept in the first (train, dev, test order)", k["where"])
                overlaps.append((k["row"]["id"], in_core))
            out[first].append(k)
            for s in out:
                if s in core or not keys & lists[s]:
                    continue
                if first == "train":  # train07 / train05 are subsets of train
                    out[s].append(k)
                else:
                    report.note(f"in a train subset list but in split {first}: left out of the subset", k["where"])
        if overlaps:
            logger.warning(
                "TwitterMel: %d mentions are listed in several of %s (e.g. %s); each is kept in its first split only, "
                "so no row leaks from training into evaluation",
                len(overlaps), "/".join(ID_LIST_FILES[s] for s in core),
                ", ".join(f"{i} in {'+'.join(ss)}" for i, ss in overlaps[:5]),
            )
        return out
