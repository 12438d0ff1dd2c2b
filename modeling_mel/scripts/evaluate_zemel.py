"""Evaluate a saved ZEMEL model: precision / R@1 / micro-F1 at 5 and 100 candidates, V&T-KG and V-T-KG, the field's
protocol (H@1, H@3, H@5, H@10, H@20, MR, MRR of each mention ranked against the whole evaluation KB, every gold mention
counted: ``modeling_mel.metrics.ranking_metrics``), and the NIL metrics (``nil_*``) under the protocol of
``modeling_mel.nil`` at the model's calibrated threshold.

    python -m modeling_mel.scripts.evaluate_zemel --model_path O --dataset zemeld --data_dir D [--eval_splits dev,test]

Candidates come from BM25 + rules over each split's KB (the gold is not inserted); each KB is encoded once into a
candidate cache. Image features default to the settings recorded in the model's config at training time.
Writes ``<output_dir or model_path>/eval_results.json``. Definitions: ``modeling_mel.zemel_evaluation``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, set_seed

from modeling_mel.nil import NIL_THRESHOLD_HELP, nil_settings
from modeling_mel.zemel_evaluation import (
    EVAL_KB_HELP,
    EVAL_KB_MODES,
    IMAGE_FEATURE_MODES,
    ZEMEL_DATASETS,
    RegionFeatures,
    build_image_extractor,
    evaluate_splits,
    load_zemel_data,
)

logger = logging.getLogger("evaluate_zemel")


@dataclass
class ZemelEvalArguments:
    """What to evaluate and how."""

    model_path: str | None = field(default=None, metadata={"help": "saved ZEMEL model dir (with its processor)"})
    dataset: str = field(default="zemeld", metadata={"help": f"corpus: one of {list(ZEMEL_DATASETS)}"})
    data_dir: str | None = field(default=None, metadata={"help": "folder with the corpus in the raw layout of --dataset"})
    eval_splits: str = field(default="dev,test", metadata={"help": "comma-separated splits to evaluate"})
    eval_kb: str = field(
        default="unseen",
        metadata={"help": EVAL_KB_HELP},
    )
    eval_num_candidates: str = field(default="5,100", metadata={"help": "candidate counts N of the metrics at /N"})
    image_features: str | None = field(
        default=None, metadata={"help": f"one of {list(IMAGE_FEATURE_MODES)}; default: as recorded at training"}
    )
    image_model: str | None = field(default=None, metadata={
        "help": "image encoder (checkpoint or random:<arch>); default: the one recorded at training (processor "
                "config); another one is refused"})
    image_size: int | None = field(default=None, metadata={"help": "encoder input side; default: as recorded at training"})
    image_cache_dir: str | None = field(default=None, metadata={"help": "on-disk image feature cache"})
    features: str | None = field(default=None, metadata={
        "help": "feature cache made by mel features (refused when its encoder is not the model's)"})
    max_entity_images: int | None = field(default=None, metadata={"help": "most KB images per entity (default: as in training)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N mentions per split"})
    context_max_length: int | None = field(default=None, metadata={"help": "max tokens of a context (default: as in training)"})
    candidate_max_length: int | None = field(default=None, metadata={"help": "max tokens of a candidate (default: as in training)"})
    batch_size: int = field(default=64, metadata={"help": "contexts / entities per encoding batch"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (CPU or GPU)"})
    output_dir: str | None = field(default=None, metadata={"help": "where eval_results.json goes (default: --model_path)"})
    predictions_top_k: int = field(default=0, metadata={
        "help": "write predictions_<split>.jsonl beside eval_results.json: each mention's top N entities of the whole "
                "evaluation KB with their scores, the ranking `mel link --candidates dense` and pipeline() give (0: none)"})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "Arrow cache of the corpus builder"})
    seed: int = field(default=42, metadata={"help": "seed"})
    nil_threshold: str = field(default="calibrated", metadata={"help": NIL_THRESHOLD_HELP})
    nil_fraction: float | None = field(default=None, metadata={"help": "NIL protocol: share of gold entities removed "
                                                                        "(default: the calibration's, else 0.2)"})
    nil_seed: int | None = field(default=None, metadata={"help": "NIL protocol seed (default: the calibration's, else 0)"})

    def __post_init__(self) -> None:
        if not self.model_path or not os.path.isfile(os.path.join(self.model_path, "config.json")):
            raise ValueError(f"--model_path {self.model_path!r} is not a saved model directory (no config.json)")
        if self.dataset not in ZEMEL_DATASETS:
            raise ValueError(f"unknown --dataset {self.dataset!r}; choose one of {list(ZEMEL_DATASETS)}")
        if not self.data_dir or not os.path.isdir(self.data_dir):
            raise ValueError(f"--data_dir {self.data_dir!r} is not a directory")
        if self.eval_kb not in EVAL_KB_MODES:
            raise ValueError(f"unknown --eval_kb {self.eval_kb!r}; choose one of {list(EVAL_KB_MODES)}")
        if self.image_features is not None and self.image_features not in IMAGE_FEATURE_MODES:
            raise ValueError(f"unknown --image_features {self.image_features!r}; choose one of {list(IMAGE_FEATURE_MODES)}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size!r}")
        if self.predictions_top_k < 0:
            raise ValueError(f"--predictions_top_k must be >= 0, got {self.predictions_top_k!r}")
        try:
            self.ns = [int(n) for n in self.eval_num_candidates.split(",") if n.strip()]
        except ValueError:
            self.ns = []
        if not self.ns or min(self.ns) < 1:
            raise ValueError(f"--eval_num_candidates {self.eval_num_candidates!r} must be positive integers like '5,100'")
        self.split_list = [s.strip() for s in self.eval_splits.split(",") if s.strip()]
        if not self.split_list:
            raise ValueError("--eval_splits is empty")


def write_predictions(path: str, rows: list[dict], ranked: list[list[tuple[str, float]]]) -> None:
    """One JSON line per mention: its id, mention, gold and ranked ``predictions`` (``entity_id``, ``score``)."""
    with open(path, "w", encoding="utf-8") as f:
        for row, preds in zip(rows, ranked):
            f.write(json.dumps({"id": row.get("id"), "mention": row.get("mention"), "gold": row.get("entity_id"),
                                "predictions": [{"entity_id": e, "score": s} for e, s in preds]}) + "\n")
    logger.info("wrote %d ranked mentions to %s", len(ranked), path)


def main(argv: list[str] | None = None) -> dict:
    # 1. Parse arguments.
    (args,) = HfArgumentParser(ZemelEvalArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_seed(args.seed)

    # 2. Load the corpus (and check the splits) before the model.
    data = load_zemel_data(args.dataset, args.data_dir, args.dataset_cache_dir)
    for split in args.split_list:
        data.split(split)  # ValueError naming the available splits

    # 3. Load model + processor.
    import modeling_mel  # noqa: F401 - registers the Auto classes
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(args.model_path).eval()
    processor = AutoProcessor.from_pretrained(args.model_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    # 4. Image features as at training time (unless overridden).
    config = model.config
    mode = args.image_features or getattr(config, "image_features", "resnet50")
    regions = None
    if mode == "resnet50" and data.has_images:
        from modeling_mel.image_encoders import recorded_image_encoder
        from modeling_mel.image_features import extractor_for

        recorded = recorded_image_encoder(processor)
        if args.features:  # extract once: the cache made by mel features, checked against the recorded encoder
            from modeling_mel.feature_cache import open_features

            extractor = open_features(args.features, image_model=args.image_model, recorded=recorded,
                                      what=f"the model {args.model_path}")
        elif recorded is not None:  # the encoder recorded at training, or a checked --image_model / --image_size
            extractor = extractor_for(recorded, args.image_model, what=f"the model {args.model_path}",
                                      image_size=args.image_size, cache_dir=args.image_cache_dir, batch_size=32)
        else:  # a model saved before encoders were recorded: its config's image_model / image_size
            extractor = build_image_extractor(
                args.image_model or getattr(config, "image_model", "microsoft/resnet-50"),
                args.image_size or getattr(config, "image_size", None), args.image_cache_dir,
            )
        if extractor.feature_dim != config.v_feature_dim:
            raise ValueError(
                f"the image model gives {extractor.feature_dim}-d features but the model expects v_feature_dim="
                f"{config.v_feature_dim}; pass the --image_model used in training"
            )
        regions = RegionFeatures(extractor, args.max_entity_images or getattr(config, "max_entity_images", 9),
                                 regions=getattr(processor, "image_regions", None) or "boxes")

    # 5. Evaluate every split with a candidate cache (NIL metrics at the calibrated threshold unless overridden).
    nil_threshold, nil_fraction, nil_seed = nil_settings(args.model_path, args.nil_threshold, args.nil_fraction,
                                                         args.nil_seed)
    results = evaluate_splits(
        model, processor, data, args.split_list, regions=regions, eval_kb=args.eval_kb,
        max_samples=args.max_eval_samples, ns=args.ns, batch_size=args.batch_size,
        context_max_length=args.context_max_length or getattr(config, "context_max_length", 64),
        candidate_max_length=args.candidate_max_length or getattr(config, "candidate_max_length", 64), bf16=args.bf16,
        progress=True, nil_threshold=nil_threshold, nil_fraction=nil_fraction, nil_seed=nil_seed,
        **({"return_predictions": True, "kb_top": args.predictions_top_k} if args.predictions_top_k else {}),
    )

    # 6. Write and report.
    out_dir = args.output_dir or args.model_path
    os.makedirs(out_dir, exist_ok=True)
    for split, result in results.items():
        predictions = result.pop("_predictions", None)
        if predictions is not None:
            rows = data.split(split)[: args.max_eval_samples] if args.max_eval_samples else data.split(split)
            write_predictions(os.path.join(out_dir, f"predictions_{split}.jsonl"), rows, predictions["kb_ranked"])
    with open(os.path.join(out_dir, "eval_results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    print(json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    from modeling_mel.scripts import run_as_script

    sys.exit(run_as_script(main, "evaluate_zemel"))
