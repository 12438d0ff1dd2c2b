"""Export a built MEL corpus as a code-free Hub dataset (Parquet + dataset card) and push it.

``export_dataset`` writes ``<out_dir>/<config>/<split>-00000-of-0000N.parquet`` with the image bytes
embedded (the Arrow cache of a builder only stores paths) and a ``README.md`` whose YAML front matter
lists the ``configs:`` and their ``data_files``, so that ::

    datasets.load_dataset(out_dir, "mentions")   # or "kb"

works with no code, locally or from the Hub after :func:`push_dataset_to_hub`.

Command line: ``python datasets_scripts/export_dataset.py --help`` (same as :func:`export_main`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from typing import Any, Mapping, Sequence

import datasets
from datasets.table import embed_table_storage

logger = logging.getLogger(__name__)

DEFAULT_SHARD_ROWS = 20_000


def _embed(ds: datasets.Dataset) -> datasets.Dataset:
    """The same rows with every external file (image path) replaced by its bytes."""
    fmt = ds.format
    out = ds.with_format("arrow").map(
        embed_table_storage, batched=True, keep_in_memory=True, desc="Embedding images", load_from_cache_file=False
    )
    return out.with_format(**fmt)


def _feature_type(feature: Any) -> str:
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.List):
        return f"list of {_feature_type(feature.feature)}"
    if isinstance(feature, dict):
        return "{" + ", ".join(f"{k}: {_feature_type(v)}" for k, v in feature.items()) + "}"
    return type(feature).__name__


def _example(ds: datasets.Dataset) -> str:
    """First row as JSON, images shown as ``<image>`` and long lists cut."""
    if len(ds) == 0:
        return "{}"
    row = ds.select([0]).cast(datasets.Features({c: _undecoded(f) for c, f in ds.features.items()}))[0]

    def clean(v: Any) -> Any:
        if isinstance(v, dict) and set(v) == {"bytes", "path"}:
            return "<image>"
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v[:2]] + (["..."] if len(v) > 2 else [])
        return v

    return json.dumps(clean(row), indent=2, ensure_ascii=False)


def _undecoded(feature: Any) -> Any:
    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, datasets.List):
        return datasets.List(_undecoded(feature.feature))
    if isinstance(feature, dict):
        return {k: _undecoded(v) for k, v in feature.items()}
    return feature


def _yaml_list(values: Sequence[str]) -> str:
    return "".join(f"\n- {v}" for v in values)


def dataset_card(
    splits_by_config: Mapping[str, Mapping[str, datasets.Dataset]],
    files_by_config: Mapping[str, Mapping[str, str]],
    pretty_name: str,
    description: str,
    citation: str = "",
    license: str = "other",
    license_text: str = "",
    homepage: str = "",
    task_categories: Sequence[str] = ("text-retrieval",),
    task_ids: Sequence[str] = ("entity-linking-retrieval",),
    tags: Sequence[str] = ("entity-linking", "multimodal", "modeling-mel"),
    creation: str = "",
    considerations: str = "",
    build_reports: Mapping[str, str] | None = None,
) -> str:
    """Text of a dataset card: YAML front matter (configs, license, ...) and the usual sections."""
    default = "mentions" if "mentions" in files_by_config else next(iter(files_by_config))
    yaml = ["---", f"pretty_name: {json.dumps(pretty_name)}", f"license: {license}", "language:\n- en"]
    yaml.append("task_categories:" + _yaml_list(task_categories))
    if task_ids:
        yaml.append("task_ids:" + _yaml_list(task_ids))
    yaml.append("tags:" + _yaml_list(tags))
    yaml.append("configs:")
    for config, files in files_by_config.items():
        yaml.append(f"- config_name: {config}")
        if config == default:
            yaml.append("  default: true")
        yaml.append("  data_files:")
        for split, pattern in files.items():
            yaml.append(f"  - split: {split}\n    path: {pattern}")
    yaml.append("---")

    body = [f"# {pretty_name}", "", "## Description", "", description.strip(), ""]
    if homepage:
        body += [f"Homepage: {homepage}", ""]
    body += [
        "```python",
        "from datasets import load_dataset",
        *(f'{c} = load_dataset("<this folder or repo id>", "{c}")' for c in files_by_config),
        "```",
        "",
        "## Structure",
        "",
    ]
    for config, splits in splits_by_config.items():
        first = next(iter(splits.values()))
        body += [f"### Config `{config}`", "", "Fields:", ""]
        body += [f"- `{name}`: {_feature_type(f)}" for name, f in first.features.items()]
        body += ["", "Splits:", "", "| split | rows |", "|---|---|"]
        body += [f"| {s} | {len(d)} |" for s, d in splits.items()]
        body += ["", "An instance:", "", "```json", _example(first), "```", ""]
    body += ["## Creation", "", (creation or "Built with the modeling-mel corpus builders.").strip(), ""]
    for config, text in (build_reports or {}).items():
        if text:
            body += [f"Build report ({config}): {text.strip()}", ""]
    body += [
        "## Considerations",
        "",
        (
            considerations
            or "Mentions, names and images come from public social media posts and profiles: they may contain "
            "personal data and the biases of the platform. Use for research on entity linking; respect the "
            "terms of the original data."
        ).strip(),
        "",
        "## License",
        "",
        (license_text or license).strip(),
        "",
    ]
    if citation:
        body += ["## Citation", "", "```bibtex", citation.strip(), "```", ""]
    return "\n".join(yaml) + "\n\n" + "\n".join(body)


def export_dataset(
    dataset_dict_by_config: Mapping[str, datasets.DatasetDict | datasets.Dataset],
    out_dir: str,
    pretty_name: str = "MEL corpus",
    description: str = "A multimodal entity linking corpus built with modeling-mel.",
    citation: str = "",
    license: str = "other",
    license_text: str = "",
    homepage: str = "",
    task_categories: Sequence[str] = ("text-retrieval",),
    tags: Sequence[str] = ("entity-linking", "multimodal", "modeling-mel"),
    creation: str = "",
    considerations: str = "",
    max_shard_rows: int = DEFAULT_SHARD_ROWS,
    overwrite: bool = False,
) -> str:
    """Write each config and split as Parquet with embedded image bytes, plus a ``README.md`` card.

    Args:
        dataset_dict_by_config: ``{"mentions": DatasetDict, "kb": Dataset or DatasetDict}``; a bare
            ``Dataset`` is written as split ``train``.
        out_dir: output folder (``<config>/<split>-XXXXX-of-XXXXX.parquet`` and ``README.md``).
        pretty_name, description, citation, license, license_text, homepage, task_categories, tags,
        creation, considerations: dataset card content (``license`` is a Hub license id).
        max_shard_rows: rows per Parquet file.
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        The path of the written ``README.md``.
    """
    if not dataset_dict_by_config:
        raise ValueError("Nothing to export: dataset_dict_by_config is empty.")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True (--overwrite) or another folder.")
        for config in dataset_dict_by_config:
            shutil.rmtree(os.path.join(out_dir, config), ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)

    splits_by_config: dict[str, dict[str, datasets.Dataset]] = {}
    files_by_config: dict[str, dict[str, str]] = {}
    reports: dict[str, str] = {}
    for config, dd in dataset_dict_by_config.items():
        if isinstance(dd, datasets.Dataset):
            dd = datasets.DatasetDict({"train": dd})
        if not isinstance(dd, datasets.DatasetDict) or not len(dd):
            raise TypeError(
                f"Config {config!r}: expected a non-empty DatasetDict or a Dataset, got {type(dd).__name__}."
            )
        splits_by_config[config] = dict(dd)
        files_by_config[config] = {}
        os.makedirs(os.path.join(out_dir, config), exist_ok=True)
        for split, ds in dd.items():
            n_shards = max(1, -(-len(ds) // max_shard_rows))
            for i in range(n_shards):
                shard = ds.shard(n_shards, i, contiguous=True) if n_shards > 1 else ds
                path = os.path.join(out_dir, config, f"{split}-{i:05d}-of-{n_shards:05d}.parquet")
                _embed(shard).to_parquet(path)
            files_by_config[config][split] = f"{config}/{split}-*.parquet"
            logger.info("Exported %s/%s: %d rows in %d file(s)", config, split, len(ds), n_shards)
        text = next(iter(dd.values())).info.description or ""
        if "Build report:" in text:
            reports[config] = text.split("Build report:", 1)[1].split("\nDetails:")[0]

    card = dataset_card(
        splits_by_config,
        files_by_config,
        pretty_name=pretty_name,
        description=description,
        citation=citation,
        license=license,
        license_text=license_text,
        homepage=homepage,
        task_categories=task_categories,
        tags=tags,
        creation=creation,
        considerations=considerations,
        build_reports=reports,
    )
    readme = os.path.join(out_dir, "README.md")
    with open(readme, "w", encoding="utf-8") as f:
        f.write(card)
    logger.info("Dataset card written to %s", readme)
    return readme


def push_dataset_to_hub(out_dir: str, repo_id: str, token: str | None = None, private: bool = True) -> str:
    """Upload an exported folder to a Hub dataset repository (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    if not os.path.isfile(os.path.join(out_dir, "README.md")):
        raise FileNotFoundError(f"{out_dir} has no README.md; run export_dataset first.")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=out_dir, repo_id=repo_id, repo_type="dataset", commit_message="Upload MEL corpus")
    url = f"https://huggingface.co/datasets/{repo_id}"
    logger.info("Pushed %s to %s", out_dir, url)
    return url


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def build_export_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of the export command (shared by ``datasets_scripts/export_dataset.py`` and ``mel``)."""
    from .corpus import DATASET_BUILDERS

    p = argparse.ArgumentParser(
        prog=prog,
        description="Build a MEL corpus from its raw files and export it as Parquet + dataset card "
        "(loadable with datasets.load_dataset(out, 'mentions') and no code); optionally push it to the Hub.",
    )
    p.add_argument("--dataset", required=True, choices=sorted(DATASET_BUILDERS), help="corpus builder")
    p.add_argument("--data_dir", required=True, help="folder with the raw corpus files")
    p.add_argument("--out", required=True, help="output folder (Parquet files and README.md)")
    p.add_argument("--configs", nargs="+", default=["mentions", "kb"], help="configs to export (default: mentions kb)")
    p.add_argument("--cache_dir", default=None, help="Arrow cache of the builder (default: $HF_DATASETS_CACHE)")
    p.add_argument("--seed", type=int, default=0, help="seed of the PFMEL split when it is used")
    p.add_argument("--split_method", default="auto", help="auto | lists | files | field | seeded")
    p.add_argument("--require_image", action="store_true", help="skip mentions without a readable image")
    p.add_argument("--image_cache_dir", default=None, help="images downloaded from media URLs, named sha1(url)")
    p.add_argument("--pretty_name", default=None, help="title of the dataset card")
    p.add_argument("--license", default="other", help="Hub license id for the card (default: other)")
    p.add_argument("--overwrite", action="store_true", help="replace the exported configs in --out")
    p.add_argument("--push_to_hub", default=None, metavar="REPO", help="also upload to this Hub dataset repo")
    p.add_argument("--public", action="store_true", help="create the Hub repo public (default: private)")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in token)")
    return p


def export_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of the export command: parse ``argv``, build, export, optionally push. Returns 0."""
    from .corpus import get_builder_class, load_mel_corpus

    args = build_export_parser(prog).parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = sys.modules[get_builder_class(args.dataset).__module__]
    kwargs = {"seed": args.seed, "split_method": args.split_method, "require_image": args.require_image}
    if args.image_cache_dir:
        kwargs["image_cache_dir"] = args.image_cache_dir
    built = {
        c: load_mel_corpus(args.dataset, args.data_dir, config=c, cache_dir=args.cache_dir, **kwargs)
        for c in args.configs
    }
    readme = export_dataset(
        built,
        args.out,
        pretty_name=args.pretty_name or args.dataset.replace("_", " ").title(),
        description=getattr(module, "_DESCRIPTION", ""),
        citation=getattr(module, "_CITATION", ""),
        license=args.license,
        license_text=getattr(module, "_LICENSE", ""),
        homepage=getattr(module, "_HOMEPAGE", ""),
        overwrite=args.overwrite,
    )
    print(f"Exported {', '.join(args.configs)} of {args.dataset} to {os.path.dirname(readme)}")
    if args.push_to_hub:
        url = push_dataset_to_hub(args.out, args.push_to_hub, token=args.token, private=not args.public)
        print(f"Pushed to {url}")
    return 0
