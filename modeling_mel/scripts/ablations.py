"""Every PFMEL variant of the paper (Tables 4-6) over seeds: mean ± std accuracy.

    python -m modeling_mel.scripts.ablations --dataset twitter_mel --data_dir D --output_dir O/ablations
    python -m modeling_mel.scripts.ablations ... --variants NSP-BERT FMEL PFMEL --seeds 0 21
    python -m modeling_mel.scripts.ablations --dataset twitter_mel --data_dir outputs/demo/data --output_dir O --quick   # CPU-sized

Variants (pre-training always on ``train``; fine-tuning on the split named):

    NSP-BERT  text only, no pre-training                 fine-tune train
    FMEL      multimodal, no pre-training                fine-tune train
    PFMELm    pre-train mixed-modal                      fine-tune train
    PFMELmt   pre-train mixed + text                     fine-tune train
    PFMELmtm  pre-train mixed + text + multimodal        fine-tune train
    PFMELmtd  pre-train mixed + text, role-swapped       fine-tune train
    PFMEL     pre-train all three, role-swapped          fine-tune train
    PFMEL07   PFMEL's pre-training                       fine-tune train07
    PFMEL05   PFMEL's pre-training                       fine-tune train05

Writes ``O/results.json`` (every run's dev/test metrics, and mean/std per variant) and ``O/results.md`` (tables
shaped like the paper's 4, 5 and 6). Pre-trained models are shared between variants with the same pre-training
(PFMEL, PFMEL07, PFMEL05) per seed. Image features are extracted once for all runs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
from transformers import HfArgumentParser

from modeling_mel.pfmel_data import PFMELCorpus
from modeling_mel.pfmel_training import (
    PFMELDataArguments,
    PFMELFinetuningArguments,
    PFMELModelArguments,
    PFMELPretrainingArguments,
    load_corpus,
    run_finetuning,
    run_pretraining,
)

logger = logging.getLogger("ablations")

#: name -> (image features used, pre-training tasks or None, role swap, fine-tuning split)
VARIANTS: dict[str, tuple[bool, tuple[str, ...] | None, bool, str]] = {
    "NSP-BERT": (False, None, False, "train"),
    "FMEL": (True, None, False, "train"),
    "PFMELm": (True, ("mixed",), False, "train"),
    "PFMELmt": (True, ("mixed", "text"), False, "train"),
    "PFMELmtm": (True, ("mixed", "text", "multi"), False, "train"),
    "PFMELmtd": (True, ("mixed", "text"), True, "train"),
    "PFMEL": (True, ("mixed", "text", "multi"), True, "train"),
    "PFMEL07": (True, ("mixed", "text", "multi"), True, "train07"),
    "PFMEL05": (True, ("mixed", "text", "multi"), True, "train05"),
}
TABLES = {
    "Table 4 (approaches)": ["NSP-BERT", "FMEL", "PFMEL"],
    "Table 5 (ablation of pre-training)": ["FMEL", "PFMELm", "PFMELmt", "PFMELmtm", "PFMELmtd", "PFMEL"],
    "Table 6 (fine-tuning data size)": ["FMEL", "PFMEL", "PFMEL07", "PFMEL05"],
}


@dataclass
class AblationArguments:
    output_dir: str = field(default="outputs/ablations", metadata={"help": "results.json, results.md and the runs"})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS), metadata={"help": f"any of {list(VARIANTS)}"})
    seeds: list[int] = field(default_factory=lambda: [0, 21, 42, 63, 84], metadata={"help": "seeds (paper: 0 21 42 63 84)"})
    quick: bool = field(
        default=False,
        metadata={"help": "CPU-sized runs: max length 128, image size 64, 1 pre-training and 3 fine-tuning epochs, "
                  "batch 16, lr 5e-5, bf16 autocast where this machine runs it fast (NOT the paper's settings)"},
    )
    max_steps: int = field(default=-1, metadata={"help": "cap every training run at N steps (smoke tests)"})
    eval_split: str = field(default="test", metadata={"help": "split whose accuracy goes into the tables"})
    keep_models: bool = field(default=False, metadata={"help": "keep the fine-tuned model dirs (large)"})

    def __post_init__(self) -> None:
        for v in self.variants:
            if v not in VARIANTS:
                raise ValueError(f"unknown variant {v!r}; choose from {list(VARIANTS)}")
        if not self.seeds:
            raise ValueError("give at least one --seeds value")
        if self.eval_split not in ("dev", "test"):
            raise ValueError(f"--eval_split must be dev or test, got {self.eval_split!r}")


def _markdown(summary: dict[str, dict], split: str, seeds: list[int]) -> str:
    lines = [f"Accuracy (%) on {split}, mean ± std over seeds {seeds}.", ""]
    for title, names in TABLES.items():
        rows = [n for n in names if n in summary]
        if not rows:
            continue
        lines += [f"### {title}", "", "| Model | Accuracy |", "|---|---|"]
        lines += [f"| {n} | {100 * summary[n]['mean']:.3f} ± {100 * summary[n]['std']:.3f} |" for n in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    # 1. Parse arguments.
    parser = HfArgumentParser((AblationArguments, PFMELDataArguments, PFMELModelArguments))
    abl, data_args, model_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if abl.quick:
        data_args.image_size = min(data_args.image_size or 64, 64)
        model_args.max_length = min(model_args.max_length, 128)

    # 2. Load the corpus once (features extracted once), and a text-only view of it for NSP-BERT.
    corpus = load_corpus(data_args)
    text_corpus = PFMELCorpus(corpus.mentions, corpus.kb, image_features="none", max_candidates=data_args.max_candidates)
    for split in {VARIANTS[v][3] for v in abl.variants} | {"dev", "test"}:
        corpus.split(split)  # missing split: error before any training

    common = dict(report_to="none", save_strategy="no", disable_tqdm=True, max_steps=abl.max_steps, logging_steps=10)
    if abl.quick:
        import torch

        from modeling_mel.hardware import bf16_is_fast

        common.update(per_device_train_batch_size=16, learning_rate=5e-5, bf16=bf16_is_fast(), use_cpu=not torch.cuda.is_available())
    runs: dict[str, list[dict]] = {v: [] for v in abl.variants}
    for seed in abl.seeds:
        pretrained: dict[tuple, str] = {}
        for name in abl.variants:
            images, tasks, swap, train_split = VARIANTS[name]
            run_dir = os.path.join(abl.output_dir, f"{name}-seed{seed}")
            init_from = None
            # 3. Pre-train (once per distinct pre-training and seed).
            if tasks is not None:
                key = (tasks, swap)
                if key not in pretrained:
                    pre_dir = os.path.join(abl.output_dir, f"pretrain-{'-'.join(tasks)}{'-swap' if swap else ''}-seed{seed}")
                    pre_args = PFMELPretrainingArguments(
                        output_dir=pre_dir, tasks=list(tasks), swap_roles=swap, seed=seed, **common,
                        **({"num_train_epochs": 1} if abl.quick else {}),
                    )
                    run_pretraining(data_args, model_args, pre_args, corpus=corpus)
                    pretrained[key] = pre_dir
                init_from = pretrained[key]
            # 4. Fine-tune and evaluate.
            fine_args = PFMELFinetuningArguments(
                output_dir=run_dir, train_split=train_split, eval_splits=["dev", "test"], seed=seed,
                bf16_eval=bool(common.get("bf16")), **common, **({"num_train_epochs": 3} if abl.quick else {}),
            )
            margs = PFMELModelArguments(
                backbone=None if init_from else model_args.backbone, init_from=init_from, max_length=model_args.max_length
            )
            result = run_finetuning(data_args, margs, fine_args, corpus=corpus if images else text_corpus)
            runs[name].append({"seed": seed, **{s: result[s] for s in ("dev", "test")}})
            logger.info("%s seed %d: %s accuracy %.4f", name, seed, abl.eval_split, result[abl.eval_split]["accuracy"])
            if not abl.keep_models:
                for f in ("model.safetensors",):
                    path = os.path.join(run_dir, f)
                    if os.path.isfile(path):
                        os.remove(path)

    # 5. Aggregate and write results.json + results.md.
    summary = {}
    for name, rs in runs.items():
        acc = np.array([r[abl.eval_split]["accuracy"] for r in rs], dtype=float)
        summary[name] = {"mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, "n_seeds": len(acc)}
    out = {"split": abl.eval_split, "seeds": abl.seeds, "quick": abl.quick, "summary": summary, "runs": runs}
    os.makedirs(abl.output_dir, exist_ok=True)
    with open(os.path.join(abl.output_dir, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    table = _markdown(summary, abl.eval_split, abl.seeds)
    with open(os.path.join(abl.output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return out


if __name__ == "__main__":
    from modeling_mel.scripts import run_as_script

    sys.exit(run_as_script(main, "ablations"))
