"""``pipeline("multimodal-entity-linking")``: link mentions in (text, image) posts to a knowledge base.

Works with both model families of modeling-mel:

* :class:`BertForMultimodalNSP` (PFMEL, a cross-encoder): candidates are the entities whose name contains the mention
  (the PFMEL rule), optionally merged with a retrieval stage (``retriever="bm25"`` or an entity index with a ZEMEL model
  attached); each (mention, candidate) pair is scored by NSP, in batches of ``pair_batch_size`` pairs.
* :class:`ZemelPolyEncoder` (ZEMEL, a poly-encoder): candidate vectors come from the cache (an entity index, or encoded
  once when the pipeline is built); candidates are BM25 + rules, dense retrieval, or both (``candidates=``); the final
  ranking is the poly score (eq. 3-5 of the paper) of each candidate.

Inputs: a dict ``{"text", "mention" | "mention_start"/"mention_end", "image"?: PIL image | path | None, "boxes"?}`` or
a list of such dicts. A mention given without offsets is located case-insensitively, else by normalised token
alignment (``processing_zemel.align_mention``: "Hermann Beckerath" in "Hermann von Beckerath."); one that aligns
nowhere is still linked, without a span (PFMEL's prompt needs none; ZEMEL puts ``[M] mention [/M]`` first). Output per input: a list of up to ``top_k`` dicts ``{"entity_id", "name", "score"}``, best first
(fewer when fewer candidates exist; ``top_k`` larger than the KB returns every candidate, no error).

Images: an unreadable input image (missing file, corrupt bytes) is treated as "no image" with a logged warning, or
raises ``ValueError`` naming the file with ``strict_images=True``. ``use_images=False`` ignores all images.

This file ships with saved models (``custom_pipelines`` in ``config.json``): it imports only torch, transformers and
the modeling-mel files it imports relatively, which ship beside it (transformers copies them): ``knowledge_base.py``
(the KB reader and encoder), ``linking_kb.py`` (the KB as the pipeline sees it, and the reading of an index folder),
``pipeline_inputs.py`` (the checks of input dicts and call parameters), ``weight_checks.py`` (weights of another
model), the two linkers and, lazily, ``image_features`` for the default image encoder and ``index_files`` to read a
saved index folder; the ``modeling_mel`` package, when installed, serves FAISS indexes and index retrievers. Nothing
in the package imports this file back except the CLI, ``hub.py`` and the package ``__init__``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import torch
from transformers import Pipeline

logger = logging.getLogger(__name__)

TASK = "multimodal-entity-linking"
NIL_CALIBRATION_NAME = "nil_calibration.json"  # written by `mel calibrate` into the model folder
#: predictions per mention when a call gives no top_k
DEFAULT_TOP_K = 5
#: Most pixels of an input image that is decoded (``max_image_pixels``), as ``image_features.DEFAULT_MAX_IMAGE_PIXELS``.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


from .linking_cross import CrossLinker
from .linking_dense import DenseLinker, trained_lengths
from .knowledge_base import (  # noqa: F401 - re-exported: the pipeline's KB layer
    ENTITIES_NAME,
    INDEX_CONFIG_NAME,
    VECTORS_NAME,
    _as_int,
    _image_features_of,
    check_index_compatible,
    encode_entities,
    entity_images,
    kb_records,
    model_config_hash,
    linking_method,
    model_family,
    model_fingerprint,
    normalize_entity,
    read_jsonl,
)
from .linking_kb import LinkingKB, _cache_of, _load_index_dir  # noqa: F401 - re-exported: the KB the pipeline reads
from .pipeline_inputs import _NOT_GIVEN, CANDIDATE_MODES, call_parameters, check_linking_input  # noqa: F401
from .weight_checks import _checkpoint_keys, check_model_weights, weight_mismatch_message  # noqa: F401


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------------


class _Ranking:
    """One mention's ``[(position, score), ...]``, best first, passed from ``_forward`` to ``postprocess`` as an
    object that transformers' tensor-placement walk does not descend into."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list) -> None:
        self.pairs = pairs


class MultimodalEntityLinkingPipeline(Pipeline):
    """Multimodal entity linking: ``{"text", "mention", "image"}`` -> ranked ``{"entity_id", "name", "score"}``.

    Args (at construction; ``pipeline("multimodal-entity-linking", model=..., kb=..., ...)``):
        kb: the knowledge base: a ``kb.jsonl`` path, a ``datasets.Dataset`` / list of entity rows, a saved entity
            index directory (``mel index``), or an ``EntityIndex`` object. Required; an empty KB raises ``ValueError``.
        retriever: PFMEL only (retrieve-then-rerank): ``"bm25"``, an entity index directory built by a ZEMEL model
            (``mel index``; its model is loaded from the path recorded in the index, or ``retriever_model``), or an
            object with ``retrieve(texts, mentions, k)`` (an ``EntityIndex`` loaded with a ZEMEL model and
            processor). The dense top ``config.retriever_k`` (or ``num_candidates`` for BM25) are merged with the
            name-rule candidates and reranked by the NSP model; with an index, a candidate scores
            ``log p(is next) + config.retriever_score_weight * retriever score``.
        retriever_model: the ZEMEL model folder of a ``retriever`` index directory (default: the one it records).
        image_extractor: an ``ImageFeatureExtractor`` (or any object with ``encode(images) -> (N, D)`` and
            ``feature_dim``); by default the image encoder recorded at training (the processor's ``image_encoder``)
            is built on first use, and a given extractor that is not that encoder (other weights, feature kind, size
            or input size) raises ``ValueError`` naming both; models saved before encoders were recorded get
            ``microsoft/resnet-50`` when they expect 2048-d features (an error naming ``random:resnet-50`` when it
            cannot be loaded: a random encoder is never a silent fallback).
        use_images: set ``False`` for text-only linking.
        strict_images: raise ``ValueError`` for an unreadable input image instead of warning and ignoring it (the
            default extractor is then strict too, so an unreadable KB image fails the inputs that rank its entity;
            without strict mode unreadable KB images are skipped with a warning).
        max_image_pixels: images with more pixels (read from the header, before decoding) are not decoded and count
            as unreadable, naming their size (default 50M, well under PIL's own limit: a 13000x13000 1-bit PNG is
            20 KB on disk and 2.1 GB decoded); ``None``: PIL's limit only. The default extractor gets it too.
        index_batch_size: batch size used to encode the KB when no index is given (ZEMEL).
        exact_threshold: ZEMEL: KBs up to this size are poly-scored exhaustively for dense candidates; larger ones
            with an entity index search it with each poly code, then rerank the union (default 50000).
        bf16: run the model under bf16 autocast: PFMEL pair scoring, ZEMEL context encoding and KB encoding (about
            2-3x faster on AVX-512/AMX CPUs and bf16 GPUs; scores then agree with fp32 to about 1e-2 and may differ
            slightly between batch compositions). ``False`` (default):
            fp32, batched results equal one-by-one results; ``None``: bf16 where ``modeling_mel.hardware.bf16_is_fast``
            says this device runs it fast (what ``mel link`` uses unless ``--fp32``).
        allow_weight_mismatch: a model loaded from a folder whose weights are not its class's (weights missing from
            the checkpoint, left random, or checkpoint weights it does not have: e.g. a ZEMEL ``config.json`` beside a
            PFMEL ``model.safetensors``) raises ``ValueError``; ``True`` accepts it (research).
    Call-time parameters (also accepted at construction as defaults):
        top_k (`int`, default 5): results per input.
        candidates (`str`, default ``"auto"``): ZEMEL candidate source, ``"bm25"`` (BM25 + rules), ``"dense"``
            (the cache), ``"all"`` (both), ``"rule"`` (name contains the mention); ``"auto"`` is ``"all"`` when
            the bm25s package is installed, else ``"dense"``. PFMEL always uses the name rule (+ retriever).
        num_candidates (`int`, optional): candidates per source before reranking (default 100; for a PFMEL model
            fine-tuned by this package, ``config.max_candidates``, the cap its training and evaluation used: 32).
        pair_batch_size (`int`, default 64): PFMEL pairs per forward pass (at most ``64 * pair_batch_size`` padded
            tokens: longer pairs go fewer to a pass).
        max_length (`int`, optional): token limit (ZEMEL contexts: the model's `config.context_max_length`, as trained;
            PFMEL pairs: the processor's).
        retriever_k (`int`, optional): PFMEL with a dense ``retriever``: its top k (and the k closest names) are the
            reranked candidates (default: ``config.retriever_k``, the value the reranker was trained with).
        nil_threshold (`float` or `None`): "not in the KB" decision: when the best candidate scores below it (or there
            is no candidate) the output starts with ``{"entity_id": None, "name": None, "score": best, "nil": True}``,
            followed by the candidates. Default: the threshold ``mel calibrate`` saved in the model folder
            (``nil_calibration.json``), else off; ``None`` turns it off.
    ``batch_size`` (pipeline argument) batches inputs; results equal one-by-one results.
    """

    _load_processor = None
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(
        self,
        model: Any,
        *args: Any,
        kb: Any = None,
        retriever: Any = None,
        retriever_model: Any = None,
        image_extractor: Any = None,
        use_images: bool = True,
        strict_images: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        index_batch_size: int = 64,
        exact_threshold: int = 50000,
        bf16: bool | None = False,
        allow_weight_mismatch: bool = False,
        **kwargs: Any,
    ):
        if not allow_weight_mismatch:  # a folder whose weights belong to another model: refuse before any work
            check_model_weights(model)
        processor = kwargs.get("processor")
        if processor is None:
            kwargs["processor"] = self._default_processor(model, kwargs.get("trust_remote_code"))
        kwargs.pop("trust_remote_code", None)
        super().__init__(model, *args, **kwargs)  # moves the model to `device` (pipeline(..., device="cuda"))
        if self.device.type != "cpu" and self.device.index is None:
            # "cuda" / "mps": the indexed device the model landed on, so that cache and batches compare equal to it
            param = next(self.model.parameters(), None)
            if param is not None and param.device.type == self.device.type:
                self.device = param.device
        self.model.eval()
        self.family = linking_method(self.model)  # "dense" or "cross", as the model class declares
        if "nil_threshold" not in self._postprocess_params:  # default: the calibrated threshold, when there is one
            self._postprocess_params["nil_threshold"] = self._calibrated_nil_threshold(kb)
        # a PFMEL model fine-tuned text-only (NSP-BERT) takes no image tokens
        self.use_images = bool(use_images) and self._image_setting("image_features") != "none"
        self.exact_threshold = int(exact_threshold)
        self.bf16 = self._bf16_default(self.device) if bf16 is None else bool(bf16)
        self.strict_images = bool(strict_images)
        if max_image_pixels is not None and (isinstance(max_image_pixels, bool) or int(max_image_pixels) < 1):
            raise ValueError(f"max_image_pixels must be >= 1 (or None: PIL's limit only), got {max_image_pixels!r}")
        self.max_image_pixels = None if max_image_pixels is None else int(max_image_pixels)
        self.image_extractor = image_extractor
        self._check_image_extractor()  # another encoder than the recorded one: refused before any work
        self._entity_feature_cache: dict[int, torch.Tensor | None] = {}
        if kb is None:
            raise ValueError(
                "no knowledge base: pass kb= (a kb.jsonl path, a datasets.Dataset, or an entity index directory) "
                "when building the pipeline"
            )
        self.kb = self._build_kb(kb, int(index_batch_size))
        if retriever is not None and self.family != "cross":
            raise ValueError("retriever= is for BertForMultimodalNSP models; ZEMEL models retrieve with candidates=")
        retriever_name = os.fspath(retriever) if isinstance(retriever, (str, os.PathLike)) else type(retriever).__name__
        if isinstance(retriever, (str, os.PathLike)) and str(retriever) != "bm25":
            if not os.path.isfile(os.path.join(os.fspath(retriever), INDEX_CONFIG_NAME)):
                raise ValueError(
                    f"unknown retriever {retriever!r}; use 'bm25', an entity index directory built by a ZEMEL model "
                    "(`mel index`), or an EntityIndex with a ZEMEL model"
                )
            try:
                from modeling_mel.entity_index import load_retriever
            except ImportError as err:  # remote code without the package
                raise ValueError("retriever=<index dir> needs the modeling-mel package (pip install modeling-mel)") from err
            retriever = load_retriever(os.fspath(retriever), retriever_model, device=self.device)
            if bf16 is not None:  # an explicit precision holds for both stages (else the index's own, where fast)
                retriever.bf16 = bool(bf16)
        if retriever is not None and not isinstance(retriever, str) and not hasattr(retriever, "retrieve"):
            raise ValueError(f"retriever {type(retriever).__name__} has no retrieve(texts, mentions, k) method")
        self._check_retriever_kb(retriever, retriever_name, kb)
        self.retriever = retriever

    # -- construction helpers ------------------------------------------------------------------------------------
    def _check_retriever_kb(self, retriever: Any, name: str, kb: Any) -> None:
        """``ValueError`` naming both when a retriever index holds entities that are not in the pipeline's KB (an
        index built over another KB: its candidates would be dropped, the outputs empty or poorer)."""
        ids = None if retriever is None or isinstance(retriever, str) else getattr(retriever, "entity_ids", None)
        if ids is None:
            return
        ids = list(ids)
        absent = [e for e in ids if e not in self.kb.position]
        if not absent:
            return
        kb_name = repr(os.fspath(kb)) if isinstance(kb, (str, os.PathLike)) else f"the {type(kb).__name__}"
        shown = ", ".join(map(repr, absent[:3])) + (", ..." if len(absent) > 3 else "")
        which = f"none of its {len(ids)} entities is" if len(absent) == len(ids) else \
            f"{len(absent)} of its {len(ids)} entities are not"
        raise ValueError(
            f"retriever {name!r} was built over another knowledge base: {which} in the KB {kb_name} of {len(self.kb)} "
            f"entities (e.g. {shown}); build the retriever index from the same KB (mel index --kb ...) or pass the "
            "KB it was built from"
        )

    def _calibrated_nil_threshold(self, kb: Any = None) -> float | None:
        """The threshold ``mel calibrate`` saved (``nil_calibration.json``) in the entity index folder given as
        ``kb``, else in the model folder; ``None`` (off) when neither has one."""
        folders = [os.fspath(kb)] if isinstance(kb, (str, os.PathLike)) and os.path.isdir(os.fspath(kb)) else []
        folders.append(str(getattr(self.model, "name_or_path", "") or ""))
        for folder in folders:
            path = os.path.join(folder, NIL_CALIBRATION_NAME)
            if not folder or not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    value = json.load(f).get("threshold")
            except (OSError, ValueError, AttributeError) as err:
                raise ValueError(f"{path} is not a readable NIL calibration ({err}); run `mel calibrate` again") from err
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value):
                # NaN would silently mean "never NIL"
                raise ValueError(f"{path} holds the threshold {value!r}, not a number; run `mel calibrate` again")
            return None if value is None else float(value)
        return None

    @staticmethod
    def _bf16_default(device: Any) -> bool:
        """bf16 autocast for the cross-encoder where this machine runs it fast (``modeling_mel.hardware``); fp32
        without the package."""
        try:
            from modeling_mel.hardware import bf16_is_fast
        except ImportError:  # remote code without the package
            return False
        return bf16_is_fast(getattr(device, "type", str(device)))

    @staticmethod
    def _default_processor(model: Any, trust_remote_code: bool | None) -> Any:
        name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
        if name and os.path.isdir(str(name)):
            from transformers import AutoProcessor

            try:
                return AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
            except Exception as err:  # noqa: BLE001 - fall through to a clear error
                logger.debug("AutoProcessor.from_pretrained(%s) failed: %s", name, err)
                try:
                    from modeling_mel.processing_multimodal_nsp import MultimodalNSPProcessor
                    from modeling_mel.processing_zemel import ZemelProcessor

                    cls = ZemelProcessor if linking_method(model) == "dense" else MultimodalNSPProcessor
                    return cls.from_pretrained(name)
                except ImportError:
                    pass
        raise ValueError(
            f"no processor for model {type(model).__name__} (name_or_path={name!r}); pass processor= "
            "(MultimodalNSPProcessor or ZemelProcessor), or save the processor in the model directory"
        )

    def _build_kb(self, kb: Any, index_batch_size: int) -> LinkingKB:
        if hasattr(kb, "entities") and hasattr(kb, "has_vectors") and not isinstance(kb, (str, os.PathLike)):
            # An EntityIndex object.
            if self.family == "dense" and getattr(kb, "has_vectors", False):
                kb.check_model(self.model)
                return LinkingKB(list(kb.entities), _cache_of(kb.vectors), kb, device=self.device)
            entities = list(kb.entities)
            vectors = None
        elif isinstance(kb, (str, os.PathLike)) and os.path.isfile(os.path.join(os.fspath(kb), INDEX_CONFIG_NAME)):
            entities, vectors, searcher, config = _load_index_dir(os.fspath(kb), self.model if self.family == "dense" else None)
            built_with = config.get("image_model")
            used = getattr(self.image_extractor, "model_key", None)
            if built_with and used and built_with != used:
                logger.warning(
                    "entity index %s was built with image model %s but this pipeline uses %s; entity vectors and "
                    "mention features come from different image encoders", kb, built_with, used,
                )
            if self.family == "dense" and vectors is not None:
                return LinkingKB(entities, vectors, searcher, device=self.device)
        else:
            entities = kb_records(kb)
            vectors = None
        if len(entities) == 0:
            raise ValueError(f"the knowledge base {kb!r:.80} is empty (0 entities); give a KB with at least one entity")
        if self.family == "dense":
            if len(entities) > 10000:
                logger.warning(
                    "encoding %d KB entities now; build an index once with `mel index` and pass its directory as kb",
                    len(entities),
                )
            extractor = self._extractor() if self.use_images and any(entity_images(e) for e in entities) else None
            vectors = encode_entities(
                self.model, self.processor, entities, batch_size=index_batch_size, image_extractor=extractor,
                max_length=trained_lengths(self.model)[1], progress=len(entities) > 1000, bf16=self.bf16,
            ).to(self.device)
        return LinkingKB(entities, vectors, device=self.device)

    def _recorded_image_encoder(self) -> dict | None:
        """The identity of the image encoder the model was trained with (the processor's ``image_encoder``)."""
        from .image_encoders import recorded_image_encoder

        return recorded_image_encoder(self.processor)

    def _check_image_extractor(self) -> None:
        """``ValueError`` (one line naming both) when a given ``image_extractor`` is not the recorded encoder."""
        recorded = self._recorded_image_encoder() if self.image_extractor is not None and self.use_images else None
        if recorded is not None:
            from .image_encoders import check_image_encoder

            name = getattr(self.model, "name_or_path", None) or type(self.model).__name__
            check_image_encoder(recorded, self.image_extractor, what=f"the model {name}",
                                fix="pass image_extractor=None to build the recorded encoder")

    def _extractor(self) -> Any:
        """The image feature extractor, built on first use: the encoder recorded in the processor (its identity,
        checked), else ResNet-50 (models saved before encoders were recorded); ``ValueError`` when it cannot be built
        or cannot serve the model."""
        expected = int(getattr(self.model.config, "image_feature_dim", getattr(self.model.config, "v_feature_dim", 2048)))
        if self.image_extractor is None:
            recorded = self._recorded_image_encoder()
            if recorded is None and expected != 2048:
                raise ValueError(
                    f"the model expects {expected}-d image features but the default extractor (ResNet-50) gives 2048-d; "
                    "pass image_extractor= (e.g. ImageFeatureExtractor(config=tiny_resnet_config("
                    f"{expected}))) or use_images=False"
                )
            from .image_features import extractor_for

            size = None if recorded else self._image_setting("image_size") or getattr(self.model.config, "image_size", None)
            name = getattr(self.model, "name_or_path", None) or type(self.model).__name__
            self.image_extractor = extractor_for(
                recorded, None, what=f"the model {name}", image_size=int(size or 224) if not recorded else None,
                strict=self.strict_images, device=self.device, max_image_pixels=self.max_image_pixels,
            )
        dim = int(getattr(self.image_extractor, "feature_dim", expected))
        if dim != expected:
            raise ValueError(
                f"image_extractor gives {dim}-d features but the model expects {expected}-d; pass a matching extractor"
            )
        return self.image_extractor

    # -- input checking ------------------------------------------------------------------------------------------
    _check_input = staticmethod(check_linking_input)  # one input dict, checked and completed (pipeline_inputs)

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """Link one input dict (returns a list of dicts) or a list of inputs (returns a list of lists)."""
        if isinstance(inputs, (list, tuple)):
            for i, item in enumerate(inputs):
                self._check_input(item, i)
            if len(inputs) == 0:
                return []
            inputs = list(inputs)
        elif isinstance(inputs, (str, Mapping)):
            self._check_input(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def _sanitize_parameters(self, **params: Any) -> tuple[dict, dict, dict]:
        return call_parameters(**params)  # top_k, candidates, num_candidates, ... (pipeline_inputs)

    # -- images --------------------------------------------------------------------------------------------------
    def _open_image(self, image: Any, where: str) -> Any:
        """A PIL image, or ``None`` for no / unreadable image (``ValueError`` in strict mode): the package's one image
        opener (:func:`modeling_mel.image_features.open_image`: a missing file, a directory, a corrupt file and an image
        over ``max_image_pixels`` (from its header, before decoding) are errors naming the file)."""
        if image is None or not self.use_images:
            return None
        from .image_features import open_image

        try:
            if not isinstance(image, (str, os.PathLike)) and not hasattr(image, "convert"):
                raise TypeError(f"unsupported image value of type {type(image).__name__}")
            return open_image(image, self.max_image_pixels)
        except Exception as err:  # noqa: BLE001 - ImageReadError, or PIL's many types for a lazily decoded image
            msg = f"{where}: unreadable image {image!r:.120} ({err})"
            if self.strict_images:
                raise ValueError(msg + "; fix the file or build the pipeline with strict_images=False") from err
            logger.warning("%s; linking without it", msg)
            return None

    def _mention_features(self, pil: Any, boxes: list | None) -> dict | None:
        """Mention image features: ``{"feature": (D,), "regions": (R, D), "spatial": (R, 5)}`` or ``None``."""
        if pil is None:
            return None
        from .regions import box_spatial, make_regions  # the one region builder (whole image, then boxes)

        extractor = self._extractor()
        if getattr(self.processor, "image_regions", "boxes") == "patches":  # whole image, then the patch tokens
            from .regions import patch_regions

            whole, patches = extractor.encode_patches([pil])
            feature = torch.as_tensor(whole[0], dtype=torch.float32)
            regions = patch_regions(feature, patches[0])
            return {"feature": feature, "regions": regions["features"], "spatial": regions["spatial"]}
        feature = torch.as_tensor(extractor.encode([pil])[0], dtype=torch.float32)
        box_feats = None
        if boxes:
            box_spatial(boxes, *pil.size)  # ValueError naming a box outside the image, before any crop is encoded
            crops = [pil.crop(tuple(int(round(v)) for v in b)) for b in boxes]
            box_feats = torch.as_tensor(extractor.encode(crops), dtype=torch.float32)
        regions = make_regions(feature, box_feats, boxes or None, pil.size)
        return {"feature": feature, "regions": regions["features"], "spatial": regions["spatial"]}

    def _image_setting(self, name: str) -> Any:
        """A PFMEL image setting of training: the processor's (``image_features``, ``feature_norm``,
        ``feature_mean``, ``image_size``), else the model config's ``pfmel_<name>`` (models saved before the
        settings moved to the processor)."""
        value = getattr(self.processor, name, None)
        return value if value is not None else getattr(self.model.config, f"pfmel_{name}", None)

    def _pfmel_normalize(self, feature: torch.Tensor | None) -> torch.Tensor | None:
        """The image normalisation a PFMEL model was trained with (the processor's, as ``FeatureTable`` applies it)."""
        if feature is None:
            return None
        norm = self._image_setting("feature_norm") or "none"
        mean = self._image_setting("feature_mean")
        center = mean if norm == "center_l2" and mean is not None else None
        from .processing_multimodal_nsp import normalize_image_features

        out = normalize_image_features(feature.detach().cpu().numpy(), center, norm != "none")
        return torch.from_numpy(out[0]).to(feature.dtype)

    def _entity_feature(self, position: int) -> torch.Tensor | None:
        """PFMEL's entity image: the mean feature of the entity's readable images (cached); ``None`` without images."""
        if not self.use_images:
            return None
        if position not in self._entity_feature_cache:
            entity = self.kb.entities[position]
            images = self.processor.entity_images(entity)  # timeline first, as training (PFMELCorpus)
            try:
                feats = _image_features_of(self._extractor(), images, None) if images else None
            except ValueError as err:  # strict extractor: name the entity as well as the file
                raise ValueError(f"image of entity {entity.get('entity_id')!r}: {err}") from err
            self._entity_feature_cache[position] = feats.mean(0) if feats is not None else None
        return self._entity_feature_cache[position]

    # -- pipeline steps ------------------------------------------------------------------------------------------
    def preprocess(self, inputs: Any) -> dict:
        example = self._check_input(inputs)
        pil = self._open_image(example.pop("image"), f"image of mention {example['mention']!r}")
        example["image_features"] = self._mention_features(pil, example.pop("boxes", None))
        return {"example": example}

    def _forward(
        self,
        model_inputs: dict,
        candidates: str = "auto",
        num_candidates: int | None = None,
        pair_batch_size: int = 64,
        max_length: int | None = None,
        retriever_k: int | None = None,
        top_k: int = DEFAULT_TOP_K,
    ) -> dict:
        if num_candidates is None:  # PFMEL: as many name-rule candidates as it was trained and evaluated with
            cap = getattr(self.model.config, "max_candidates", None) if self.family == "cross" else None
            num_candidates = int(cap) if cap else 100
        batch = model_inputs["example"]
        single = isinstance(batch, Mapping)
        examples = [batch] if single else list(batch)
        if self.family == "dense":
            ranked = self._forward_dense(examples, candidates, num_candidates, max_length)
        else:
            ranked = self._forward_cross(examples, num_candidates, pair_batch_size, max_length, retriever_k, top_k)
        # each ranking travels opaque: transformers' Pipeline.forward walks lists and tuples of its outputs element by
        # element looking for tensors (a third of a batch's time for 32 mentions x 200 candidates)
        rows = [_Ranking(r) for r in ranked]
        return {"ranked": rows[0] if single else rows}

    def postprocess(self, model_outputs: dict, top_k: int = DEFAULT_TOP_K, nil_threshold: float | None = None) -> list[dict]:
        ranked = model_outputs["ranked"]
        ranked = ranked.pairs if isinstance(ranked, _Ranking) else ranked
        out = []
        if nil_threshold is not None and (not ranked or ranked[0][1] < nil_threshold):
            # "not in the KB": the best candidate scores below the (calibrated) threshold, or there is none
            out.append({"entity_id": None, "name": None, "score": float(ranked[0][1]) if ranked else None, "nil": True})
        for position, score in ranked[:top_k]:
            entity = self.kb.entities[position]
            out.append({"entity_id": entity["entity_id"], "name": entity["name"], "score": float(score)})
        return out

    # -- PFMEL ---------------------------------------------------------------------------------------------------
    def _cross_linker(self, pair_batch_size: int, max_length: int | None) -> CrossLinker:
        """The cross linker of this pipeline (made once: it caches the entity sides' token ids); the call's
        ``pair_batch_size`` and ``max_length`` apply."""
        linker = self.__dict__.get("_cross")
        if linker is None:
            if not hasattr(self.processor, "mention_side"):
                raise ValueError(f"processor {type(self.processor).__name__} is not a MultimodalNSPProcessor (no PFMEL "
                                 "templates: mention_side / entity_side)")
            linker = CrossLinker(self.model, self.processor, device=self.device, bf16=self.bf16)
            self.__dict__["_cross"] = linker
        if int(pair_batch_size) < 1:
            raise ValueError(f"pair_batch_size must be >= 1, got {pair_batch_size!r}")
        linker.pair_batch_size = int(pair_batch_size)
        linker.max_length = int(max_length) if max_length else None
        return linker

    def _entity_side(self, position: int) -> str:
        # the training data's sentence B (PFMELCorpus.entity_text calls the same template)
        return self.processor.entity_side(self.kb.entities[position])

    def _cross_candidates(
        self, examples: list[dict], num_candidates: int, retriever_k: int | None = None
    ) -> tuple[list[list[int]], list[dict[int, float]] | None]:
        """Candidate positions of each example and, with a scoring retriever, their first-stage scores (dense top
        ``retriever_k``: the call's value, else the reranker's ``config.retriever_k``, else ``num_candidates``)."""
        cands = [self.kb.name_rule(ex["mention"], num_candidates) for ex in examples]
        if self.retriever is None:
            return cands, None
        if isinstance(self.retriever, str):  # "bm25"
            extra = [self.kb.bm25(ex["mention"], num_candidates) for ex in examples]
            return [list(dict.fromkeys(a + b)) for a, b in zip(cands, extra)], None
        texts = [ex["text"] for ex in examples]
        spans = [{"mention": ex["mention"], "mention_start": ex["mention_start"], "mention_end": ex["mention_end"]} for ex in examples]
        k = int(retriever_k or getattr(self.model.config, "retriever_k", 0) or num_candidates)
        if hasattr(self.retriever, "retrieve_scored"):
            # the k closest names (as in training: PFMELCorpus.closest_names) beside the dense top k
            names = [[self.kb.entities[p]["entity_id"] for p in row[:k]] for row in cands]
            scored = self.retriever.retrieve_scored(texts, spans, k, extra=names)
            rows = [[(self.kb.position[e], s) for e, s in row if e in self.kb.position] for row in scored]
            return [[p for p, _ in row] for row in rows], [dict(row) for row in rows]
        ids = self.retriever.retrieve(texts, spans, k)
        extra = [[self.kb.position[e] for e in row if e in self.kb.position] for row in ids]
        return [list(dict.fromkeys(a + b)) for a, b in zip(cands, extra)], None

    def _forward_cross(
        self, examples: list[dict], num_candidates: int, pair_batch_size: int, max_length: int | None,
        retriever_k: int | None = None, top_k: int | None = None,
    ) -> list:
        linker = self._cross_linker(pair_batch_size, max_length)
        cands, first_stage = self._cross_candidates(examples, num_candidates, retriever_k)
        mention_sides = [self.processor.mention_side(ex["text"], ex["mention"]) for ex in examples]
        # image features normalised once per mention and per entity (not once per pair)
        mention_images = [None if ex["image_features"] is None else self._pfmel_normalize(ex["image_features"]["feature"])
                          for ex in examples]
        mention_images = [None if x is None else x.numpy() for x in mention_images]

        def entity_image(position: int) -> Any:
            feature = self._pfmel_normalize(self._entity_feature(position))
            return None if feature is None else feature.numpy()

        def score_pairs(pairs: list[tuple[int, int]]) -> torch.Tensor:
            features = linker.pair_features(mention_sides, pairs, self._entity_side, mention_images,
                                            entity_image if self.use_images else None)
            return linker.score_features(features)

        # the top_k asked for, exactly: pairs that cannot reach it are not scored (CrossLinker.link)
        return linker.link(cands, score_pairs, first_stage, top_k)

    # -- ZEMEL ---------------------------------------------------------------------------------------------------
    def _dense_linker(self, max_length: int | None) -> DenseLinker:
        """The dense linker over this pipeline's KB cache (made once; the call's ``max_length`` applies)."""
        linker = self.__dict__.get("_linker")
        if linker is None:
            linker = DenseLinker(self.model, self.processor, self.kb.vectors, searcher=self.kb.searcher, device=self.device,
                                 bf16=self.bf16, exact_threshold=self.exact_threshold)
            self.__dict__["_linker"] = linker
        linker.max_length = int(max_length) if max_length else None
        return linker

    def _forward_dense(self, examples: list[dict], mode: str, k: int, max_length: int | None) -> list:
        if mode == "auto":
            import importlib.util

            mode = "all" if importlib.util.find_spec("bm25s") is not None else "dense"  # BM25 needs bm25s
        regions = None
        feature_dim = int(getattr(self.processor, "feature_dim", 0))
        if any(ex["image_features"] is not None for ex in examples):
            # padded on the CPU by the processor (the Pipeline moved the preprocessed features to self.device); the
            # padded batch goes to the device in the linker
            regions = [
                None if ex["image_features"] is None
                else {"features": ex["image_features"]["regions"].cpu(), "spatial": ex["image_features"]["spatial"].cpu()}
                for ex in examples
            ]
            if feature_dim and regions[0] is not None and regions[0]["features"].shape[1] != feature_dim:
                raise ValueError(f"image features are {regions[0]['features'].shape[1]}-d, the processor expects {feature_dim}")
        spans = [
            (ex["mention_start"], ex["mention_end"]) if ex["mention_start"] is not None else ex["mention"] for ex in examples
        ]
        linker = self._dense_linker(max_length)
        context = linker.encode([ex["text"] for ex in examples], spans, regions)
        extra: list[list[int]] = [[] for _ in examples]
        if mode in ("bm25", "all"):
            extra = [row + self.kb.bm25(ex["mention"], k) for row, ex in zip(extra, examples)]
        if mode == "rule":
            extra = [row + self.kb.name_rule(ex["mention"], k) for row, ex in zip(extra, examples)]
        if mode in ("dense", "all"):
            return linker.link_context(context, k, extra)
        return linker.rank(context, [list(dict.fromkeys(row)) for row in extra])


def register_pipeline() -> None:
    """Register ``"multimodal-entity-linking"`` with transformers' ``PIPELINE_REGISTRY`` (idempotent)."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    current = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if isinstance(current, _TaskEntry) and current.get("impl") is MultimodalEntityLinkingPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=MultimodalEntityLinkingPipeline, pt_model=AutoModel, type="multimodal"
    )
    entry = _TaskEntry(PIPELINE_REGISTRY.supported_tasks[TASK])
    PIPELINE_REGISTRY.supported_tasks[TASK] = entry
    MultimodalEntityLinkingPipeline._registered_impl = {TASK: entry}


class _TaskEntry(dict):
    """The registry entry of the task: it has no default model, so ``pipeline(TASK)`` without ``model=`` gets a
    one-line ``ValueError`` saying to pass one (transformers would raise ``KeyError: 'default'``)."""

    def __missing__(self, key: str) -> Any:
        if key == "default":
            raise ValueError(
                f'pipeline("{TASK}") needs a model: pass model= (a saved BertForMultimodalNSP or ZemelPolyEncoder '
                f'folder or hub id, or a loaded model), e.g. pipeline("{TASK}", model="path/to/model", kb=...); '
                "there is no default model for this task"
            )
        raise KeyError(key)


__all__ = [
    "MultimodalEntityLinkingPipeline",
    "LinkingKB",
    "register_pipeline",
    "encode_entities",
    "kb_records",
    "normalize_entity",
    "model_fingerprint",
    "model_config_hash",
    "check_index_compatible",
    "TASK",
]
