"""``make demo`` / ``mel demo``: PFMEL end to end on the generated sample corpus, in a few minutes on CPU.

Steps: generate the seeded sample corpus (raw Twitter MEL layout) -> ResNet-50 features at 64 px (cached) ->
pre-train with the three NSP tasks and role swapping -> fine-tune for linking -> evaluate on dev and test,
beside a text-only NSP-BERT fine-tuned the same way and the name-match baseline (the candidate with the
shortest user name) -> save the model -> link one test mention and print its ranked candidates.

``quick=True`` (the default) sizes PRE-TRAINING for 2 CPU cores, NOT the paper's: 3 epochs at batch 16 and lr 1e-4
(paper: 5 epochs, batch 4, lr 5e-6), max length 128, ResNet input 64 px, bf16 autocast where the machine runs bf16
fast (see :mod:`.hardware`). FINE-TUNING uses the paper's Table 3 settings (4 epochs, batch 16, lr 5e-6 with linear
decay; plus a 10% warm-up). Why: on the sample's 62 training mentions the pre-training (random next sentences, so
every entity is as often negative as positive) is what teaches the model to match tweets to entities; fine-tuning
at the higher lr of earlier demos (5e-5, 6 epochs) learned which entities are gold in training instead and fell
below the name-match baseline on dev (0.686 vs 0.703, seed 0). ``quick=False`` uses the paper's settings for both
stages on the same sample.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

logger = logging.getLogger(__name__)


def _image_model() -> str:
    """``microsoft/resnet-50`` when it is in the local hub cache, else ``random:resnet-50``: a randomly initialised
    ResNet-50 asked for explicitly (seeded; no hub call), recorded as such in the saved model and said in the output."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache("microsoft/resnet-50", "config.json")
        if isinstance(path, str):
            return "microsoft/resnet-50"
    except Exception:  # pragma: no cover
        pass
    logger.warning(
        "microsoft/resnet-50 is not in the local cache: the demo uses --image_model random:resnet-50, a RANDOMLY "
        "INITIALISED ResNet-50 (its features still tell the sample's colour/shape signatures apart)"
    )
    return "random:resnet-50"


def _go_offline() -> None:
    """Switch the hub off for this process (environment and the already-imported constant), before loading anything."""
    import huggingface_hub.constants as hub_constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True


def _sample_corpus(output_dir: str, quick: bool, seed: int) -> tuple[str, Any]:
    """Step 1: the seeded sample corpus in the raw Twitter MEL layout under ``output_dir/data`` (generated once);
    returns its folder and the :class:`~modeling_mel.pfmel_training.PFMELDataArguments` of the demo."""
    from .builders import sample
    from .pfmel_training import PFMELDataArguments

    data_dir = os.path.join(output_dir, "data")
    if not os.path.isfile(os.path.join(data_dir, "ground_truth.tsv")):
        sample.generate_twitter_sample(data_dir, seed=seed)
    data_args = PFMELDataArguments(
        dataset="twitter_mel", data_dir=data_dir, image_size=64 if quick else 224,
        image_cache_dir=os.path.join(output_dir, "image_features"), dataset_cache_dir=os.path.join(output_dir, "datasets_cache"),
    )
    return data_dir, data_args


def _corpus_views(data_args: Any, data_dir: str, seed: int) -> tuple[Any, Any, Any]:
    """Step 2: the image extractor (ResNet-50, cached by content hash), the corpus with the training features and
    its text-only view; returns ``(extractor, corpus, text_corpus)``."""
    from .image_features import ImageFeatureExtractor
    from .pfmel_data import PFMELCorpus

    image_model = _image_model()
    extractor = ImageFeatureExtractor(
        image_model, cache_dir=data_args.image_cache_dir, image_size=data_args.image_size, seed=seed
    )
    corpus = PFMELCorpus.load("twitter_mel", data_dir, cache_dir=data_args.dataset_cache_dir, extractor=extractor)
    corpus.linking_data("train")  # dev/test features come at evaluation (the feature centre is a training statistic)
    text_corpus = PFMELCorpus(corpus.mentions, corpus.kb, image_features="none")
    return extractor, corpus, text_corpus


def _training_settings(quick: bool, seed: int, bf16: bool) -> tuple[dict, int, dict, dict]:
    """The Trainer arguments of every run (``common``), the max length, and quick mode's pre-training and fine-tuning
    overrides (none in full mode: the paper's settings, the arguments' defaults)."""
    import torch

    common = dict(
        report_to="none", seed=seed, use_cpu=not torch.cuda.is_available(), save_strategy="no", logging_steps=5,
        disable_tqdm=True, bf16=bf16, per_device_eval_batch_size=64,
    )
    max_length = 128 if quick else 300
    pre_kw = dict(num_train_epochs=3, per_device_train_batch_size=16, learning_rate=1e-4) if quick else {}
    fine_kw = dict(warmup_steps=0.1) if quick else {}  # the paper's fine-tuning (PFMELFinetuningArguments defaults)
    return common, max_length, pre_kw, fine_kw


def _train_pfmel(output_dir: str, data_args: Any, model_args: Any, corpus: Any, common: dict, pre_kw: dict,
                 fine_kw: dict, bf16: bool, timings: dict[str, float]) -> tuple[dict, dict, str]:
    """Steps 3 and 4: PFMEL pre-training (mixed-modal, text-only and multimodal NSP, role-swapped), then fine-tuning
    from the pre-trained model with evaluation on dev and test; records their ``timings``; returns the pre-training
    result, the fine-tuning metrics per split and the saved model's folder."""
    from .pfmel_training import (
        PFMELFinetuningArguments,
        PFMELModelArguments,
        PFMELPretrainingArguments,
        run_finetuning,
        run_pretraining,
    )

    t = time.time()
    pre_dir = os.path.join(output_dir, "pfmel_pretrained")
    pre = run_pretraining(
        data_args, model_args,
        PFMELPretrainingArguments(output_dir=pre_dir, tasks=["mixed", "text", "multi"], swap_roles=True, **common, **pre_kw),
        corpus=corpus,
    )
    timings["pretrain"] = time.time() - t

    t = time.time()
    model_dir = os.path.join(output_dir, "pfmel")
    pfmel = run_finetuning(
        data_args, PFMELModelArguments(init_from=pre_dir, max_length=model_args.max_length),
        PFMELFinetuningArguments(output_dir=model_dir, bf16_eval=bf16, **common, **fine_kw), corpus=corpus,
    )
    timings["finetune_pfmel"] = time.time() - t
    return pre, pfmel, model_dir


def _train_nsp_bert(output_dir: str, data_dir: str, model_args: Any, text_corpus: Any, common: dict, fine_kw: dict,
                    bf16: bool) -> dict:
    """Step 5: NSP-BERT, PFMEL's fine-tuning on the text-only corpus without pre-training; returns its metrics."""
    from .pfmel_training import PFMELDataArguments, PFMELFinetuningArguments, run_finetuning

    return run_finetuning(
        PFMELDataArguments(dataset="twitter_mel", data_dir=data_dir, image_features="none"), model_args,
        PFMELFinetuningArguments(output_dir=os.path.join(output_dir, "nsp_bert"), bf16_eval=bf16, **common, **fine_kw),
        corpus=text_corpus,
    )


def _link_one_example(model_dir: str, max_length: int, corpus: Any, bf16: bool) -> tuple[dict, Any]:
    """Step 7: link one test mention (the first with more than two candidates) with the model saved in ``model_dir``;
    returns the ``example`` entry of the results and the model's ``nsp_head_pretrained``."""
    from .modeling_multimodal_nsp import BertForMultimodalNSP
    from .pfmel_training import predict_linking
    from .processing_multimodal_nsp import MultimodalNSPProcessor

    model = BertForMultimodalNSP.from_pretrained(model_dir).eval()
    processor = MultimodalNSPProcessor.from_pretrained(model_dir)
    processor.max_length = max_length
    test = corpus.linking_data("test")
    ambiguous = [i for i, m in enumerate(test.mentions) if len(m.candidates) > 2] or list(range(len(test.mentions)))
    one = _subset(test, ambiguous[:1])
    pred = predict_linking(model, processor, one, bf16=bf16)[0]
    example = {"mention": pred.mention, "text": one.mentions[0].prompt, "gold": pred.gold, "ranked": pred.ranked[:5]}
    return example, model.config.nsp_head_pretrained


def _accuracy_table(pfmel: dict, nsp: dict, baseline: dict) -> dict[str, dict[str, Any]]:
    """The ``accuracy`` entry of the results: per split (dev, test), PFMEL, NSP-BERT and name-match accuracy, PFMEL's
    candidate recall and the number of mentions."""
    return {
        split: {
            "PFMEL": pfmel[split]["accuracy"],
            "NSP-BERT": nsp[split]["accuracy"],
            "name-match": baseline[split]["accuracy"],
            "candidate_recall": pfmel[split]["candidate_recall"],
            "n": pfmel[split]["n"],
        }
        for split in ("dev", "test")
    }


def run_demo(
    output_dir: str = "outputs/demo", quick: bool = True, seed: int = 0, backbone: str | None = None, bf16: bool | None = None
) -> dict[str, Any]:
    """Run the demo; returns accuracies (``pfmel``, ``nsp_bert``, ``name_match`` per split), paths and timings.

    ``bf16=None`` (default) uses bf16 autocast in quick mode where this machine runs it fast; ``True``/``False`` force it.

    The demo is offline by design: it switches the hub off for this process before loading anything.
    """
    import torch

    _go_offline()

    from .hardware import bf16_is_fast
    from .pfmel_training import PFMELModelArguments, linking_metrics, name_match_baseline

    start = time.time()
    timings: dict[str, float] = {}
    os.makedirs(output_dir, exist_ok=True)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    if bf16 is None:
        bf16 = quick and bf16_is_fast()

    # 1. The sample corpus (seeded) in the raw Twitter MEL layout.
    data_dir, data_args = _sample_corpus(output_dir, quick, seed)
    timings["data"] = time.time() - start

    # 2. Image features (ResNet-50, cached by content hash) and the corpus views.
    t = time.time()
    extractor, corpus, text_corpus = _corpus_views(data_args, data_dir, seed)
    timings["features"] = time.time() - t

    common, max_length, pre_kw, fine_kw = _training_settings(quick, seed, bf16)
    model_args = PFMELModelArguments(backbone=backbone, max_length=max_length)

    # 3. and 4. PFMEL pre-training, then fine-tuning; evaluation on dev and test.
    pre, pfmel, model_dir = _train_pfmel(output_dir, data_args, model_args, corpus, common, pre_kw, fine_kw, bf16,
                                         timings)

    # 5. NSP-BERT: the same fine-tuning, text only, no pre-training.
    t = time.time()
    nsp = _train_nsp_bert(output_dir, data_dir, model_args, text_corpus, common, fine_kw, bf16)
    timings["finetune_nsp_bert"] = time.time() - t

    # 6. Name-match baseline.
    names = {e: str(r.get("name") or e) for e, r in corpus.entities.items()}
    baseline = {s: linking_metrics(name_match_baseline(corpus.linking_data(s), names)) for s in ("dev", "test")}

    # 7. Link one example mention with the saved model.
    example, nsp_head_pretrained = _link_one_example(model_dir, max_length, corpus, bf16)

    results = {
        "accuracy": _accuracy_table(pfmel, nsp, baseline),
        "pretraining": pre,
        "example": example,
        "model_dir": model_dir,
        "nsp_head_pretrained": nsp_head_pretrained,
        "image_encoder": extractor.identity["name"] + (f" (random init, seed {seed})" if extractor.random else ""),
        "bf16": bf16,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "wall_time_s": round(time.time() - start, 1),
    }
    _print(results)
    return results


def _subset(data, idx):
    from .pfmel_data import LinkingData

    return LinkingData([data.mentions[i] for i in idx], data.entity_text, data.entity_image, data.table, data.use_images)


def _print(results: dict) -> None:
    lines = ["", "PFMEL demo: linking accuracy on the sample corpus", "",
             "| split | PFMEL | NSP-BERT (text only) | name-match baseline | candidate recall | mentions |",
             "|---|---|---|---|---|---|"]
    for split, r in results["accuracy"].items():
        lines.append(
            f"| {split} | {r['PFMEL']:.3f} | {r['NSP-BERT']:.3f} | {r['name-match']:.3f} | {r['candidate_recall']:.3f} | {r['n']} |"
        )
    if results.get("nsp_head_pretrained") is False:
        lines += ["", "NOTE: the backbone has no pre-trained NSP head (cls.seq_relationship): PFMEL and NSP-BERT here "
                  "learn next-sentence prediction from a random head, not from BERT's pre-trained one (the paper's "
                  "premise); run with --backbone bert-base-uncased where the hub is reachable for that."]
    if results.get("image_encoder"):
        lines += ["", f"image encoder: {results['image_encoder']}"
                  + ("  <- randomly initialised, asked for explicitly (microsoft/resnet-50 is not in the local cache): "
                     "the image features are not ImageNet features" if "random init" in results["image_encoder"] else "")]
    ex = results["example"]
    lines += ["", f"example: {ex['text']!r}  (gold: {ex['gold']})"]
    for rank, (eid, score) in enumerate(ex["ranked"], 1):
        lines.append(f"  {rank}. {eid:<20} log p(is next) = {score:.3f}{'   <- gold' if eid == ex['gold'] else ''}")
    lines += ["", f"model saved to {results['model_dir']}", f"wall time {results['wall_time_s']} s  {results['timings_s']}"]
    print("\n".join(lines))


__all__ = ["run_demo"]


def demo_main(argv: list[str]) -> int:
    """``mel demo``: parse the arguments and run :func:`run_demo`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="mel demo",
        description="PFMEL end to end on the generated sample corpus (a few minutes on CPU): pre-train, fine-tune, "
        "evaluate against NSP-BERT and a name-match baseline, save the model, link one mention.",
    )
    parser.add_argument("--output_dir", default="outputs/demo", help="where the sample, features and models go")
    parser.add_argument("--full", action="store_true", help="the paper's settings instead of the quick CPU ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample corpus and of training")
    parser.add_argument("--backbone", default=None, help="text backbone (default: embedded all-MiniLM-L6-v2)")
    args = parser.parse_args(argv)
    run_demo(args.output_dir, quick=not args.full, seed=args.seed, backbone=args.backbone)
    return 0
