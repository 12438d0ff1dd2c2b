"""The knowledge base as modeling-mel reads, encodes and checks it: one reader and normaliser of KB records
(``kb.jsonl`` rows, ``datasets.Dataset`` rows, entity-index folders), the one KB encoder of ZEMEL models
(:func:`encode_entities`, what ``mel index``, ``EntityIndex.build``, the pipeline and ZEMEL training's negative mining
run), and the model identity an index is checked against (config hash, weights fingerprint).

This file ships with saved models next to the pipeline (a relative import of ``pipeline_entity_linking.py``): it
imports only torch and the standard library. ``entity_index.py`` (FAISS, package only) builds on it, so the pipeline
and the entity index no longer import each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
from typing import Any, Iterable, Mapping, Sequence

import torch

logger = logging.getLogger(__name__)

INDEX_CONFIG_NAME = "index_config.json"
ENTITIES_NAME = "entities.jsonl"
VECTORS_NAME = "vectors.safetensors"


# ----------------------------------------------------------------------------------------------------------------------
# Knowledge base records
# ----------------------------------------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file; ``ValueError`` naming the file and line for a bad line."""
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """``(line number, row)`` of each row of a JSON-lines file (blank lines skipped); errors as :func:`read_jsonl`."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{os.fspath(path)} line {n} is not valid JSON: {err}") from err
            if not isinstance(row, dict):
                raise ValueError(f"{os.fspath(path)} line {n} is a {type(row).__name__}, expected a JSON object")
            rows.append((n, row))
    return rows


def _resolve_path(value: Any, base_dir: str | None) -> Any:
    if isinstance(value, str) and base_dir and value and not os.path.isabs(value):
        return os.path.join(base_dir, value)
    return value


def _as_int(value: Any) -> int:
    """An integer value: ``int`` (numpy integers too), or a float with no fractional part; ``ValueError`` for 0.9,
    ``True``, "3"..."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float)) or (
        isinstance(value, float) and not value.is_integer()
    ):
        raise ValueError(f"{value!r} is not an integer")
    return int(value)


#: Entity fields read as text (tokenised, matched by the name rule / BM25): a string, a number or absent.
TEXT_FIELDS = ("name", "description", "screen_name", "location")


def _check_text_field(entity: dict, field: str, label: str, value: Any) -> Any:
    """``value`` of a text field as stored: a string or ``None`` as is, a number as its string; ``ValueError`` naming
    the row (``label``), the entity and the field for a list, a dict or any other JSON type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    shown = json.dumps(value, ensure_ascii=False, default=str)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    kind = type(value).__name__
    kind = "list" if isinstance(value, (list, tuple)) else "object" if isinstance(value, Mapping) else kind
    raise ValueError(
        f"{label} (entity_id {entity.get('entity_id')!r}): {field} must be a string, got a {kind} {shown}; "
        "write it as one string"
    )


def normalize_entity(
    row: Mapping[str, Any], position: int, base_dir: str | None = None, where: str | None = None
) -> dict:
    """One KB row as ``{"entity_id", "name", "description", "screen_name", "location", "images", "timeline", ...}``.

    ``entity_id`` and a name are required (``ValueError`` naming the row otherwise): ``name``, or a Twitter entity's
    ``screen_name`` when the name is empty; relative image paths are resolved against ``base_dir`` (the folder of
    ``kb.jsonl``). The text fields (:data:`TEXT_FIELDS`, a timeline entry's ``text``) must be strings (numbers become
    strings): a list or an object is a ``ValueError`` naming the row, the entity and the field. ``where``: where the
    row comes from, added to the messages (``"kb.jsonl line 7"``).
    """
    label = f"KB row {position}" + (f" ({where})" if where else "")
    if not isinstance(row, Mapping):
        raise ValueError(f"{label} is a {type(row).__name__}, expected a mapping with entity_id and name")
    entity = dict(row)
    if entity.get("entity_id") in (None, ""):
        raise ValueError(f"{label} has no entity_id: {str(dict(row))[:120]}")
    if isinstance(entity["entity_id"], (list, tuple, Mapping)):
        raise ValueError(f"{label}: entity_id must be a string, got {str(entity['entity_id'])[:60]}")
    entity["entity_id"] = str(entity["entity_id"])
    for field in TEXT_FIELDS:
        if field in entity:
            entity[field] = _check_text_field(entity, field, label, entity[field])
    name = entity.get("name")
    if name is None or not str(name).strip():
        name = entity.get("screen_name")
        if name is None or not str(name).strip():
            raise ValueError(
                f"{label} (entity_id {entity['entity_id']!r}) has no name (nor screen_name); give every entity "
                "a name: it is what the name rule, BM25 and the entity encoders read"
            )
    entity["name"] = str(name)
    images = entity.get("images") or []
    if not isinstance(images, (list, tuple)):
        images = [images]
    entity["images"] = [_resolve_path(im, base_dir) for im in images if im is not None]
    timeline = entity.get("timeline") or []
    if isinstance(timeline, (str, Mapping)):
        timeline = [timeline]
    entity["timeline"] = []
    for k, t in enumerate(timeline):
        if isinstance(t, Mapping):
            t = dict(t, image=_resolve_path(t.get("image"), base_dir))
            if t.get("text") is not None:
                t["text"] = _check_text_field(entity, f"timeline[{k}].text", label, t["text"])
        else:
            t = {"text": str(_check_text_field(entity, f"timeline[{k}]", label, t))}
        entity["timeline"].append(t)
    return entity


def kb_records(kb: Any) -> list[dict]:
    """Entity records of a KB given as a ``kb.jsonl`` path, a ``datasets.Dataset``, or an iterable of mappings."""
    if isinstance(kb, (str, os.PathLike)):
        path = os.fspath(kb)
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, ENTITIES_NAME)):
                entities = os.path.join(path, ENTITIES_NAME)
                return [normalize_entity(r, i, path, f"{entities} line {n}")
                        for i, (n, r) in enumerate(read_jsonl_numbered(entities))]
            if os.path.isfile(os.path.join(path, "kb.jsonl")):
                path = os.path.join(path, "kb.jsonl")
            else:
                raise ValueError(f"KB directory {path!r} holds neither {ENTITIES_NAME} (an entity index) nor kb.jsonl")
        if not os.path.isfile(path):
            raise ValueError(f"KB file {path!r} does not exist; pass a kb.jsonl path, a datasets.Dataset or an index dir")
        base = os.path.dirname(os.path.abspath(path))
        return [normalize_entity(r, i, base, f"{path} line {n}") for i, (n, r) in enumerate(read_jsonl_numbered(path))]
    if isinstance(kb, Mapping):
        raise ValueError("kb is a single mapping; pass a list of entity rows, a datasets.Dataset or a kb.jsonl path")
    if not isinstance(kb, Iterable):
        raise ValueError(f"kb of type {type(kb).__name__} is not supported; pass a kb.jsonl path, a datasets.Dataset, "
                         "a list of entity rows or an entity index directory")
    return [normalize_entity(r, i) for i, r in enumerate(kb)]


def entity_images(entity: Mapping[str, Any]) -> list:
    """Images of an entity: its ``images``, or else the images of its timeline."""
    images = list(entity.get("images") or [])
    if not images:
        images = [t.get("image") for t in entity.get("timeline") or [] if isinstance(t, Mapping) and t.get("image")]
    return images


LINKING_METHODS = ("dense", "cross")


def linking_method(model: Any) -> str:
    """How a model links, as its class declares it (``linking_method``): ``"dense"`` (a context encoder, a candidate
    encoder whose vectors are cached and indexed, and ``score(context, cache)``: ZEMEL, or any bi/poly-encoder
    with ``encode_context`` / ``encode_candidates`` / ``score``) or ``"cross"`` (each (mention, candidate) pair
    scored by ``link_scores(logits)``: PFMEL). The pipeline, ``EntityIndex``, ``mel index`` / ``mel link`` and the
    model card dispatch on it, never on a family name. Undeclared models are recognised by those methods."""
    declared = getattr(model, "linking_method", None)
    if isinstance(declared, str):
        if declared not in LINKING_METHODS:
            raise ValueError(f"{type(model).__name__}.linking_method is {declared!r}; expected one of {LINKING_METHODS}")
        return declared
    if hasattr(model, "encode_candidates") and hasattr(model, "encode_context") and hasattr(model, "score"):
        return "dense"
    if hasattr(model, "link_scores"):
        return "cross"
    raise ValueError(
        f"model {type(model).__name__} is not a linking model: declare linking_method = 'dense' (with encode_context, "
        "encode_candidates and score) or 'cross' (with link_scores), as ZemelPolyEncoder and BertForMultimodalNSP do"
    )


def model_family(model: Any) -> str:
    """Deprecated name of :func:`linking_method`."""
    return linking_method(model)


def model_config_hash(model: Any) -> str | None:
    """The architecture hash of a model's config: ``config.config_hash()`` where the config defines it (ZEMEL), else
    SHA-1 over the config's JSON without its name, version and runtime fields."""
    fn = getattr(model.config, "config_hash", None)
    if callable(fn):
        return fn()
    skip = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "auto_map", "custom_pipelines"}
    payload = {k: v for k, v in model.config.to_dict().items() if k not in skip}
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def model_fingerprint(model: Any) -> str:
    """SHA-1 over the weights of the model's candidate encoder (the whole model when it has none).

    Two models of the same architecture but different weights (e.g. before / after training) get different
    fingerprints, so a stale entity index is detected.
    """
    module = getattr(model, "candidate_encoder", model)
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        t = tensor.detach()
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            t = t.to("cpu", torch.float32).contiguous()
        h.update(memoryview(t.numpy()).cast("B"))  # the float32 bytes without a copy (same digest as tobytes())
    return h.hexdigest()


def check_index_compatible(index_config: Mapping[str, Any], model: Any, where: str = "entity index") -> None:
    """``ValueError`` naming both hashes when an index was built by another model than ``model``."""
    built_hash = index_config.get("config_hash")
    if built_hash is None or index_config.get("kind") == "bm25":
        return  # a BM25 / metadata-only index holds no vectors
    own_hash = model_config_hash(model)
    if own_hash != built_hash:
        raise ValueError(
            f"{where} was built by a model with config hash {built_hash}, but this model has config hash "
            f"{own_hash}; rebuild it with `mel index --model <this model>` (or EntityIndex.build)"
        )
    built_fp = index_config.get("weights_fingerprint")
    if built_fp is not None:
        own_fp = model_fingerprint(model)
        if own_fp != built_fp:
            raise ValueError(
                f"{where} was built by another model: same config hash {own_hash}, but weights fingerprint "
                f"{built_fp} (index) vs {own_fp} (this model); rebuild it with `mel index --model <this model>`"
            )


# ----------------------------------------------------------------------------------------------------------------------
# Candidate encoding (ZEMEL) -- shared by the pipeline and EntityIndex.build
# ----------------------------------------------------------------------------------------------------------------------


def _image_features_of(extractor: Any, images: Sequence[Any], limit: int | None) -> torch.Tensor | None:
    """(n, D) features of the readable images (unreadable ones give zero rows from the extractor and are dropped)."""
    if extractor is None or not images:
        return None
    images = list(images)[: limit or None]
    feats = torch.as_tensor(extractor.encode(images), dtype=torch.float32)
    feats = feats[feats.abs().sum(1) > 0]
    return feats if len(feats) else None


@torch.inference_mode()
def encode_entities(
    model: Any,
    processor: Any,
    entities: Sequence[Mapping[str, Any]],
    batch_size: int = 64,
    image_extractor: Any = None,
    max_length: int = 64,
    progress: bool = False,
    bf16: bool = False,
    entity_features: Any = None,
) -> torch.Tensor:
    """Candidate vectors ``(N, H)`` (float32, CPU, KB order) of KB entities with a ZEMEL model's candidate encoder:
    the one KB encoder of ``mel index``, ``EntityIndex.build``, the pipeline and ZEMEL training's negative mining.

    Text-only entities (no ``image_extractor``, or no readable image) take the fast path: one batched tokenisation
    (``processor.tokenize_candidates``), then ``model.fast_encode_candidates`` (length-sorted batches cut to their
    longest sequence, ``torch.inference_mode``). Entities with images are encoded in length-sorted batches with
    each image as a whole-image region. ``entity_features``: instead of an extractor, a function of a KB position
    returning that entity's region features ``(n, D)`` or ``None`` (precomputed features, as the evaluation uses). ``bf16``: bf16 autocast (fast on AVX-512/AMX CPUs and bf16 GPUs; the
    vectors agree with fp32 to a cosine of about 0.9999).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    n = len(entities)
    hidden = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.text_config.hidden_size)
    out = torch.zeros(n, hidden, dtype=torch.float32)
    if n == 0:
        return out
    device = next(model.parameters()).device
    dtype = torch.bfloat16 if bf16 else None
    max_regions = int(getattr(processor, "max_regions", 10))
    with_images: list[int] = []
    if entity_features is not None:
        with_images = [i for i in range(n) if entity_features(i) is not None]
    elif image_extractor is not None:
        with_images = [i for i in range(n) if entity_images(entities[i])]
    text_only = sorted(set(range(n)) - set(with_images))
    fast = hasattr(model, "fast_encode_candidates") and hasattr(processor, "tokenize_candidates")
    bar = None
    if progress:
        from transformers.utils.logging import tqdm

        bar = tqdm(total=n, desc="encoding entities", unit="entity")
    if text_only and fast:
        ids = processor.tokenize_candidates(
            [entities[i]["name"] for i in text_only], [entities[i].get("description") for i in text_only],
            max_length=max_length,
        )
        order = sorted(range(len(ids)), key=lambda j: len(ids[j]))
        chunk = int(batch_size) * 16  # a progress step; each chunk is length-sorted batches inside
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            vectors = model.fast_encode_candidates([ids[j] for j in part], batch_size=batch_size, autocast_dtype=dtype)
            out[torch.tensor([text_only[j] for j in part])] = vectors.float().cpu()
            if bar is not None:
                bar.update(len(part))
    rest = with_images + ([] if fast else text_only)
    if rest:
        was_training = model.training
        model.eval()
        rest.sort(key=lambda i: -(len(entities[i]["name"]) + len(str(entities[i].get("description") or ""))))
        for start in range(0, len(rest), int(batch_size)):
            idx = rest[start : start + int(batch_size)]
            names = [entities[i]["name"] for i in idx]
            descriptions = [entities[i].get("description") for i in idx]
            feats = None
            if entity_features is not None:
                feats = [entity_features(i) for i in idx]
            elif image_extractor is not None:
                feats = [_image_features_of(image_extractor, entity_images(entities[i]), max_regions) for i in idx]
            if feats is not None and all(f is None for f in feats):
                feats = None
            enc = processor.encode_candidates(names, descriptions, images_features=feats, max_length=max_length)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16)):
                vectors = model.encode_candidates(**enc)  # (b, H)
            out[torch.tensor(idx)] = vectors.float().cpu()
            if bar is not None:
                bar.update(len(idx))
        model.train(was_training)
    if bar is not None:
        bar.close()
    return out


__all__ = [
    "INDEX_CONFIG_NAME",
    "ENTITIES_NAME",
    "VECTORS_NAME",
    "read_jsonl",
    "read_jsonl_numbered",
    "normalize_entity",
    "kb_records",
    "entity_images",
    "LINKING_METHODS",
    "linking_method",
    "model_family",
    "model_config_hash",
    "model_fingerprint",
    "check_index_compatible",
    "encode_entities",
]
