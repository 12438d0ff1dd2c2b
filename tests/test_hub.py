"""Model card template, `mel model-card` rendering (valid YAML with the evaluation figures), Hub folder contents."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from inference_fixtures import register_all, tiny_nsp, tiny_zemel
from modeling_mel.cli import main
from modeling_mel.hub import (
    check_model_folder,
    find_card_template,
    parse_results,
    push_model_to_hub,
    render_model_card,
    save_for_hub,
    split_front_matter,
)

register_all()


@pytest.fixture(scope="module")
def hub_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hub")
    out = {}
    for name, (model, processor) in (("nsp", tiny_nsp()), ("zemel", tiny_zemel())):
        out[name] = save_for_hub(model, processor, root / name)
    return out


def test_template_has_metadata_sections_and_citations():
    with open(find_card_template(), encoding="utf-8") as f:
        text = f.read()
    meta, body = split_front_matter(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"]
    for key in ("tags", "datasets", "metrics", "model-index"):
        assert key in meta
    for section in ("## Model description", "## Intended uses and limits", "## How to use", "## Training data and procedure",
                    "## Evaluation", "## Bias, risks and limitations", "## Citations"):
        assert section in body
    assert "from_pretrained" in body and "pipeline(" in body
    assert "Pre-Training and Fine-Tuning with Next Sentence Prediction for Multimodal Entity Linking" in body
    assert "Electronics" in body and "2134" in body
    assert "Faster Zero-shot Multi-modal Entity Linking via Visual-Linguistic Representation" in body
    assert "Data Intelligence" in body and "Zheng, Qiushuo" in body


def test_mel_model_card_renders_valid_yaml_with_results(hub_dirs, tmp_path, capsys):
    results = {"eval_accuracy": 0.8125, "eval_loss": 0.41, "epoch": 4.0, "micro_f1@5": 0.7}
    path = tmp_path / "eval_results.json"
    path.write_text(json.dumps(results))
    code = main(["model-card", "--model", hub_dirs["nsp"], "--results", str(path), "--model_name", "user/pfmel: tiny #1"])
    assert code == 0
    readme = os.path.join(hub_dirs["nsp"], "README.md")
    assert capsys.readouterr().out.strip() == readme
    text = open(readme, encoding="utf-8").read()
    meta, body = split_front_matter(text)
    assert yaml.safe_load(text.split("---\n")[1]) == meta
    assert meta["library_name"] == "transformers"
    assert "multimodal-entity-linking" in meta["tags"] and "twitter_mel" in meta["datasets"]
    index = meta["model-index"][0]
    assert index["name"] == "user/pfmel: tiny #1"
    metrics = {m["type"]: m["value"] for m in index["results"][0]["metrics"]}
    assert metrics == {"accuracy": 0.8125, "loss": 0.41, "micro_f1@5": 0.7}  # epoch is not a metric
    assert index["results"][0]["dataset"] == {"type": "twitter_mel", "name": "Twitter MEL (Adjali et al. 2020)", "split": "test"}
    assert "| accuracy | 0.8125 |" in body and "{{" not in text
    assert 'from_pretrained("user/pfmel: tiny #1", trust_remote_code=True)' in body
    # the Hub's own parser accepts the metadata
    from huggingface_hub import ModelCard

    card = ModelCard(text)
    assert card.data.eval_results[0].metric_value == 0.8125


def test_card_with_splits_and_dataset_override(hub_dirs, tmp_path):
    results = {"dev": {"accuracy": 0.9, "micro_f1@100": 0.88}, "test": {"accuracy": 0.85, "micro_f1@100": 0.83}}
    out = render_model_card(hub_dirs["zemel"], results=results, dataset={"type": "my_kb", "name": "My KB"},
                            output=tmp_path / "card.md")
    meta, _ = split_front_matter(open(out, encoding="utf-8").read())
    entries = meta["model-index"][0]["results"]
    assert [(e["dataset"]["split"], e["dataset"]["type"]) for e in entries] == [("dev", "my_kb"), ("test", "my_kb")]
    assert entries[1]["metrics"][0] == {"type": "accuracy", "value": 0.85, "name": "accuracy"}
    assert "zemel" in meta["tags"] and meta["datasets"] == ["my_kb"]


def test_card_bad_results(hub_dirs, tmp_path):
    with pytest.raises(ValueError, match="no numeric metric"):
        parse_results({"note": "nothing"}, {"type": "x"})
    with pytest.raises(ValueError, match="does not exist"):
        render_model_card(hub_dirs["nsp"], results=tmp_path / "missing.json", output=tmp_path / "c.md")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        render_model_card(hub_dirs["nsp"], results=tmp_path / "bad.json", output=tmp_path / "c.md")
    with pytest.raises(ValueError, match="holds no config.json"):
        render_model_card(tmp_path, results={"accuracy": 1.0})


@pytest.mark.parametrize("family", ["nsp", "zemel"])
def test_hub_folder_is_complete(hub_dirs, family):
    directory = hub_dirs[family]
    files = set(os.listdir(directory))
    config = json.load(open(os.path.join(directory, "config.json")))
    prefix = "multimodal_nsp" if family == "nsp" else "zemel"
    assert config["auto_map"]["AutoConfig"] == f"configuration_{prefix}." + ("MultimodalNSPConfig" if family == "nsp" else "ZemelConfig")
    assert config["auto_map"]["AutoModel"].startswith(f"modeling_{prefix}.")
    assert config["custom_pipelines"]["multimodal-entity-linking"]["impl"] == "pipeline_entity_linking.MultimodalEntityLinkingPipeline"
    processor_config = json.load(open(os.path.join(directory, "processor_config.json")))
    assert processor_config["auto_map"]["AutoProcessor"].startswith(f"processing_{prefix}.")
    assert {f"configuration_{prefix}.py", f"modeling_{prefix}.py", f"processing_{prefix}.py", "pipeline_entity_linking.py",
            "image_features.py", "model.safetensors", "README.md", "tokenizer.json"} <= files
    # the modules the shipped code imports relatively ship with it
    assert {"image_encoders.py", "mention_spans.py", "regions.py"} <= files
    assert check_model_folder(directory) == []
    meta, _ = split_front_matter(open(os.path.join(directory, "README.md"), encoding="utf-8").read())
    assert meta["library_name"] == "transformers"


def test_push_refuses_an_incomplete_folder(tmp_path):
    model, _ = tiny_nsp()
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="README.md"):
        push_model_to_hub(tmp_path, "user/repo")  # fails before any network call


def test_card_facts_come_from_the_family_config(tmp_path):
    # the card reads the facts the family's config class declares (model_card_facts), not a table of family names
    from modeling_mel.configuration_zemel import ZemelConfig
    from modeling_mel.hub import card_facts, render_model_card

    assert card_facts("zemel") == ZemelConfig.model_card_facts
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model type 'bert' declares no model card facts"):
        render_model_card(str(tmp_path))


def test_card_and_docs_quote_the_settings_the_code_has(repo_root):
    """The docs state the defaults the code has (candidate cap); the card template leaves every model-specific claim
    to the config (negatives, candidates, denominators are generated: test_card_claims_follow_the_config)."""
    import dataclasses
    import re

    from modeling_mel.pfmel_training import PFMELDataArguments

    def default(cls, name):
        return {f.name: f.default for f in dataclasses.fields(cls)}[name]

    card = open(os.path.join(repo_root, "model_card.md"), encoding="utf-8").read()
    deviations = open(os.path.join(repo_root, "docs", "deviations.md"), encoding="utf-8").read()
    cap = re.search(r"`--max_candidates` \((\d+)\)", deviations)
    assert cap and int(cap.group(1)) == default(PFMELDataArguments, "max_candidates")
    for field in ("family_description", "candidate_generation", "training_procedure", "metric_definitions"):
        assert "{{ " + field + " }}" in card
    for fixed in ("--negatives", "ResNet-50 image feature", "5 epochs", "follow the ZEMEL paper"):
        assert fixed not in card  # a claim about one configuration, stated for every model


def _render(model_dir, tmp_path, config_changes, **files):
    """A card for ``model_dir`` with ``config.json`` changed (a copy of the folder), and extra result files."""
    import shutil

    folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    for name, value in files.items():
        (folder / name).write_text(json.dumps(value))
    return open(render_model_card(str(folder), output=str(folder / "card.md")), encoding="utf-8").read()


def test_card_claims_follow_the_config(hub_dirs, tmp_path):
    # issue 30 point 5: what the card says of a model comes from its own config and results: candidate rule,
    # negatives, denominators, metric definitions, backbone, NSP head, image encoder, corpus
    zemel = dict(training_negatives="bm25", training_dataset="wikimel", scoring="poly", poly_m=16, context_max_length=48,
                 candidate_max_length=40, image_features="none")
    card = _render(hub_dirs["zemel"], tmp_path, zemel, **{"train_results.json": {
        "train_mentions": 17088, "train_kb": 18880, "num_candidates": 4, "global_step": 1068, "train_loss": 0.158}})
    assert "16 learned poly codes" in card and "at most 48 tokens" in card and "at most 40 tokens" in card
    assert "BM25 + rule candidates (`--negatives bm25`, the ZEMEL paper's setting)" in card and "mined" not in card
    assert "`wikimel` corpus" in card and "17,088 mentions against a KB of 18,880 entities" in card
    assert "3 negatives from BM25" in card and "1068 optimisation steps" in card
    assert "trained text only" in card and "none: the model was trained text only" in card
    assert "precision is correct / mentions with a non-empty candidate list" in card and "Accuracy is" not in card
    assert "NSP head" not in card and "name rule: KB entities" not in card  # nothing of the other family
    meta, _ = split_front_matter(card)
    assert meta["datasets"] == ["wikimel"]
    card = _render(hub_dirs["zemel"], tmp_path, dict(zemel, training_negatives="dense", scoring="bi"))
    assert "hard negatives mined with the model being trained" in card and "(`--negatives bm25`, the" not in card
    assert "a bi-encoder head" in card and "poly codes" not in card
    assert "a corpus that was not recorded" not in card and "mixed with the backbone" not in card
    card = _render(hub_dirs["zemel"], tmp_path, dict(zemel, backbone_mixing=0.5))
    assert "0.5 * trained + 0.5 * backbone, `--backbone_mixing 0.5`" in card

    nsp = dict(nsp_head_pretrained=False, max_candidates=32, training_dataset="twitter_mel")
    card = _render(hub_dirs["nsp"], tmp_path, nsp)
    assert "trained from random weights" in card and "the paper's premise" not in card
    assert "fine-tuned on the `twitter_mel` corpus" in card
    assert "at most 32 (`max_candidates`" in card and "gold entity is among their candidates (at most 32)" in card
    assert "retriever_score_weight" not in card and "poly" not in card
    card = _render(hub_dirs["nsp"], tmp_path, dict(nsp, nsp_head_pretrained=True, max_candidates=100,
                                                  retriever_score_weight=64.0, retriever_k=10),
                   **{"eval_results.json": {"train": {"mentions": 1500, "pairs": 9000, "loss": "listwise",
                                                       "global_step": 94, "candidate_recall": 0.97}}})
    assert "pre-trained next-sentence-prediction head (the paper's premise)" in card
    assert "at most 100 (`max_candidates`" in card and "the retriever's top 10" in card and "64 x the retriever" in card
    assert "1,500 mentions, 9,000 pairs, listwise loss, 94 steps" in card
    card = _render(hub_dirs["nsp"], tmp_path, {"nsp_head_pretrained": None, "training_dataset": None})
    assert "the origin of its NSP head was not recorded" in card and "a corpus that was not recorded" in card
