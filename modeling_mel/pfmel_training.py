"""PFMEL training runs: loading the corpus and the model, training on NSP pairs, and the run functions.

The ``run_*`` functions hold the logic of :mod:`modeling_mel.scripts.pretrain_nsp`, :mod:`modeling_mel.scripts.finetune_linking` and
:mod:`modeling_mel.scripts.evaluate_linking` (the scripts are thin numbered-step wrappers over them), so the demo, the
ablations and ``mel`` subcommands share one implementation.

Their pieces live in their own modules and are importable from here too: the arguments
(:mod:`modeling_mel.pfmel_arguments`), the per-task loss ``Trainer`` (:mod:`modeling_mel.pfmel_trainer`), linking
prediction and evaluation (:mod:`modeling_mel.pfmel_evaluation`) and the listwise reranker training
(:mod:`modeling_mel.pfmel_listwise`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
from transformers import TrainingArguments

from .entity_index import load_retriever  # noqa: F401 - re-exported (it lived here before)
from .pfmel_arguments import (  # noqa: F401 - re-exported (they lived here before)
    DATASETS,
    SPLITS,
    PFMELDataArguments,
    PFMELFinetuningArguments,
    PFMELModelArguments,
    PFMELPretrainingArguments,
    PFMELTrainingArguments,
)
from .pfmel_data import ListDataset, PFMELCollator, PFMELCorpus, encode_pairs
from .pfmel_evaluation import (  # noqa: F401 - re-exported (they lived here before)
    LinkingPrediction,
    evaluate_splits,
    linking_metrics,
    name_match_baseline,
    predict_linking,
)
from .pfmel_listwise import (  # noqa: F401 - re-exported (they lived here before)
    ListwiseCollator,
    ListwiseNSPTrainer,
    calibrate_retriever_weight,
    length_sorted_logits,
    listwise_groups,
    listwise_loss,
)
from .pfmel_pretraining_pairs import check_tasks, make_pretraining_pairs
from .pfmel_trainer import PFMELTrainer
from .run_outputs import (  # noqa: F401 - re-exported: modeling_mel.scripts import them from here
    RESUME_LAST,
    SafeOutputTrainingArguments,
    check_checkpoint,
    check_output_dir_args,
    prepare_output_dir,
    resolve_resume_checkpoint,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks of the scripts
# ---------------------------------------------------------------------------------------------------------------------
def default_image_cache_dir() -> str:
    """``$HF_HOME/modeling_mel/image_features`` (HF_HOME defaults to ``~/.cache/huggingface``)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "modeling_mel", "image_features")


def load_corpus(data_args: PFMELDataArguments, extractor=None, model_dir: str | None = None) -> PFMELCorpus:
    """Load the corpus of ``data_args`` with its image feature source (``model_dir``: the saved model whose recorded
    image encoder is the default)."""
    if not data_args.data_dir:
        raise ValueError("--data_dir is required: the folder with the corpus files")
    if data_args.image_features == "resnet50" and extractor is None and getattr(data_args, "features", None):
        # extract once: the cache made by mel features, checked against the encoder recorded in model_dir
        from .feature_cache import open_features
        from .image_encoders import read_recorded_image_encoder

        extractor = open_features(data_args.features, image_model=data_args.image_model,
                                  recorded=read_recorded_image_encoder(model_dir), what=f"the model {model_dir}")
    if data_args.image_features == "resnet50" and extractor is None:
        # the image encoder recorded in model_dir (an --init_from or evaluated model) unless --image_model (checked
        # against it), else --image_model / microsoft/resnet-50 (image_features.extractor_for)
        from .image_encoders import read_recorded_image_encoder
        from .image_features import extractor_for

        extractor = extractor_for(
            read_recorded_image_encoder(model_dir), data_args.image_model, what=f"the model {model_dir}",
            image_size=data_args.image_size, feature=data_args.image_feature,
            cache_dir=data_args.image_cache_dir or default_image_cache_dir(),
        )
    return PFMELCorpus.load(
        data_args.dataset,
        data_args.data_dir,
        cache_dir=data_args.dataset_cache_dir,
        image_features=data_args.image_features,
        extractor=extractor,
        features_path=data_args.features_path,
        max_candidates=data_args.max_candidates,
        feature_norm=data_args.feature_norm,
    )


def load_model_and_processor(model_args: PFMELModelArguments, feature_dim: int = 2048, seed: int = 0):
    """The model and processor: from ``init_from`` (a saved PFMEL dir) or a fresh NSP head on ``backbone``.

    Raises ``ValueError`` when ``backbone`` and ``init_from`` disagree on the hidden size, or when the image
    features are not ``config.image_feature_dim``-d (the loaded image projection could not take them).
    """
    from transformers import set_seed

    from .backbones import load_backbone_config, resolve_backbone
    from .modeling_multimodal_nsp import BertForMultimodalNSP
    from .processing_multimodal_nsp import MultimodalNSPProcessor

    set_seed(seed)
    if model_args.init_from:
        model = BertForMultimodalNSP.from_pretrained(model_args.init_from)
        if model_args.backbone:
            hidden = load_backbone_config(model_args.backbone).hidden_size
            if hidden != model.config.hidden_size:
                raise ValueError(
                    f"--backbone {model_args.backbone!r} has hidden size {hidden} but --init_from "
                    f"{model_args.init_from!r} (its image projection and encoder) has {model.config.hidden_size}; "
                    "drop --backbone or pre-train on the same backbone"
                )
        try:
            processor = MultimodalNSPProcessor.from_pretrained(model_args.init_from)
        except (OSError, ValueError, TypeError):
            processor = MultimodalNSPProcessor.from_backbone(model_args.backbone, image_feature_dim=model.config.image_feature_dim)
        processor.max_length = model_args.max_length
    else:
        model, info = BertForMultimodalNSP.from_pretrained(
            resolve_backbone(model_args.backbone), image_feature_dim=feature_dim, output_loading_info=True
        )
        model.config.nsp_head_pretrained = not any(k.startswith("cls.seq_relationship") for k in info["missing_keys"])
        processor = MultimodalNSPProcessor.from_backbone(
            model_args.backbone, max_length=model_args.max_length, image_feature_dim=feature_dim
        )
    if model.config.image_feature_dim != feature_dim:
        raise ValueError(
            f"the image features are {feature_dim}-d but the model's image projection takes "
            f"{model.config.image_feature_dim}-d features; use the image model the model was trained with"
        )
    processor.configure_model(model)
    warn_if_nsp_head_random(model, model_args.init_from or model_args.backbone)
    return model, processor


def saved_max_length(model_dir: str) -> int | None:
    """The pair length of a saved model's processor (``processor_config.json``'s ``max_length``), if recorded."""
    try:
        with open(os.path.join(model_dir, "processor_config.json"), encoding="utf-8") as f:
            value = json.load(f).get("max_length")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def warn_if_nsp_head_random(model, source: str | None) -> None:
    """Log a warning when the model's NSP head did not come from a pre-trained NSP head (``nsp_head_pretrained``
    False): PFMEL and NSP-BERT then learn next-sentence prediction from scratch instead of mining it."""
    if getattr(model.config, "nsp_head_pretrained", None) is False:
        logger.warning(
            "%s has no pre-trained next-sentence-prediction head (cls.seq_relationship): the NSP head starts from "
            "random weights, so this PFMEL / NSP-BERT does not mine BERT's pre-trained NSP head as the paper does; "
            "use --backbone bert-base-uncased (the paper's backbone) for that", source or "the backbone")


def _image_setting(processor, model, name: str):
    """A trained image setting: the processor's (``feature_norm`` ...), else the model config's ``pfmel_<name>``
    (where models saved before the settings moved to the processor kept it)."""
    value = getattr(processor, name, None)
    return value if value is not None else getattr(model.config, f"pfmel_{name}", None)


def _mark_image_mode(model, processor, corpus: PFMELCorpus) -> None:
    """Record in the processor (saved with the model) the image settings of training: whether the model takes image
    tokens, the feature normalisation and its centre, the image encoder's identity (``image_encoder``) and input side;
    refuse a mismatch with earlier runs."""
    previous = _image_setting(processor, model, "image_features")
    if previous is not None and (previous == "none") != (not corpus.use_images):
        raise ValueError(
            f"the model was trained with --image_features {previous!r} but this run uses {corpus.image_mode!r}; "
            "pass the same --image_features (text-only models need 'none')"
        )
    processor.image_features = corpus.image_mode
    norm = _image_setting(processor, model, "feature_norm")
    if corpus.use_images and norm is not None and norm != corpus.feature_norm:
        raise ValueError(
            f"the model was trained with --feature_norm {norm!r} but this run uses {corpus.feature_norm!r}; pass --feature_norm {norm}"
        )
    if corpus.use_images and corpus.feature_norm == "center_l2":
        mean = _image_setting(processor, model, "feature_mean")
        if mean is None:  # a new model: the corpus's centre, or the mean of the (training) images loaded so far
            centre = corpus.table.center if corpus.table.center is not None else corpus.table.nonzero_mean()
            mean = [round(float(v), 6) for v in centre]
        if len(mean) != corpus.table.dim:
            raise ValueError(f"the recorded feature_mean has {len(mean)} values; the image features are {corpus.table.dim}-d")
        corpus.table.center = np.asarray(mean, np.float32)
        processor.feature_mean = [float(v) for v in mean]
    processor.feature_norm = corpus.feature_norm
    # the extractor of the features (none for precomputed features: the property would build the default encoder)
    extractor = getattr(corpus, "extractor", None) if corpus.use_images and corpus.image_mode == "resnet50" else None
    if extractor is not None and hasattr(extractor, "image_size"):
        # what the inference pipeline needs to rebuild the same image features
        processor.image_size = int(extractor.image_size)
    identity = getattr(extractor, "identity", None) if extractor is not None else None
    if isinstance(identity, dict):
        # the image encoder is part of the model: an --init_from model trained with another one is refused, and the
        # identity goes into processor_config.json (image_encoder), which mel index / link / serve and the pipeline
        # read to build the same encoder
        from .image_encoders import check_image_encoder, recorded_image_encoder

        check_image_encoder(recorded_image_encoder(processor), extractor, what="the model (--init_from)",
                            fix="drop --image_model to use the recorded encoder, or start from a model trained with "
                                "this one")
        processor.image_encoder = identity


def train_pairs(
    model, processor, features: list[dict], table, args: TrainingArguments, resume_from_checkpoint=None, callbacks=None,
    listwise: bool = False,
) -> PFMELTrainer:
    """Train ``model`` on encoded NSP features with :class:`PFMELTrainer` (``listwise``: on list items of
    :func:`listwise_groups` with :class:`ListwiseNSPTrainer`); returns the trainer."""
    if not features:
        raise ValueError("no training pairs; check the split and --max_train_samples")
    # "last" -> the newest checkpoint-* of output_dir; a missing folder or a corrupt checkpoint is a one-line ValueError
    resume_from_checkpoint = resolve_resume_checkpoint(args.output_dir, resume_from_checkpoint)
    trainer = (ListwiseNSPTrainer if listwise else PFMELTrainer)(
        model=model,
        args=args,
        train_dataset=ListDataset(features),
        data_collator=ListwiseCollator(processor, table) if listwise else PFMELCollator(processor, table),
        processing_class=processor,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
    return trainer


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------------
def run_pretraining(
    data_args: PFMELDataArguments,
    model_args: PFMELModelArguments,
    args: PFMELPretrainingArguments,
    corpus: PFMELCorpus | None = None,
    callbacks=None,
) -> dict:
    """PFMEL pre-training: NSP pairs of the chosen tasks from ``args.pretrain_split``; saves model + processor."""
    tasks = check_tasks(args.tasks)
    corpus = corpus or load_corpus(data_args, model_dir=model_args.init_from)
    if not corpus.use_images and set(tasks) - {"text"}:
        raise ValueError(f"pre-training tasks {list(tasks)} need images; with --image_features none use --tasks text")
    sentences = corpus.sentences(args.pretrain_split, data_args.max_train_samples)
    model, processor = load_model_and_processor(model_args, corpus.table.dim, seed=args.seed)
    _mark_image_mode(model, processor, corpus)
    pairs = make_pretraining_pairs(
        sentences, tasks, swap_roles=args.swap_roles, seed=args.seed if args.pair_seed is None else args.pair_seed,
        negative_draw=args.negative_draw,
    )
    features = encode_pairs(processor, pairs, use_images=corpus.use_images)
    counts = {t: sum(p.task == t for p in pairs) for t in tasks}
    logger.info("pre-training on %d pairs from %d sentences: %s", len(pairs), len(sentences), counts)
    trainer = train_pairs(model, processor, features, corpus.table, args, args.resume_from_checkpoint, callbacks)
    trainer.save_model(args.output_dir)
    summary = {
        "pairs": len(pairs),
        "negative_draw": args.negative_draw,
        "pairs_per_task": counts,
        "sentences": len(sentences),
        "global_step": trainer.state.global_step,
        "train_loss": next((h["train_loss"] for h in trainer.state.log_history if "train_loss" in h), None),
    }
    if trainer.is_world_process_zero():
        _write_json(os.path.join(args.output_dir, "pretrain_results.json"), summary)
    return summary


def run_finetuning(
    data_args: PFMELDataArguments,
    model_args: PFMELModelArguments,
    args: PFMELFinetuningArguments,
    corpus: PFMELCorpus | None = None,
    callbacks=None,
) -> dict:
    """NSP fine-tuning for linking on ``args.train_split``, then evaluation of ``args.eval_splits``.

    Saves model + processor to ``args.output_dir`` and writes ``eval_results.json``
    (``{split: {accuracy, candidate_recall, mrr, n, n_unusable, n_no_candidates, n_gold_not_in_kb}}``).
    """
    corpus = corpus or load_corpus(data_args, model_dir=model_args.init_from)
    for s in args.eval_splits:  # fail before training on a missing eval split
        corpus.split(s)
    retriever = load_retriever(args.retriever, args.retriever_model) if args.retriever else None
    n_cal = int(args.calibration_mentions) if retriever is not None else 0
    calibration = None
    if n_cal:
        # The calibration mentions are the LAST n_cal of the split whatever --max_train_samples is, so that a
        # retriever trained on the first (total - n_cal) mentions never saw them either (its scores on its own
        # training mentions are over-confident and would choose too large a weight).
        total = corpus.split_size(args.train_split)
        if total <= n_cal:
            raise ValueError(f"--calibration_mentions {n_cal} leaves no training mention of {total}")
        n_train = total - n_cal if data_args.max_train_samples is None else min(int(data_args.max_train_samples), total - n_cal)
        calibration = corpus.linking_data(args.train_split, retriever=retriever, retriever_k=args.retriever_k,
                                          rows=range(total - n_cal, total))
        data = corpus.linking_data(args.train_split, retriever=retriever, retriever_k=args.retriever_k, rows=range(n_train))
    else:
        data = corpus.linking_data(args.train_split, data_args.max_train_samples, retriever=retriever,
                                   retriever_k=args.retriever_k)
    model, processor = load_model_and_processor(model_args, corpus.table.dim, seed=args.seed)
    _mark_image_mode(model, processor, corpus)
    listwise = args.loss == "listwise"
    if listwise:
        features = listwise_groups(data, args.list_size, processor, use_images=corpus.use_images)
        n_pairs = sum(len(f["features"]) for f in features)
    else:
        pairs = data.training_pairs(args.num_negatives, seed=args.seed)
        features = encode_pairs(processor, pairs, use_images=corpus.use_images)
        n_pairs = len(pairs)
    logger.info(
        "fine-tuning (%s loss) on %d pairs from %d mentions (candidate recall %.3f, %.3f before the cap)", args.loss,
        n_pairs, len(data.mentions), data.candidate_recall(), data.candidate_recall(before_cap=True),
    )
    trainer = train_pairs(model, processor, features, corpus.table, args, args.resume_from_checkpoint, callbacks, listwise)
    trained = trainer.model if not hasattr(trainer.model, "module") else trainer.model.module
    train_summary: dict[str, Any] = {"pairs": n_pairs, "mentions": len(data.mentions), "global_step": trainer.state.global_step,
                                     "loss": args.loss, "candidate_recall": round(data.candidate_recall(), 4),
                                     "candidate_recall_before_cap": round(data.candidate_recall(before_cap=True), 4)}
    if calibration is not None:
        weight, table = calibrate_retriever_weight(trained, processor, calibration, batch_size=args.per_device_eval_batch_size,
                                                   bf16=args.bf16_eval)
        trained.config.retriever_score_weight = weight
        trained.config.retriever_k = int(args.retriever_k)
        train_summary.update(retriever_score_weight=weight, calibration_accuracy=table, calibration_mentions=n_cal,
                             calibration_ids=[m.mention_id for m in calibration.mentions])
        logger.info("retriever score weight %s (held-out accuracy by weight: %s)", weight, table)
    trained.config.max_candidates = int(data_args.max_candidates)  # the pipeline scores as many name-rule candidates
    trained.config.training_dataset = data_args.dataset  # the model card names the corpus
    trainer.save_model(args.output_dir)
    results, _ = evaluate_splits(
        trained, processor, corpus, args.eval_splits, args.per_device_eval_batch_size, args.bf16_eval,
        data_args.max_eval_samples, retriever=retriever, retriever_k=args.retriever_k,
    )
    results["train"] = train_summary
    if trainer.is_world_process_zero():
        _write_json(os.path.join(args.output_dir, "eval_results.json"), results)
    return results


def run_evaluation(
    model_dir: str,
    data_args: PFMELDataArguments,
    splits: Sequence[str] = ("test",),
    batch_size: int = 64,
    bf16: bool = False,
    output_file: str | None = None,
    corpus: PFMELCorpus | None = None,
    predictions_file: str | None = None,
    nil_threshold: str | float | None = "calibrated",
    nil_fraction: float | None = None,
    nil_seed: int | None = None,
    retriever: str | None = None,
    retriever_model: str | None = None,
    retriever_k: int | None = None,
) -> dict:
    """Evaluate a saved model on ``splits``; writes ``output_file`` (default ``<model_dir>/eval_results.json``).

    Each split also gets the NIL metrics of :func:`modeling_mel.nil.nil_evaluation` (``nil_*`` entries) at
    ``nil_threshold`` (default: the model's calibrated threshold, off without one). With ``retriever`` (an entity
    index folder) the two-stage linker is evaluated: the index's dense top ``retriever_k`` (default: the model's
    ``config.retriever_k``) and the closest names, reranked with the fused score."""
    from .nil import nil_evaluation, nil_settings

    threshold, fraction, seed = nil_settings(model_dir, nil_threshold, nil_fraction, nil_seed)
    corpus = corpus or load_corpus(data_args, model_dir=model_dir)
    for s in splits:
        corpus.split(s)
    # the pair length the model was fine-tuned and is linked with (its saved processor's), not the paper's default
    model, processor = load_model_and_processor(
        PFMELModelArguments(init_from=model_dir, max_length=saved_max_length(model_dir) or 300), corpus.table.dim)
    _mark_image_mode(model, processor, corpus)
    index = load_retriever(retriever, retriever_model) if retriever else None
    if index is not None:
        index.bf16 = bool(bf16)  # the evaluation's precision for both stages
    k = int(retriever_k or getattr(model.config, "retriever_k", 0) or 10)
    results, predictions = evaluate_splits(model, processor, corpus, splits, batch_size, bf16, data_args.max_eval_samples,
                                           retriever=index, retriever_k=k)
    kb_ids = [str(row["entity_id"]) for row in corpus.kb]
    for split, preds in predictions.items():
        results[split].update(nil_evaluation([p.ranked for p in preds], [p.gold for p in preds], kb_ids, threshold,
                                             fraction, seed))
    _write_json(output_file or os.path.join(model_dir, "eval_results.json"), results)
    if predictions_file:
        rows = [
            {"split": s, **asdict(p)} for s, preds in predictions.items() for p in preds
        ]
        with open(predictions_file, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return results


__all__ = [
    "PFMELTrainer",
    "LinkingPrediction",
    "predict_linking",
    "linking_metrics",
    "name_match_baseline",
    "PFMELDataArguments",
    "PFMELModelArguments",
    "PFMELPretrainingArguments",
    "PFMELFinetuningArguments",
    "load_corpus",
    "load_model_and_processor",
    "train_pairs",
    "evaluate_splits",
    "run_pretraining",
    "run_finetuning",
    "run_evaluation",
    "listwise_groups",
    "ListwiseCollator",
    "listwise_loss",
    "length_sorted_logits",
    "ListwiseNSPTrainer",
    "calibrate_retriever_weight",
    "load_retriever",
]
