"""Extract once: an image feature cache on disk (``mel features``) that training, evaluation and ``mel index`` read
(``--features F``).

Layout of a cache folder ``F``:

- ``index.json``: the encoder identity (:attr:`~modeling_mel.image_features.ImageFeatureExtractor.identity`), its
  ``model_key`` (the prefix of every content key), the dataset, data folder, family and region mode it was made for,
  ``complete`` and, once finished, the counts and the skip report;
- ``shard-NNNNNN.safetensors``: features keyed by the extractor's own content keys (SHA-1 of the file bytes, or of the
  decoded pixels of a whole image / box crop, plus the encoder's ``model_key``; patch tokens with their ``g`` / ``p``
  suffixes), so the cache answers exactly the calls that the existing code paths make
  (:class:`~modeling_mel.zemel_evaluation.RegionFeatures`, :class:`~modeling_mel.pfmel_data.PFMELCorpus`,
  :func:`~modeling_mel.knowledge_base.encode_entities`);
- ``skip_report.json``: missing / unreadable images counted by reason, with examples.

Resumable: the images are encoded in chunks and each chunk's new features are written as one shard (written to a
temporary file, then renamed: a killed run leaves only whole shards). A re-run loads the shards and encodes only the
images that are not in them (file hashing is redone, encoding is not).

Reading: :class:`CachedImageFeatures` is an :class:`~modeling_mel.image_features.ImageFeatureExtractor` backed by the
cache, without the encoder: it is accepted wherever an extractor is, carries the recorded identity (so
:func:`~modeling_mel.image_features.check_image_encoder` refuses it for a model trained with another encoder), and a
lookup miss is an error (:class:`FeatureCacheMiss`, exit code 2) naming the image and the fix (re-run ``mel features``
on that corpus, which adds only the missing images, or drop ``--features``); it never falls back to encoding. Missing
and unreadable images give zero vectors exactly as with the encoder. The cache refuses another encoder
(:func:`check_cache_encoder`): one line naming both.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .image_encoders import (
    RANDOM_PREFIX,
    TINY_ALIAS,
    TINY_IMAGE_ENCODER,
    ImageEncoderError,
    describe_image_encoder,
    image_encoder_mismatch,
)
from .image_features import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageFeatureExtractor,
    ImageReadError,
    _content_key,
    _describe,
    open_image,
)

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
SKIP_REPORT_FILE = "skip_report.json"
SHARD_PATTERN = "shard-*.safetensors"


class FeatureCacheMiss(ImageEncoderError):
    """An image asked of a :class:`CachedImageFeatures` is not in the cache (one line; ``mel`` exits with code 2)."""


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


class FeatureCache:
    """The folder of a feature cache: its ``index.json`` and shards (read lazily: a shard's header gives its keys)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        index_path = os.path.join(self.path, INDEX_FILE)
        if not os.path.isfile(index_path):
            raise FileNotFoundError(f"{self.path!r} is not a feature cache (no {INDEX_FILE}); make one with mel features "
                                    "--dataset NAME --data_dir D --image_model M --out F")
        with open(index_path, encoding="utf-8") as f:
            self.index: dict = json.load(f)
        self._where: dict[str, str] = {}
        self._handles: dict[str, Any] = {}
        self.refresh()

    @property
    def identity(self) -> dict:
        return dict(self.index["identity"])

    @property
    def model_key(self) -> str:
        return str(self.index["model_key"])

    def shards(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.path, SHARD_PATTERN)))

    def refresh(self) -> None:
        """Read the keys of shards not seen yet."""
        from safetensors import safe_open

        for shard in self.shards():
            if shard in self._handles:
                continue
            handle = safe_open(shard, framework="numpy")
            self._handles[shard] = handle
            for key in handle.keys():
                self._where[key] = shard

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, key: str) -> np.ndarray | None:
        shard = self._where.get(key)
        return None if shard is None else np.asarray(self._handles[shard].get_tensor(key), dtype=np.float32)

    def add_shard(self, features: Mapping[str, np.ndarray]) -> str | None:
        """Write ``features`` as a new shard, atomically (temporary file, then rename)."""
        from safetensors.numpy import save_file

        if not features:
            return None
        n = len(self.shards())
        while os.path.exists(os.path.join(self.path, f"shard-{n:06d}.safetensors")):
            n += 1
        path = os.path.join(self.path, f"shard-{n:06d}.safetensors")
        tmp = f"{path}.{os.getpid()}.tmp"
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in features.items()}, tmp)
        os.replace(tmp, path)
        self.refresh()
        return path

    def write_index(self, **updates: Any) -> None:
        self.index.update(updates)
        _write_json(os.path.join(self.path, INDEX_FILE), self.index)


def _resolved_name(image_model: str) -> str:
    name = os.fspath(image_model)
    if name == TINY_ALIAS:
        return TINY_IMAGE_ENCODER
    return os.path.abspath(name) if os.path.isdir(name) and not name.startswith(RANDOM_PREFIX) else name


def check_cache_encoder(cache_path: str, recorded: Mapping[str, Any], actual: Any, fix: str) -> None:
    """:class:`ImageEncoderError` (one line naming both encoders and ``fix``) when the encoder ``actual`` (an extractor
    or an identity dict) is not the one that made the cache at ``cache_path``."""
    identity = actual if isinstance(actual, Mapping) else getattr(actual, "identity", {})
    differ = image_encoder_mismatch(recorded, identity)
    if differ:
        raise ImageEncoderError(
            f"image encoder mismatch: the feature cache {cache_path} was made with {describe_image_encoder(recorded)}, "
            f"but {describe_image_encoder(identity)} was given (different {', '.join(differ)}); {fix}"
        )


class CachedImageFeatures(ImageFeatureExtractor):
    """An :class:`~modeling_mel.image_features.ImageFeatureExtractor` answered from a feature cache (no encoder
    loaded): ``encode``, ``encode_patches``, ``encode_regions`` and ``entity_feature`` as the encoder would give them;
    an image that is not in the cache raises :class:`FeatureCacheMiss` naming it and the fix."""

    def __init__(self, path: str | os.PathLike, strict: bool = False, batch_size: int = 16,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, image_model: str | None = None) -> None:
        import torch

        self.cache = FeatureCache(path)
        identity = self.cache.identity
        if image_model and _resolved_name(image_model) != identity.get("name"):
            raise ImageEncoderError(
                f"image encoder mismatch: the feature cache {self.cache.path} was made with "
                f"{describe_image_encoder(identity)}, but --image_model {image_model!r} was given; drop --image_model "
                f"(or --features), or make a cache with mel features --image_model {image_model}"
            )
        self._identity = identity
        self.name = identity.get("name")
        self.random = bool(identity.get("random"))
        self.pretrained = not self.random
        self.seed = int(identity.get("seed") or 0)
        self.model_type = identity.get("model_type")
        self.weights_sha256 = identity.get("weights_sha256")
        self.feature = identity.get("feature")
        self.feature_dim = int(identity["feature_dim"])
        self.image_size = int(identity["image_size"])
        self.preprocessing = identity.get("preprocessing")
        self.model_key = self.cache.model_key
        self.model = None
        self._processor = None
        self.strict = strict
        self.batch_size = int(batch_size)
        self.max_image_pixels = None if max_image_pixels is None else int(max_image_pixels)
        self.device = torch.device("cpu")
        self.cache_dir = None
        self.stats: collections.Counter = collections.Counter()
        self._memory: dict[str, np.ndarray] = {}

    @property
    def identity(self) -> dict:
        return dict(self._identity)

    def _lookup(self, key: str, patches: bool = False) -> np.ndarray | None:
        if key in self._memory:
            return self._memory[key]
        feat = self.cache.get(key)
        if feat is not None:
            self._memory[key] = feat
        return feat

    def _forward(self, pil_images: list, patches: bool = False):
        raise FeatureCacheMiss("not in the feature cache")

    def _miss(self, images: Sequence[Any], suffix: str, patches: bool) -> FeatureCacheMiss:
        """The error naming the first image of ``images`` that is not in the cache."""
        what = "an image"
        for image in images:
            try:
                pil = open_image(image, self.max_image_pixels) if patches else image
                key = _content_key(pil, self.model_key + suffix)
            except (ImageReadError, OSError, TypeError):
                continue
            if key is not None and (key + ("g" if patches else "")) not in self.cache:
                what = f"image {_describe(image)}" if isinstance(image, (str, os.PathLike)) else (
                    f"an image region ({_describe(image)}, a whole image or box crop{', patch tokens' if patches else ''})")
                break
        index = self.cache.index
        return FeatureCacheMiss(
            f"{what} is not in the feature cache {self.cache.path} (made by mel features for {index.get('dataset')} "
            f"{index.get('data_dir')}, {index.get('family')} family, regions {index.get('image_regions')}); re-run "
            f"mel features --dataset NAME --data_dir D --image_model {self.name} --out {self.cache.path} on the corpus "
            f"used here (only the missing images are encoded), or drop --features to encode images with the encoder"
        )

    def encode(self, images: Sequence[Any], progress: bool = False) -> np.ndarray:
        try:
            return super().encode(images, progress=False)
        except FeatureCacheMiss:
            raise self._miss(images, "", patches=False) from None

    def encode_patches(self, images: Sequence[Any]):
        try:
            return super().encode_patches(images)
        except FeatureCacheMiss:
            raise self._miss(images, ":patches", patches=True) from None

    def __repr__(self) -> str:
        return f"CachedImageFeatures({self.cache.path!r}, model={self.model_key!r}, feature_dim={self.feature_dim})"


def open_features(path: str | os.PathLike, image_model: str | None = None, recorded: Mapping[str, Any] | None = None,
                  what: str = "the model", **kwargs: Any) -> CachedImageFeatures:
    """The extractor of the cache ``path`` (``--features``), refused (:class:`ImageEncoderError`, one line naming both)
    when ``image_model`` names another encoder or when ``recorded`` (a model's encoder) is another one."""
    extractor = CachedImageFeatures(path, image_model=image_model, **kwargs)
    if recorded:
        from .image_encoders import check_image_encoder

        check_image_encoder(recorded, extractor, what=what,
                            fix=f"pass --features made with the model's encoder (mel features --image_model "
                                f"{recorded.get('name')}), or drop --features")
    return extractor


# ----------------------------------------------------------------------------------------------------------------------
# mel features
# ----------------------------------------------------------------------------------------------------------------------
def _skip_reason(image: Any, extractor: ImageFeatureExtractor) -> str | None:
    """Why a mention image cannot be used (``missing`` / ``corrupt`` / ``too_large``), or ``None``."""
    from .image_features import ImageTooLargeError

    if image is None:
        return None  # no image: a text-only mention, not a skip
    if isinstance(image, (str, os.PathLike)) and not os.path.exists(os.fspath(image)):
        return "missing"
    try:
        open_image(image, extractor.max_image_pixels)
    except ImageTooLargeError:
        return "too_large"
    except ImageReadError:
        return "corrupt"
    return None


def _resolve_family(dataset: str, family: str) -> str:
    """``zemel`` or ``pfmel``: ``auto`` picks zemel for the ZEMEL corpora, else pfmel; another name is a ValueError."""
    from .zemel_evaluation import ZEMEL_DATASETS

    if family == "auto":
        family = "zemel" if dataset in ZEMEL_DATASETS else "pfmel"
    if family not in ("zemel", "pfmel"):
        raise ValueError(f"unknown --family {family!r}; choose auto, zemel or pfmel")
    return family


def _open_cache(out: str, extractor: ImageFeatureExtractor, dataset: str, data_dir: str, family: str,
                image_regions: str) -> FeatureCache:
    """The cache folder ``out``: resumed when it has an ``index.json`` (refused for another encoder than
    ``extractor``'s), else created for it; its index then names this corpus and is marked incomplete."""
    os.makedirs(out, exist_ok=True)
    index_path = os.path.join(out, INDEX_FILE)
    if os.path.isfile(index_path):
        cache = FeatureCache(out)
        check_cache_encoder(out, cache.identity, extractor,
                            fix=f"pass --image_model {cache.identity.get('name')} to resume it, or another --out")
    else:
        _write_json(index_path, {"format": 1, "identity": extractor.identity, "model_key": extractor.model_key})
        cache = FeatureCache(out)
    cache.write_index(dataset=dataset, data_dir=os.path.abspath(data_dir), family=family,
                      image_regions=image_regions if family == "zemel" else None, complete=False)
    return cache


@contextlib.contextmanager
def _answered_from_cache(extractor: ImageFeatureExtractor, cache: FeatureCache) -> Iterator[None]:
    """Within the block, ``extractor`` answers the images already in ``cache`` from it (no encoding); its own
    ``_lookup`` is put back on leaving, error or not."""
    original_lookup = extractor._lookup

    def lookup(key: str, patches: bool = False):
        feat = original_lookup(key, patches)
        if feat is None and key in cache:
            feat = extractor._memory[key] = cache.get(key)
        return feat

    extractor._lookup = lookup
    try:
        yield
    finally:
        extractor._lookup = original_lookup


def _flush(extractor: ImageFeatureExtractor, cache: FeatureCache) -> None:
    """Write the extractor's features that are not in ``cache`` yet as one new shard (one per chunk)."""
    new = {k: v for k, v in extractor._memory.items() if k not in cache}
    cache.add_shard(new)


class _SkipReport:
    """Skipped images counted by reason, with the first 10 examples of each reason."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, reason: str, what: Any) -> None:
        """Count one skipped image ``what`` under ``reason``."""
        self.counts[reason] += 1
        if len(self.examples[reason]) < 10:
            self.examples[reason].append(str(what))

    def add_extractor_counts(self, extractor: ImageFeatureExtractor, before: Mapping[str, int]) -> None:
        """Add the unreadable images the extractor counted itself (KB and PFMEL images) since ``before``."""
        for reason in ("missing", "corrupt", "too_large"):
            n = extractor.stats[reason] - before[reason]
            if n:
                self.counts[reason] += n

    def as_dict(self) -> dict:
        """The report written to ``skip_report.json``: ``counts``, ``examples`` and ``total``."""
        return {"counts": dict(self.counts), "examples": dict(self.examples), "total": int(sum(self.counts.values()))}


def _zemel_image_rows(data: Any) -> list[dict]:
    """The mention rows of every split that have an image, one per image key (first row wins)."""
    rows, seen = [], set()
    for split_rows in data.mentions.values():
        for r in split_rows:
            key = r.get("image_key", r["id"])
            if r.get("image") is not None and key not in seen:
                seen.add(key)
                rows.append(r)
    return rows


def _zemel_kb_entities(data: Any) -> list[tuple[str, Any]]:
    """The ``(entity id, entity)`` pairs of the full KB updated with every split's KB."""
    kb = dict(data.full_kb)
    for split_kb in (data.kbs or {}).values():
        kb.update(split_kb)
    return list(kb.items())


def _extract_zemel(dataset: str, data_dir: str, extractor: ImageFeatureExtractor, cache: FeatureCache,
                   skips: _SkipReport, image_regions: str, max_entity_images: int, chunk_size: int,
                   progress: bool) -> None:
    """ZEMEL family: encode every split's mention regions, then the KB's images, one shard per chunk; mention images
    that give no feature are counted in ``skips``."""
    from .zemel_evaluation import RegionFeatures, load_zemel_data

    data = load_zemel_data(dataset, data_dir)
    regions = RegionFeatures(extractor, max_entity_images, regions=image_regions)
    rows = _zemel_image_rows(data)
    entities = _zemel_kb_entities(data)
    total = len(rows) + len(entities)
    bar = _progress(total, progress)
    for start in range(0, len(rows), chunk_size):
        part = rows[start : start + chunk_size]
        regions.add_rows(part)
        for r in part:
            if regions._images.get(r.get("image_key", r["id"])) is None:
                skips.add(_skip_reason(r["image"], extractor) or "corrupt", r["image"])
        _flush(extractor, cache)
        bar.update(len(part))
    for start in range(0, len(entities), chunk_size):
        part = dict(entities[start : start + chunk_size])
        regions.add_entities(part)
        _flush(extractor, cache)
        bar.update(len(part))
    bar.close()


def _extract_pfmel(dataset: str, data_dir: str, extractor: ImageFeatureExtractor, cache: FeatureCache,
                   chunk_size: int, progress: bool) -> None:
    """PFMEL family: encode :class:`~modeling_mel.pfmel_data.PFMELCorpus`'s mention images split by split, then its
    entity images, one shard per chunk."""
    from .pfmel_data import PFMELCorpus

    corpus = PFMELCorpus.load(dataset, data_dir, image_features="resnet50", extractor=extractor)
    splits = [(s, corpus.split(s)) for s in corpus.mentions]
    eids = list(corpus.entities)
    total = sum(len(ds) for _, ds in splits) + len(eids)
    bar = _progress(total, progress)
    for _, ds in splits:
        for start in range(0, len(ds), chunk_size):
            corpus.ensure_mention_features(ds.select(range(start, min(len(ds), start + chunk_size))))
            _flush(extractor, cache)
            bar.update(min(chunk_size, len(ds) - start))
    for start in range(0, len(eids), chunk_size):
        corpus.ensure_entity_features(eids[start : start + chunk_size])
        _flush(extractor, cache)
        bar.update(len(eids[start : start + chunk_size]))
    bar.close()


def extract_features(
    dataset: str,
    data_dir: str,
    out: str,
    image_model: str = "microsoft/resnet-50",
    family: str = "auto",
    image_regions: str = "boxes",
    image_size: int | None = None,
    image_feature: str | None = None,
    max_entity_images: int = 9,
    chunk_size: int = 256,
    batch_size: int = 32,
    progress: bool = True,
    extractor: ImageFeatureExtractor | None = None,
) -> dict:
    """Encode every mention and KB image of a corpus into the cache folder ``out`` (resumable: see the module). ZEMEL
    family: :class:`~modeling_mel.zemel_evaluation.RegionFeatures` over every split's rows (whole image + box crops,
    or patch tokens with ``image_regions="patches"``) and the KB's images; PFMEL family:
    :class:`~modeling_mel.pfmel_data.PFMELCorpus`'s mention and entity images. Returns the summary written in
    ``index.json`` (``encoded``, ``cached``, ``skipped``: the skip report)."""
    from .zemel_evaluation import build_image_extractor

    family = _resolve_family(dataset, family)
    if extractor is None:
        extractor = build_image_extractor(image_model, image_size, None, batch_size=batch_size, feature=image_feature)
    cache = _open_cache(out, extractor, dataset, data_dir, family, image_regions)

    # already-done images answer from the cache (no encoding); new features are flushed as one shard per chunk
    encoded_before = extractor.stats["encoded"]
    skips = _SkipReport()
    stats_before = collections.Counter(extractor.stats)
    with _answered_from_cache(extractor, cache):
        if family == "zemel":
            _extract_zemel(dataset, data_dir, extractor, cache, skips, image_regions, max_entity_images, chunk_size,
                           progress)
        else:
            _extract_pfmel(dataset, data_dir, extractor, cache, chunk_size, progress)
    # unreadable KB (and PFMEL) images: counted by the extractor as it meets them
    skips.add_extractor_counts(extractor, stats_before)
    report = skips.as_dict()
    _write_json(os.path.join(out, SKIP_REPORT_FILE), report)
    summary = {"encoded": int(extractor.stats["encoded"] - encoded_before), "features": len(cache), "skipped": report}
    cache.write_index(complete=True, summary=summary)
    return summary


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="image features", unit="image")


def features_main(argv: list[str]) -> int:
    """``mel features``: extract once into a safetensors feature cache (see the module)."""
    parser = argparse.ArgumentParser(prog="mel features", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="corpus builder (zemeld, mel_jsonl, wikimel, twitter_mel, ...)")
    parser.add_argument("--data_dir", required=True, help="folder with the corpus files")
    parser.add_argument("--image_model", default="microsoft/resnet-50",
                        help="image encoder: transformers vision checkpoint (hub id or dir) or random:<arch> / tiny")
    parser.add_argument("--out", required=True, help="cache folder (safetensors shards + index.json); re-run to resume")
    parser.add_argument("--family", default="auto", choices=["auto", "zemel", "pfmel"],
                        help="whose image inputs to extract (auto: zemel for ZEMEL corpora, else pfmel)")
    parser.add_argument("--image_regions", default="boxes", choices=["boxes", "patches"],
                        help="ZEMEL mention regions: boxes (whole image + a crop per box) or patches (patch tokens)")
    parser.add_argument("--image_size", type=int, default=None, help="image side fed to the encoder (default: its own)")
    parser.add_argument("--image_feature", default=None, help="global feature kind: pooled, projected or cls")
    parser.add_argument("--max_entity_images", type=int, default=9, help="most KB images per entity (ZEMEL)")
    parser.add_argument("--chunk_size", type=int, default=256, help="images (rows / entities) per written shard")
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    summary = extract_features(args.dataset, args.data_dir, args.out, args.image_model, family=args.family,
                               image_regions=args.image_regions, image_size=args.image_size,
                               image_feature=args.image_feature, max_entity_images=args.max_entity_images,
                               chunk_size=args.chunk_size, batch_size=args.batch_size, progress=not args.no_progress)
    skipped = summary["skipped"]
    print(f"mel features: {summary['encoded']} images encoded, {summary['features']} features in {args.out}; "
          f"skipped {skipped['total']} images" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(skipped['counts'].items()))})"
                                                  if skipped["total"] else "")
          + f"; report: {os.path.join(args.out, SKIP_REPORT_FILE)}")
    return 0


__all__ = ["FeatureCache", "CachedImageFeatures", "FeatureCacheMiss", "open_features", "check_cache_encoder",
           "extract_features", "features_main"]
