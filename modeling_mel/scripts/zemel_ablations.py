"""The ZEMEL paper's Table 4 (poly codes m, bi-encoder) and Fig. 4 (candidate images) over seeds: mean ± std.

    mel zemel-ablations --dataset zemeld --data_dir D --output_dir O/zemel_ablations
    mel zemel-ablations ... --variants m1 m16 m64 bi --seeds 0 21 42
    mel zemel-ablations --dataset wikimel --data_dir D --output_dir O --image_features none --eval_splits dev \\
        --variants m1 m16 m64 bi                                   # text only: Fig. 4 variants are skipped
    mel zemel-ablations --dataset zemeld --data_dir zemeld_sample --output_dir O --quick   # CPU-sized

Variants (each one ``mel train-zemel`` run per seed, with every other training argument passed through):

    m1 m16 m64 m128 m360   Table 4: poly-encoder with m poly codes (``--scoring poly --poly_m m``); any ``m<k>``
    bi                     Table 4: the bi-encoder (``--scoring bi``)
    images0 ... images9    Fig. 4: at most k KB images per candidate entity (``--max_entity_images k``; 0: candidates
                           text only), with the passed ``--scoring`` / ``--poly_m``; any ``images<k>``

A Fig. 4 variant needs candidate images: on a text-only run (``--image_features none``, a corpus without images, or
a KB without entity images) it is skipped with a message naming the reason, and the skips are counted in
``results.json``; a run made only of such variants is refused (``ValueError``).

Each run trains into ``O/<variant>-seed<seed>`` and writes its ``eval_results.json`` (per evaluated split: precision,
R@1 and micro-F1 at N candidates, H@k and MRR over the evaluation KB; see ``modeling_mel.zemel_evaluation``). A run
whose ``eval_results.json`` exists (with every evaluated split) is not retrained: an interrupted ablation resumes where
it stopped. Writes ``O/results.json`` (every run's metrics, and per variant and split the mean and std over seeds)
and ``O/results.md`` (tables shaped like the paper's Table 4 and Fig. 4). The model weights of each run are removed
after its evaluation unless ``--keep_models`` (``config.json`` and the results stay). Image features are cached on
disk once for all runs (``--image_cache_dir``, default ``O/image_features``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np
from transformers import HfArgumentParser, set_seed

from modeling_mel.zemel_training import ZemelDataArguments, ZemelModelArguments, ZemelTrainingArguments

logger = logging.getLogger("zemel_ablations")

TABLE4 = ["m1", "m16", "m64", "m128", "m360", "bi"]
FIG4 = [f"images{k}" for k in range(10)]
DEFAULT_VARIANTS = TABLE4 + FIG4
_POLY = re.compile(r"^m([1-9][0-9]*)$")
_IMAGES = re.compile(r"^images([0-9]+)$")
#: metrics summarised per split (the ``/N`` ones for every N of ``--eval_num_candidates``), when the runs have them
PER_N = ("precision", "r@1", "micro_f1")
RANKING = ("H@1", "H@3", "H@5", "H@10", "H@20", "MRR")
MD_RANKING = ("H@1", "H@10", "MRR")  # the markdown's ranking columns (results.json has all of RANKING)


def variant_settings(name: str) -> dict:
    """The ``train-zemel`` options a variant sets: ``{"scoring": ..., "poly_m": ...}`` or ``{"max_entity_images": k}``."""
    if name == "bi":
        return {"scoring": "bi"}
    match = _POLY.match(name)
    if match:
        return {"scoring": "poly", "poly_m": int(match.group(1))}
    match = _IMAGES.match(name)
    if match:
        return {"max_entity_images": int(match.group(1))}
    raise ValueError(f"unknown variant {name!r}; choose from {DEFAULT_VARIANTS} (or any m<k> / images<k>)")


def is_fig4(name: str) -> bool:
    return bool(_IMAGES.match(name))


@dataclass
class ZemelAblationArguments:
    variants: list[str] = field(
        default_factory=lambda: list(DEFAULT_VARIANTS),
        metadata={"help": f"Table 4: {TABLE4} (any m<k>); Fig. 4: images0 ... images9 (any images<k>)"},
    )
    seeds: list[int] = field(default_factory=lambda: [0, 21, 42], metadata={"help": "seeds of the runs of each variant"})
    quick: bool = field(
        default=False,
        metadata={"help": "CPU-sized defaults (1 epoch, image size 64, 32-token contexts and candidates, at most 2000 "
                  "training and 500 evaluation mentions, CPU unless CUDA, bf16 where fast); options given explicitly win "
                  "(NOT the paper's settings)"},
    )
    keep_models: bool = field(default=False, metadata={"help": "keep each run's model weights (large)"})

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("give at least one --variants value")
        for v in self.variants:
            variant_settings(v)  # ValueError naming the choices
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"--variants repeats a variant: {self.variants}")
        if not self.seeds:
            raise ValueError("give at least one --seeds value")


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((ZemelAblationArguments, ZemelDataArguments, ZemelModelArguments, ZemelTrainingArguments))


def quick_defaults() -> list[str]:
    """``--quick``: options placed BEFORE the command line's (argparse keeps the last value: explicit options win)."""
    import torch

    from modeling_mel.hardware import bf16_is_fast

    out = ["--num_train_epochs", "1", "--image_size", "64", "--context_max_length", "32", "--candidate_max_length", "32",
           "--max_train_samples", "2000", "--max_eval_samples", "500"]
    if not torch.cuda.is_available():
        out += ["--use_cpu", "true"]
    if bf16_is_fast():
        out += ["--bf16", "true"]
    return out


def _run_complete(run_dir: str, splits: list[str]) -> dict | None:
    """The run's ``eval_results.json`` when it holds every split, else None."""
    from modeling_mel.zemel_evaluation import canonical_split

    path = os.path.join(run_dir, "eval_results.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or not all(canonical_split(s) in results for s in splits):
        return None
    return results


def metric_keys(ns: list[int]) -> list[str]:
    return [f"{m}/{n}" for n in ns for m in PER_N] + list(RANKING)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarise(runs: list[dict], keys: list[str]) -> dict[str, dict[str, dict]]:
    """``split -> metric -> {mean, std, n_seeds}`` over the runs (sample std, 0 for one seed)."""
    out: dict[str, dict[str, dict]] = {}
    for split in runs[0]["eval"]:
        out[split] = {}
        for key in keys:
            values = [r["eval"].get(split, {}).get(key) for r in runs]
            if not values or not all(_finite_number(v) for v in values):
                continue
            a = np.asarray(values, dtype=float)
            out[split][key] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                               "n_seeds": len(a)}
    return out


def _markdown(summary: dict, settings: dict, skipped: dict, seeds: list[int], ns: list[int]) -> str:
    splits = sorted({s for v in summary.values() for s in v})
    cols = [f"{label}/{n}" for n in ns for label in PER_N] + list(MD_RANKING)
    head = {"precision": "P", "r@1": "R@1", "micro_f1": "F1"}

    def title(col: str) -> str:
        metric, _, n = col.partition("/")
        return f"{head.get(metric, metric)}/{n}" if n else metric

    def sort_key(name: str):
        s = settings[name]
        return (s["scoring"] == "bi", s["poly_m"]) if not is_fig4(name) else (False, s["max_entity_images"])

    lines = [f"ZEMEL ablations: mean ± std (%) over seeds {seeds}; P = precision, R@1 and F1 at N candidates "
             "(BM25 + rules), H@k and MRR over the whole evaluation KB (eval_results.json of each run).", ""]
    tables = {"Table 4 (poly codes m, bi-encoder)": [v for v in summary if not is_fig4(v)],
              "Fig. 4 (number of candidate images)": [v for v in summary if is_fig4(v)]}
    for split in splits:
        for name, rows in tables.items():
            rows = sorted((v for v in rows if split in summary[v]), key=sort_key)
            if not rows:
                continue
            present = [c for c in cols if any(c in summary[v][split] for v in rows)]
            lines += [f"### {name}, {split}", "",
                      "| Variant | scoring | m | candidate images | " + " | ".join(title(c) for c in present) + " |",
                      "|---" * (4 + len(present)) + "|"]
            for v in rows:
                s, m = settings[v], summary[v][split]
                cells = [f"{100 * m[c]['mean']:.1f} ± {100 * m[c]['std']:.1f}" if c in m else "-" for c in present]
                poly_m = "-" if s["scoring"] == "bi" else str(s["poly_m"])
                images = "text only" if s.get("text_only") else str(s["max_entity_images"])
                lines.append(f"| {v} | {s['scoring']} | {poly_m} | {images} | " + " | ".join(cells) + " |")
            lines.append("")
    if skipped:
        lines += [f"Skipped ({len(skipped)}): " + "; ".join(f"{v}: {why}" for v, why in skipped.items()), ""]
    return "\n".join(lines)


def text_only_reason(data_args: ZemelDataArguments) -> str | None:
    """Why candidate images cannot vary in this run (None when they can)."""
    if data_args.image_features == "none":
        return "--image_features none (text only)"
    from modeling_mel.zemel_evaluation import load_zemel_data

    data = load_zemel_data(data_args.dataset, data_args.data_dir, data_args.dataset_cache_dir)
    if not data.has_images:
        return f"the {data_args.dataset} corpus has no images (text only)"
    if not any(e.get("images") for e in data.full_kb.values()):
        return f"no KB entity of the {data_args.dataset} corpus has an image"
    return None


def main(argv: list[str] | None = None) -> dict:
    # 1. Parse arguments (ablation options + every train-zemel option); --quick puts CPU-sized defaults before them.
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    abl, data_args, model_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    base = (quick_defaults() if abl.quick else []) + argv
    if abl.quick:
        abl, data_args, model_args, train_args = parser.parse_args_into_dataclasses(args=base)
    out_dir = train_args.output_dir
    if not data_args.eval_split_list:
        raise ValueError("--eval_splits is empty: the ablation tables need evaluated splits (e.g. dev,test)")
    if train_args.resume_from_checkpoint:
        raise ValueError("--resume_from_checkpoint is not an ablation option: finished runs are skipped, unfinished "
                         "ones are retrained")
    if "--seed" in argv:
        logger.warning("--seed is ignored: the runs use --seeds %s", abl.seeds)

    # 2. Text-only run: the Fig. 4 variants (candidate images) are skipped, counted; nothing left to run is an error.
    reason = text_only_reason(data_args)
    skipped = {v: f"Fig. 4 needs candidate images: {reason}" for v in abl.variants if reason and is_fig4(v)}
    variants = [v for v in abl.variants if v not in skipped]
    if skipped:
        logger.warning("skipping %d Fig. 4 variant(s) (%s): %s", len(skipped), ", ".join(skipped),
                       f"the number of candidate images cannot change a text-only run: {reason}")
    if not variants:
        raise ValueError(f"nothing to run: the Fig. 4 variants {list(skipped)} need candidate images, but {reason}; "
                         "run Table 4's variants (m1 m16 m64 m128 m360 bi) on this corpus")
    os.makedirs(out_dir, exist_ok=True)
    if data_args.image_cache_dir is None and reason is None:
        base += ["--image_cache_dir", os.path.join(out_dir, "image_features")]  # features extracted once for all runs

    settings: dict[str, dict] = {}
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    n_trained = n_reused = 0
    for seed in abl.seeds:
        for name in variants:
            run_dir = os.path.join(out_dir, f"{name}-seed{seed}")
            overrides = variant_settings(name)
            run_argv = base + ["--output_dir", run_dir, "--seed", str(seed), "--overwrite_output_dir", "true"]
            for key, value in overrides.items():
                run_argv += [f"--{key}", str(value)]
            _, run_data, run_model, run_train = parser.parse_args_into_dataclasses(args=run_argv)
            settings[name] = {"scoring": run_model.scoring, "poly_m": run_model.poly_m,
                              "max_entity_images": run_data.max_entity_images, "text_only": reason is not None}
            # 3. Train and evaluate (train-zemel's steps), unless this variant x seed is finished already.
            results = _run_complete(run_dir, run_data.eval_split_list)
            if results is not None:
                logger.info("%s seed %d: results exist in %s, not retrained", name, seed, run_dir)
                n_reused += 1
            else:
                from modeling_mel.run_outputs import prepare_output_dir
                from modeling_mel.zemel_training import run_zemel_training

                logger.info("%s seed %d: training into %s (%s)", name, seed, run_dir, overrides)
                set_seed(seed)
                prepare_output_dir(run_dir, overwrite_output_dir=True)
                results = run_zemel_training(run_data, run_model, run_train)["eval"]
                # other processes of a multi-process run get no results: the main process wrote them (the run ends
                # with a barrier)
                results = results or _run_complete(run_dir, run_data.eval_split_list) or {}
                n_trained += 1
                if not abl.keep_models and train_args.process_index == 0:
                    for f in ("model.safetensors",):
                        path = os.path.join(run_dir, f)
                        if os.path.isfile(path):
                            os.remove(path)
            keep = {split: {k: v for k, v in m.items() if _finite_number(v)} for split, m in results.items()
                    if isinstance(m, dict)}
            runs[name].append({"seed": seed, "run_dir": run_dir, "eval": keep})

    # 4. Aggregate and write results.json + results.md.
    keys = metric_keys(data_args.ns)
    summary = {name: summarise(rs, keys) for name, rs in runs.items()}
    if train_args.process_index != 0:  # the main process writes the tables
        return {}
    out = {"seeds": abl.seeds, "quick": abl.quick, "variants": variants, "settings": settings, "skipped": skipped,
           "n_skipped": len(skipped), "n_trained": n_trained, "n_reused": n_reused, "metrics": keys,
           "summary": summary, "runs": runs, "argv": argv}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    table = _markdown(summary, settings, skipped, abl.seeds, data_args.ns)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return out


if __name__ == "__main__":
    from modeling_mel.scripts import run_as_script

    sys.exit(run_as_script(main, "zemel_ablations"))
