"""Hub publishing: a self-contained model folder (model + processor + code + pipeline + card) and its upload.

A folder written by :func:`save_for_hub` loads anywhere with only transformers installed::

    from transformers import AutoModel, AutoProcessor, pipeline
    model = AutoModel.from_pretrained("user/mel-model", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained("user/mel-model", trust_remote_code=True)
    linker = pipeline("multimodal-entity-linking", model="user/mel-model", trust_remote_code=True, kb="kb.jsonl")

It holds ``config.json`` (``auto_map`` for AutoConfig/AutoModel; ``custom_pipelines`` for the linking pipeline),
``model.safetensors``, the processor files (``processor_config.json`` with an AutoProcessor ``auto_map``, tokenizer
files), the code files (``configuration_*``, ``modeling_*``, ``processing_*``, ``pipeline_entity_linking.py``,
``knowledge_base.py``, ``image_features.py`` and every other module they import relatively, e.g. ``linking_kb.py``,
``pipeline_inputs.py``, ``weight_checks.py``: transformers' ``custom_object_save`` follows the relative imports) and a
``README.md`` model card rendered from the template ``model_card.md``.

With the package installed and NO remote code, a folder that declares ``custom_pipelines`` needs either
``trust_remote_code=True`` or ``pipeline_class=modeling_mel.MultimodalEntityLinkingPipeline`` (transformers refuses to
pick the registered class on its own for such a folder).

:func:`push_model_to_hub` uploads a folder with ``huggingface_hub`` (private by default).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Mapping

import yaml

from .knowledge_base import linking_method
from .pipeline_entity_linking import TASK, MultimodalEntityLinkingPipeline

logger = logging.getLogger(__name__)

CARD_TEMPLATE_NAME = "model_card.md"
PIPELINE_TAG = "text-ranking"  # the closest Hub task; the transformers task name is in `tags`
_SKIP_METRICS = {
    "epoch", "runtime", "samples_per_second", "steps_per_second", "n", "num_examples", "num_mentions", "seed",
    "kb_size", "n_unusable", "n_no_candidates", "n_gold_not_in_kb", "n_unaligned", "n_unranked", "n_nil",  # counts
    "nil_threshold", "nil_fraction", "nil_seed", "nil_removed_entities", "nil_n_mentions", "nil_n_labelled",  # NIL
}
_PLACEHOLDER = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")

CARD_FACT_KEYS = ("architecture", "family", "dataset_id", "dataset_name", "paper")


def card_facts(model_type: str | None) -> dict[str, str]:
    """The model-card facts a family's config class declares (``model_card_facts``), by ``model_type``."""
    from transformers import CONFIG_MAPPING

    try:
        config_cls = CONFIG_MAPPING[model_type]
    except KeyError:
        config_cls = None
    facts = getattr(config_cls, "model_card_facts", None)
    if not isinstance(facts, Mapping) or any(k not in facts for k in CARD_FACT_KEYS):
        raise ValueError(
            f"model type {model_type!r} declares no model card facts; a family's config class needs "
            f"model_card_facts with {list(CARD_FACT_KEYS)} (as MultimodalNSPConfig and ZemelConfig have)"
        )
    return dict(facts)


# ----------------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------------


def add_pipeline_code(save_directory: str | os.PathLike) -> list[str]:
    """Copy the pipeline code into a saved model folder and declare it in ``config.json`` (``custom_pipelines``).

    The in-memory model config is not changed (a config with ``custom_pipelines`` makes transformers ask for
    ``trust_remote_code``), only the saved ``config.json``.
    """
    from transformers.dynamic_module_utils import custom_object_save

    save_directory = os.fspath(save_directory)
    config_path = os.path.join(save_directory, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{save_directory!r} holds no config.json; save the model there first")
    files = [str(p) for p in custom_object_save(MultimodalEntityLinkingPipeline, save_directory) or []]
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["custom_pipelines"] = {
        TASK: {
            "impl": f"{MultimodalEntityLinkingPipeline.__module__.split('.')[-1]}.{MultimodalEntityLinkingPipeline.__name__}",
            "pt": ["AutoModel"],
            "type": "multimodal",
        }
    }
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return files


def save_for_hub(
    model: Any,
    processor: Any,
    save_directory: str | os.PathLike,
    results: Mapping[str, Any] | str | os.PathLike | None = None,
    model_name: str | None = None,
    card_template: str | os.PathLike | None = None,
    **card_fields: Any,
) -> str:
    """Write a self-contained model folder (model, processor, code, pipeline, README card); returns its path."""
    save_directory = os.fspath(save_directory)
    linking_method(model)  # ValueError for a model that does not link
    if getattr(type(model), "_auto_class", None) is None:
        type(model).register_for_auto_class("AutoModel")
    if getattr(type(model.config), "_auto_class", None) is None:
        type(model.config).register_for_auto_class()
    if getattr(type(processor), "_auto_class", None) is None:
        type(processor).register_for_auto_class("AutoProcessor")
    model.save_pretrained(save_directory)
    processor.save_pretrained(save_directory)
    add_pipeline_code(save_directory)
    render_model_card(
        save_directory, results=results, model_name=model_name, template=card_template, **card_fields
    )
    return save_directory


def push_model_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = True,
    commit_message: str = "Upload multimodal entity linking model",
) -> str:
    """Create ``repo_id`` (private by default) and upload a saved model folder; returns the commit URL.

    Checks the folder first (config.json with auto_map, model.safetensors, README.md) so a half-saved folder is
    never published.
    """
    from huggingface_hub import create_repo, upload_folder

    problems = check_model_folder(model_dir)
    if problems:
        raise ValueError(f"{os.fspath(model_dir)!r} is not ready to publish: " + "; ".join(problems))
    create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
    info = upload_folder(
        repo_id=repo_id, folder_path=os.fspath(model_dir), token=token, commit_message=commit_message, repo_type="model"
    )
    return str(getattr(info, "commit_url", info))


def check_model_folder(model_dir: str | os.PathLike) -> list[str]:
    """Problems that keep a saved folder from loading with remote code (empty list: ready)."""
    model_dir = os.fspath(model_dir)
    problems = []
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        return [f"no config.json in {model_dir!r}"]
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    auto_map = config.get("auto_map", {})
    for key in ("AutoConfig", "AutoModel"):
        if key not in auto_map:
            problems.append(f"config.json auto_map has no {key}")
    for ref in auto_map.values():
        module = (ref[0] if isinstance(ref, (list, tuple)) else ref).split(".")[0]
        if not os.path.isfile(os.path.join(model_dir, module + ".py")):
            problems.append(f"code file {module}.py is missing")
    if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        problems.append("model.safetensors is missing")
    if not os.path.isfile(os.path.join(model_dir, "README.md")):
        problems.append("README.md (model card) is missing; run `mel model-card`")
    return problems


# ----------------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------------


def find_card_template(template: str | os.PathLike | None = None) -> str:
    """Path of the card template: ``template``, else ``model_card.md`` of the source checkout or the installed package."""
    if template is not None:
        path = os.fspath(template)
        if not os.path.isfile(path):
            raise ValueError(f"model card template {path!r} does not exist")
        return path
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(os.path.dirname(here), CARD_TEMPLATE_NAME), os.path.join(here, CARD_TEMPLATE_NAME)):
        if os.path.isfile(candidate):
            return candidate
    raise ValueError(f"no {CARD_TEMPLATE_NAME} template found next to the package; pass --template PATH")


def split_front_matter(text: str) -> tuple[dict, str]:
    """``(metadata dict, body)`` of a Markdown file with YAML front matter between ``---`` lines."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n?(.*)$", text, flags=re.DOTALL)
    if not match:
        raise ValueError("the card has no YAML front matter (a block between two '---' lines at the top)")
    data = yaml.safe_load(match.group(1)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"the card's front matter is a {type(data).__name__}, expected a mapping")
    return data, match.group(2)


def _metrics_of(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        name = re.sub(r"^(eval|test|predict)_", "", str(key))
        if name in _SKIP_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[name] = float(value)
    return out


def parse_results(results: Mapping[str, Any] | str | os.PathLike | None, default_dataset: Mapping[str, Any]) -> list[dict]:
    """Evaluation entries ``[{"dataset": {...}, "metrics": {name: value}}]`` from an ``eval_results.json``.

    Accepted shapes: flat ``{"accuracy": 0.8, ...}`` (``eval_``/``test_`` prefixes dropped); ``{"metrics": {...},
    "dataset": {...}}``; ``{"results": [such entries]}``; or splits ``{"test": {...}, "dev": {...}}``.
    """
    if results is None:
        return []
    if isinstance(results, (str, os.PathLike)):
        path = os.fspath(results)
        if not os.path.isfile(path):
            raise ValueError(f"results file {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                results = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"results file {path!r} is not valid JSON: {err}") from err
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a JSON object, got {type(results).__name__}")

    def entry(metrics: Mapping[str, Any], dataset: Mapping[str, Any] | None, split: str | None = None) -> dict:
        ds = dict(default_dataset)
        ds.update(dataset or {})
        if split and "split" not in (dataset or {}):
            ds["split"] = split
        return {"dataset": ds, "metrics": _metrics_of(metrics)}

    if "results" in results and isinstance(results["results"], list):
        entries = [entry(r.get("metrics", r), r.get("dataset")) for r in results["results"]]
    elif "metrics" in results and isinstance(results["metrics"], Mapping):
        entries = [entry(results["metrics"], results.get("dataset"), results.get("split"))]
    else:
        flat = _metrics_of(results)
        entries = [entry(results, results.get("dataset") if isinstance(results.get("dataset"), Mapping) else None)] if flat else []
        for key, value in results.items():
            if isinstance(value, Mapping) and key not in ("dataset",) and _metrics_of(value):
                entries.append(entry(value, None, split=str(key)))
    entries = [e for e in entries if e["metrics"]]
    if not entries:
        raise ValueError("no numeric metric found in the results; expected e.g. {\"accuracy\": 0.81}")
    return entries


def _model_index(model_name: str, entries: list[dict], task_name: str) -> list[dict]:
    results = []
    for e in entries:
        ds = e["dataset"]
        dataset = {"type": str(ds.get("type", "custom")), "name": str(ds.get("name", ds.get("type", "custom")))}
        for key in ("split", "config"):
            if ds.get(key):
                dataset[key] = str(ds[key])
        results.append(
            {
                "task": {"type": "entity-linking", "name": task_name},
                "dataset": dataset,
                "metrics": [
                    {"type": name, "value": round(value, 6), "name": name.replace("_", " ")}
                    for name, value in e["metrics"].items()
                ],
            }
        )
    return [{"name": model_name, "results": results}]


def _results_table(entries: list[dict]) -> str:
    if not entries:
        return "No evaluation results were given when this card was rendered (`mel model-card --results ...`)."
    lines = ["| Dataset | Split | Metric | Value |", "|---|---|---|---|"]
    for e in entries:
        ds = e["dataset"]
        for name, value in e["metrics"].items():
            lines.append(f"| {ds.get('name', ds.get('type'))} | {ds.get('split', '-')} | {name} | {value:.4f} |")
    return "\n".join(lines)


def render_card_text(
    template_text: str,
    model_name: str,
    facts: Mapping[str, Any],
    entries: list[dict],
    fields: Mapping[str, Any] | None = None,
) -> str:
    """Fill a card template: YAML metadata rebuilt (valid YAML by construction), ``{{ name }}`` placeholders replaced.

    Raises ``ValueError`` naming a placeholder left without a value.
    """
    info = dict(facts)
    metadata, body = split_front_matter(template_text)
    values = {
        "model_name": model_name,
        "repo_id": model_name,
        "architecture": info["architecture"],
        "model_family": info["family"],
        "dataset_name": info["dataset_name"],
        "results_table": _results_table(entries),
        "task": TASK,
        "image_encoder": image_encoder_card_text(None),
    }
    values.update({k: str(v) for k, v in (fields or {}).items() if v is not None})

    def fill(text: str) -> str:
        def sub(match: re.Match) -> str:
            key = match.group(1)
            if key not in values:
                raise ValueError(f"model card template placeholder {{{{ {key} }}}} has no value; pass it as a field")
            return values[key]

        return _PLACEHOLDER.sub(sub, text)

    def fill_yaml(node: Any) -> Any:
        if isinstance(node, str):
            return fill(node)
        if isinstance(node, list):
            return [fill_yaml(v) for v in node]
        if isinstance(node, dict):
            return {k: fill_yaml(v) for k, v in node.items()}
        return node

    metadata = fill_yaml(metadata)
    metadata["pipeline_tag"] = metadata.get("pipeline_tag") or PIPELINE_TAG
    tags = list(metadata.get("tags") or [])
    for tag in (TASK, "entity-linking", "multimodal", info["paper"]):
        if tag not in tags:
            tags.append(tag)
    metadata["tags"] = tags
    datasets = [d for d in (metadata.get("datasets") or []) if d]
    for e in entries:
        ds_type = e["dataset"].get("type")
        if ds_type and ds_type not in datasets:
            datasets.append(ds_type)
    if not datasets:
        datasets = [info["dataset_id"]]
    metadata["datasets"] = datasets
    metrics = list(metadata.get("metrics") or [])
    for e in entries:
        for name in e["metrics"]:
            if name not in metrics:
                metrics.append(name)
    metadata["metrics"] = metrics
    if entries:
        metadata["model-index"] = _model_index(model_name, entries, "Multimodal Entity Linking")
    else:
        metadata.pop("model-index", None)
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"---\n{front}---\n\n{fill(body).lstrip()}"


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _training_facts(model_dir: str) -> dict:
    """What the training run wrote beside the weights: ``train_results.json`` (ZEMEL) or the ``train`` entry of
    ``eval_results.json`` (PFMEL fine-tuning); empty when neither exists."""
    facts = _read_json(os.path.join(model_dir, "train_results.json"))
    train = _read_json(os.path.join(model_dir, "eval_results.json")).get("train")
    if isinstance(train, dict):
        facts = {**train, **facts}
    return facts


def _is_zemel(config: Mapping[str, Any]) -> bool:
    return config.get("model_type") == "zemel"


def family_description(config: Mapping[str, Any], processor_config: Mapping[str, Any] | None = None) -> str:
    """The card's description of this model's method, from its config (scoring, poly codes, lengths, images; for
    PFMEL the templates, pair length and image token)."""
    processor_config = processor_config or {}
    text_only = config.get("image_features") == "none" or processor_config.get("image_features") == "none"
    if _is_zemel(config):
        if config.get("scoring", "poly") == "poly":
            head = (f"a poly-encoder head: {config.get('poly_m')} learned poly codes attend over the context's tokens, "
                    "the candidate vector attends over the codes (`scoring: poly`)")
        else:
            head = "a bi-encoder head: one vector per side, scored by their dot product (`scoring: bi`)"
        images = ("trained text only (`image_features: none`): the vision stream is unused" if text_only else
                  f"image regions ({config.get('max_regions')} per image) enter the vision stream; candidates use at "
                  f"most {config.get('max_entity_images')} KB images")
        return (f"**ZEMEL** (Zheng et al. 2022): co-attentional two-stream (text + image regions) encoders for the "
                f"mention context (at most {config.get('context_max_length')} tokens, mention marked by "
                f"`{config.get('mention_start_token')}` / `{config.get('mention_end_token')}`) and for the candidate "
                f"entity (at most {config.get('candidate_max_length')} tokens), with {head}. Images: {images}. "
                "Candidate vectors are cached in an entity index (`mel index`), so linking a large KB is one context "
                "encoding per mention.")
    head = config.get("nsp_head_pretrained")
    head_text = {True: "its NSP head started from the backbone's pre-trained next-sentence-prediction head (the "
                       "paper's premise)",
                 False: "the backbone had no pre-trained next-sentence-prediction head (`cls.seq_relationship`), so "
                        "the NSP head was trained from random weights: this model does not mine BERT's pre-trained NSP "
                        "head as the paper does (train on `bert-base-uncased` for that)"}.get(
        head, "the origin of its NSP head was not recorded")
    images = ("trained text only (`image_features: none`)" if text_only else
              f"a pooled {config.get('image_feature_dim')}-d image feature is projected into an image token "
              f"(`{config.get('image_token', '[IMG]')}`) inside its sentence")
    length = processor_config.get("max_length")
    return ("**PFMEL** (Li et al. 2022): a BERT next-sentence-prediction cross-encoder. The linking score of a "
            "(mention, entity) pair is log p(entity sentence follows mention sentence), with the prompts "
            "`\"<text>. <mention> is\"` / `\"@<screen name>. <entity context>\"`"
            + (f", pairs cut to {length} tokens" if length else "") + f". Images: {images}. NSP head: {head_text}.")


def candidate_text(config: Mapping[str, Any]) -> str:
    """How this model's candidates are generated, from its config (PFMEL: the name-rule cap, the retriever fusion)."""
    if _is_zemel(config):
        return ("the dense top k of the cached candidate vectors (exhaustive up to 50,000 entities, else the FAISS "
                "index), every one rescored by the model; `mel link --candidates all` adds BM25 and the paper's name "
                "rules.")
    text = (f"the name rule: KB entities whose name contains the mention, at most {config.get('max_candidates')} "
            "(`max_candidates`, as in training).")
    weight = config.get("retriever_score_weight")
    if weight:
        text += (f" This model was trained as the reranker of a ZEMEL retriever: with `retriever=` (`mel link "
                 f"--retriever`) it scores the retriever's top {config.get('retriever_k')} and as many closest "
                 f"names, and ranks by log p + {weight:g} x the retriever score (`retriever_score_weight`, calibrated "
                 "on held-out training mentions).")
    return text


def training_text(config: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    """The card's training paragraph of this checkpoint: its corpus, negatives, loss and size, from its config and
    the results its training wrote."""
    dataset = config.get("training_dataset")
    corpus = f"the `{dataset}` corpus (`--dataset {dataset}`)" if dataset else "a corpus that was not recorded"
    if _is_zemel(config):
        negatives = config.get("training_negatives")
        neg = {"bm25": "BM25 + rule candidates (`--negatives bm25`, the ZEMEL paper's setting)",
               "dense": "hard negatives mined with the model being trained before each epoch (`--negatives dense`, "
                        "the package default; the ZEMEL paper uses BM25 + rule candidates)",
               "none": "no mined negatives (`--num_candidates 1`)"}.get(negatives, "negatives that were not recorded")
        size = ""
        if facts.get("train_mentions"):
            size = (f" on {facts['train_mentions']:,} mentions against a KB of {facts.get('train_kb', 0):,} entities, "
                    f"{facts.get('global_step')} optimisation steps, final training loss {facts.get('train_loss', 0):.4f}")
        k = facts.get("num_candidates")
        mixing = config.get("backbone_mixing")
        mixed = (f" After training, each text-stream weight was mixed with the backbone's ({float(mixing):g} * trained "
                 f"+ {1 - float(mixing):g} * backbone, `--backbone_mixing {float(mixing):g}`)."
                 if mixing is not None and float(mixing) < 1 else "")
        return (f"Trained on {corpus}{size}: cross-entropy of each mention over its gold entity and "
                + (f"{int(k) - 1} negatives from " if k else "its negatives from ") + neg
                + ", plus the candidates of the other mentions of the batch (in-batch negatives, other copies of the "
                "gold masked). Entities of the evaluation KB are unseen in training where the split is zero-shot."
                + mixed)
    parts = [f"A next-sentence-prediction cross-encoder fine-tuned on {corpus}"]
    if facts.get("mentions"):
        parts.append(f" ({facts['mentions']:,} mentions, {facts.get('pairs', 0):,} pairs, {facts.get('loss')} loss, "
                     f"{facts.get('global_step')} steps; candidate recall of the training candidates "
                     f"{facts.get('candidate_recall')})")
    parts.append(". The paper's recipe (Li et al. 2022): pre-training on the three NSP task families with role "
                 "swapping, then NSP fine-tuning with negatives from the name-rule candidate set; the training "
                 "arguments of this checkpoint are in `training_args.bin`.")
    return "".join(parts)


def metric_definitions(config: Mapping[str, Any]) -> str:
    """The card's metric definitions and denominators for this model's family."""
    common = ("Every gold mention of a split is counted: a mention with no candidate or with its gold entity outside "
              "the KB counts as wrong.")
    if _is_zemel(config):
        return (common + " H@k is the share of gold mentions whose gold entity ranks in the top k over the whole "
                "evaluation KB, MRR the mean reciprocal rank. At N candidates, precision is correct / mentions with a "
                "non-empty candidate list, R@1 is correct / all gold mentions and micro-F1 their harmonic mean. These "
                "are the package's definitions (docs/training_zemel.md); the ZEMEL paper does not define its P/R/F1 "
                "precisely (in its Table 2, R@1 exceeds precision for four baselines, impossible under these "
                "definitions), so the figures are not directly comparable with that table.")
    return (common + f" Accuracy is correct / all gold mentions; candidate recall is the share of gold mentions whose "
            f"gold entity is among their candidates (at most {config.get('max_candidates')}), the ceiling of the "
            "accuracy; H@k and MRR rank each mention's candidates.")


def card_sections(model_dir: str, config: Mapping[str, Any],
                  processor_config: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The card's model-specific fields, each generated from the folder's ``config.json``, ``processor_config.json``
    (read here unless given) and training results: ``family_description``, ``candidate_generation``,
    ``training_procedure``, ``metric_definitions``, ``dataset_name``."""
    if processor_config is None:
        processor_config = _read_json(os.path.join(model_dir, "processor_config.json"))
    out = {
        "family_description": family_description(config, processor_config),
        "candidate_generation": candidate_text(config),
        "training_procedure": training_text(config, _training_facts(model_dir)),
        "metric_definitions": metric_definitions(config),
    }
    if config.get("training_dataset"):
        out["dataset_name"] = str(config["training_dataset"])
    return out


def image_encoder_card_text(identity: Mapping[str, Any] | None, config: Mapping[str, Any] | None = None) -> str:
    """The card's image encoder line: the recorded encoder (name, feature kind and size, input side, weights
    fingerprint), a loud note when it was randomly initialised (``random:<arch>``), or "text only" / "not recorded"."""
    if not identity:
        if config is not None and config.get("image_features") == "none":
            return "none: the model was trained text only"
        return ("not recorded (a model saved before image encoders were recorded: use the image model it was trained "
                "with, by default `microsoft/resnet-50`)")
    text = (f"`{identity.get('name')}` ({identity.get('model_class')}, {identity.get('feature')} "
            f"{identity.get('feature_dim')}-d features at {identity.get('image_size')} px, weights sha256 "
            f"`{str(identity.get('weights_sha256') or '')[:16]}`)")
    if identity.get("random"):
        text += (f". **This model was trained with a RANDOMLY INITIALISED image encoder** (`{identity.get('name')}`, "
                 f"seed {identity.get('seed')}; tests and timing only): its image features carry no pretrained "
                 "visual knowledge, so do not use this checkpoint to link real images")
    return text


def render_model_card(
    model_dir: str | os.PathLike,
    results: Mapping[str, Any] | str | os.PathLike | None = None,
    model_name: str | None = None,
    template: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    dataset: Mapping[str, Any] | None = None,
    **fields: Any,
) -> str:
    """Render the card for a saved model folder into ``README.md`` (or ``output``); returns the written path.

    The model family (PFMEL / ZEMEL) is read from ``config.json``; ``results`` (a dict or an ``eval_results.json``
    path) fills ``model-index`` and the results table; ``dataset`` (``{"type", "name", "split", "config"}``)
    overrides the family's default dataset.
    """
    model_dir = os.fspath(model_dir)
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{model_dir!r} holds no config.json; pass the directory of a saved model")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    info = card_facts(config.get("model_type"))
    trained_on = config.get("training_dataset")
    if trained_on:  # the corpus the model was trained on, not the family's usual one
        info.update(dataset_id=str(trained_on), dataset_name=str(trained_on))
    default_dataset = {"type": info["dataset_id"], "name": info["dataset_name"], "split": "test"}
    default_dataset.update(dataset or {})
    entries = parse_results(results, default_dataset)
    model_name = model_name or os.path.basename(os.path.normpath(model_dir))
    with open(find_card_template(template), encoding="utf-8") as f:
        template_text = f.read()
    fields = {k: v for k, v in fields.items() if v is not None}
    name_or_path = str(config.get("_name_or_path") or "")
    if not name_or_path or os.path.exists(name_or_path) or name_or_path.startswith(("/", ".")):
        name_or_path = "not recorded (the package default is all-MiniLM-L6-v2)"
    fields.setdefault("base_model", name_or_path)
    processor_config = _read_json(os.path.join(model_dir, "processor_config.json"))  # read once for every field
    for key, value in card_sections(model_dir, config, processor_config).items():
        fields.setdefault(key, value)
    recorded = processor_config.get("image_encoder")  # the encoder identity written at training
    fields.setdefault("image_encoder", image_encoder_card_text(dict(recorded) if isinstance(recorded, Mapping) else None,
                                                               {**processor_config, **config}))
    text = render_card_text(template_text, model_name, info, entries, fields)
    split_front_matter(text)  # the result must parse
    output = os.fspath(output) if output is not None else os.path.join(model_dir, "README.md")
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    logger.info("wrote model card %s", output)
    return output


__all__ = [
    "save_for_hub",
    "add_pipeline_code",
    "push_model_to_hub",
    "check_model_folder",
    "render_model_card",
    "render_card_text",
    "card_sections",
    "image_encoder_card_text",
    "parse_results",
    "split_front_matter",
]
