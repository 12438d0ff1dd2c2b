"""``mel model-card``: render the model card template into a saved model folder's README.md
(:mod:`modeling_mel.hub`).

    mel model-card --model M --results eval_results.json
"""

from __future__ import annotations

import argparse
import sys

def model_card_main(argv: list[str]) -> int:
    """``mel model-card``: render the model card template into a saved model folder's README.md."""
    parser = argparse.ArgumentParser(
        prog="mel model-card",
        description="Render model_card.md (the template) into MODEL/README.md with the evaluation figures of a "
        "results JSON in the model-index metadata.",
    )
    parser.add_argument("--model", required=True, help="saved model folder")
    parser.add_argument("--results", default=None, help="eval_results.json (flat metrics, {metrics, dataset}, or splits)")
    parser.add_argument("--template", default=None, help="card template (default: the model_card.md installed with the package)")
    parser.add_argument("--output", default=None, help="output path (default MODEL/README.md)")
    parser.add_argument("--model_name", default=None, help="name / hub id shown in the card (default: folder name)")
    parser.add_argument("--dataset_type", default=None, help="dataset id in model-index (default by model family)")
    parser.add_argument("--dataset_name", default=None, help="dataset display name")
    parser.add_argument("--split", default=None, help="evaluation split (default test)")
    parser.add_argument("--base_model", default=None, help="text backbone the model started from (shown in the card)")
    parser.add_argument("--add_code", action="store_true", help="also copy the pipeline code into the folder")
    args = parser.parse_args(argv)
    from .hub import add_pipeline_code, render_model_card

    dataset = {k: v for k, v in (("type", args.dataset_type), ("name", args.dataset_name), ("split", args.split)) if v}
    try:
        if args.add_code:
            add_pipeline_code(args.model)
        path = render_model_card(
            args.model, results=args.results, model_name=args.model_name, template=args.template,
            output=args.output, dataset=dataset or None, base_model=args.base_model,
        )
    except ValueError as err:
        print(f"mel model-card: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


__all__ = ["model_card_main"]
