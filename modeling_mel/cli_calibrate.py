"""``mel calibrate``: choose the NIL ("not in the KB") score threshold of a model on labelled dev mentions
(:mod:`modeling_mel.nil`): a seeded fraction of their gold entities is removed from the KB, the linker links every
mention against the reduced KB, and the chosen threshold is saved as ``nil_calibration.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Any

from .cli_inference import (
    _add_device_arg,
    _add_image_args,
    _add_weight_mismatch_arg,
    _check_boxes,
    _check_offset,
    _device_of,
    _os_error_text,
    _precision_setting,
    build_image_extractor,
    load_model_and_processor,
)
from .cli_link import check_output_writable

logger = logging.getLogger(__name__)

def _calibration_rows(args: argparse.Namespace) -> list[dict]:
    """The labelled mentions of ``mel calibrate --data``: a JSONL file, or ``--split`` of a corpus folder built
    with ``--dataset`` (its mention image, when there is one, as the pipeline's ``image``)."""
    if not os.path.isdir(args.data):  # read_jsonl's rules, each row with its file line number ("_where")
        from .knowledge_base import read_jsonl_numbered

        return [{**row, "_where": f"line {n}"} for n, row in read_jsonl_numbered(args.data)]
    if not args.dataset:
        raise ValueError(f"--data {args.data!r} is a folder: give its builder with --dataset (e.g. mel_jsonl, wikimel)")
    from .corpus import load_mel_corpus

    splits = load_mel_corpus(args.dataset, args.data, config="mentions")
    aliases = {"dev": ("dev", "validation", "valid"), "validation": ("validation", "dev", "valid")}
    name = next((n for n in aliases.get(args.split, (args.split,)) if n in splits), None)
    if name is None:
        raise ValueError(f"--split {args.split!r} is not in {args.data!r}; its splits are {sorted(splits)}")
    keep = ("text", "caption", "mention", "mention_start", "mention_end", "entity_id", "image")
    ds = splits[name]
    rows = []
    from .builders.zemeld import with_text

    for i, row in enumerate(ds.select_columns([c for c in keep if c in ds.column_names])):
        rows.append({**with_text(row), "_where": f"split {name!r} row {i}"})
    return rows


#: The keys of a ``mel calibrate`` row the pipeline takes.
_CALIBRATION_KEYS = ("text", "mention", "mention_start", "mention_end", "image", "boxes")


def _check_calibration_rows(args: argparse.Namespace, rows: list[dict]) -> None:
    """Before any model loads: ``ValueError`` naming the file line (or split row) of the first labelled row the
    pipeline would refuse (no text, a bad span, bad boxes), instead of failing after the linking."""
    from .pipeline_entity_linking import MultimodalEntityLinkingPipeline

    for row in rows:
        try:
            item = {k: row[k] for k in _CALIBRATION_KEYS if row.get(k) is not None}
            for name in ("mention_start", "mention_end"):
                if name in item:
                    item[name] = _check_offset(name, item[name])
            if "boxes" in item:
                _check_boxes(item["boxes"])
            MultimodalEntityLinkingPipeline._check_input(item)
        except (TypeError, ValueError) as err:
            message = str(err).removeprefix("input: ")
            raise ValueError(f"--data {args.data!r} {row.get('_where', '')}: {message}; fix or remove that mention") \
                from err


def calibrate_main(argv: list[str]) -> int:
    """``mel calibrate``: choose the NIL threshold of a model on labelled dev mentions (``modeling_mel.nil``)."""
    parser = argparse.ArgumentParser(
        prog="mel calibrate",
        description="Choose a NIL ('not in the KB') score threshold on labelled dev mentions: a seeded fraction of their "
                    "gold entities is removed from the KB (and from the --index / --retriever index, without "
                    "re-encoding), the linker links every mention against the reduced KB, and the threshold with the "
                    "best overall accuracy that costs in-KB mentions at most --max_in_kb_drop is saved as "
                    "nil_calibration.json (in the --index folder when given, else the model folder); pipeline() and "
                    "mel link then use it.",
    )
    parser.add_argument("--model", required=True, help="saved model folder (either family)")
    kb_group = parser.add_mutually_exclusive_group(required=True)
    kb_group.add_argument("--kb", help="kb.jsonl of the entities")
    kb_group.add_argument("--index", help="entity index directory (mel index) of the model, used as the KB")
    parser.add_argument("--retriever", default=None,
                        help="PFMEL two-stage linker: 'bm25' or an entity index dir built by a ZEMEL model (mel index)")
    parser.add_argument("--retriever_model", default=None, help="the ZEMEL model folder of --retriever")
    parser.add_argument("--data", required=True,
                        help="dev mentions: a JSONL file (text, mention or spans, entity_id), or a corpus folder with "
                             "--dataset and --split")
    parser.add_argument("--dataset", default=None,
                        help="builder of a corpus folder given as --data (twitter_mel, zemeld, mel_jsonl, wikimel, ...)")
    parser.add_argument("--split", default="dev", help="split of the --data corpus folder (default dev)")
    parser.add_argument("--nil_fraction", type=float, default=0.2, help="share of the gold entities removed from the KB")
    parser.add_argument("--max_in_kb_drop", type=float, default=0.02, help="most in-KB accuracy the threshold may cost")
    parser.add_argument("--seed", type=int, default=0, help="seed of the removed entities")
    parser.add_argument("--batch_size", type=int, default=32, help="mentions per batch")
    parser.add_argument("--candidates", default=None, help="ZEMEL candidate source (pipeline default: auto)")
    parser.add_argument("--out", default=None, help="folder of nil_calibration.json (default: --index, else --model)")
    parser.add_argument("--fp32", action="store_true",
                        help="run the model in fp32 (default: the precision the --index was built in; else bf16 "
                        "where this machine has native bf16 kernels)")
    parser.add_argument("--trust_remote_code", action="store_true", help="load the model with its own code")
    _add_weight_mismatch_arg(parser)
    _add_device_arg(parser)
    _add_image_args(parser)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as held:
        return _calibrate(args, held)


def _calibrate(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    """``mel calibrate`` once its arguments are parsed; the writer lock of nil_calibration.json goes on ``held``."""
    from transformers import pipeline

    from .entity_index import EntityIndex, load_retriever
    from .index_files import output_write_lock
    from .knowledge_base import kb_records, linking_method
    from .nil import CALIBRATION_NAME, choose_threshold, is_nil_gold, nil_metrics, removed_entities, save_calibration
    from .pipeline_entity_linking import MultimodalEntityLinkingPipeline

    out_dir = args.out or args.index or args.model
    target = os.path.join(out_dir, CALIBRATION_NAME)
    try:
        device = _device_of(args)  # a device this machine lacks: exit 2 before anything is read
        rows = [r for r in _calibration_rows(args) if r.get("entity_id") is not None]
        if not rows:
            raise ValueError(f"--data {args.data!r} has no mention with an entity_id")
        _check_calibration_rows(args, rows)  # a bad row: named by its file line now, not after the linking
        if args.index and not os.path.isfile(os.path.join(args.index, "index_config.json")):
            raise ValueError(f"--index {args.index!r} is not an entity index directory (build one with mel index)")
        # the destination, before the model loads: a folder that exists, an output that can be replaced, the writer
        # lock of nil_calibration.json (a second `mel calibrate` into the same folder stops here; creating the lock
        # shows a read-only folder)
        what = f"the calibration {target!r}" + ("" if args.out else " (--out: default --index, else --model)")
        if not os.path.isdir(out_dir):
            raise ValueError(f"{what}: folder {out_dir!r} does not exist; pass an existing folder as --out")
        check_output_writable(target, what)
        try:
            held.enter_context(output_write_lock(target, what=what, by="another `mel calibrate`"))
        except OSError as err:
            raise ValueError(f"{what}: cannot write in {out_dir!r} ({_os_error_text(err)}); pass a writable folder "
                             "as --out") from err
        model, processor = load_model_and_processor(args.model, args.trust_remote_code, device,
                                                    allow_weight_mismatch=args.allow_weight_mismatch)
        if args.index:
            index = EntityIndex.load(args.index, model=model if linking_method(model) == "dense" else None)
            kb_ids = index.entity_ids
        else:
            kb = kb_records(args.kb)
            kb_ids = [e["entity_id"] for e in kb]
        removed = removed_entities(kb_ids, (r["entity_id"] for r in rows), args.nil_fraction, args.seed)
        reduced: Any = index.without(removed) if args.index else [e for e in kb if e["entity_id"] not in removed]
        extractor = build_image_extractor(args, model, processor)
        init: dict[str, Any] = {"use_images": not args.no_images, "max_image_pixels": args.max_image_pixels,
                                "bf16": _precision_setting(args, args.index, device, "mel calibrate"),
                                "allow_weight_mismatch": args.allow_weight_mismatch}
        if extractor is not None:
            init["image_extractor"] = extractor
        if args.retriever:
            init["retriever"] = (args.retriever if args.retriever == "bm25"
                                 else load_retriever(args.retriever, args.retriever_model, device).without(removed))
        pipe = pipeline("multimodal-entity-linking", model=model, processor=processor, kb=reduced,
                        pipeline_class=MultimodalEntityLinkingPipeline, nil_threshold=None, device=device, **init)
    except (ValueError, OSError) as err:
        print(f"mel calibrate: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    items = [{k: r[k] for k in _CALIBRATION_KEYS if r.get(k) is not None} for r in rows]
    call: dict[str, Any] = {"top_k": 1, "batch_size": args.batch_size}
    if args.candidates:
        call["candidates"] = args.candidates
    outputs = pipe(items, **call)
    best_ids = [out[0]["entity_id"] if out else None for out in outputs]
    best_scores = [out[0]["score"] if out else None for out in outputs]
    golds = [str(r["entity_id"]) for r in rows]
    is_nil = [g in removed or is_nil_gold(g) for g in golds]  # simulated NIL mentions and those labelled NIL
    threshold, calibrated = choose_threshold(best_ids, best_scores, golds, is_nil, args.max_in_kb_drop)
    source = {"index": os.path.abspath(args.index)} if args.index else {"kb": os.path.abspath(args.kb)}
    if args.retriever:
        source["retriever"] = args.retriever if args.retriever == "bm25" else os.path.abspath(args.retriever)
    payload = {
        "threshold": threshold,
        "protocol": {"nil_fraction": args.nil_fraction, "seed": args.seed, "max_in_kb_drop": args.max_in_kb_drop,
                     "removed_entities": len(removed), "data": os.path.abspath(args.data),
                     **({"dataset": args.dataset, "split": args.split} if os.path.isdir(args.data) else {}), **source},
        "uncalibrated": nil_metrics(best_ids, best_scores, golds, is_nil, None),
        "calibrated": calibrated,
    }
    try:
        path = save_calibration(out_dir, payload)
    except OSError as err:  # the result still goes to stdout: the linking is not lost
        with contextlib.suppress(OSError):
            os.remove(target + ".tmp")
        print(json.dumps(payload, sort_keys=True))
        print(f"mel calibrate: writing {target!r} failed ({_os_error_text(err)}); the result is printed above: free "
              "space or fix the folder and run again", file=sys.stderr)
        return 2
    logger.info("mel calibrate: threshold %s -> %s", threshold, path)
    print(json.dumps(payload, sort_keys=True))
    return 0


__all__ = ["calibrate_main"]
