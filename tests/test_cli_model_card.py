"""``mel model-card`` (modeling_mel.cli_model_card) on a folder holding only a saved config: the options reach the card
(name, results per split, dataset override, base model, output path) and bad input is one line and exit code 2. The
template and the Hub folder: tests/test_hub.py."""

from __future__ import annotations

import json

import pytest

from modeling_mel.cli import main
from modeling_mel.configuration_multimodal_nsp import MultimodalNSPConfig
from modeling_mel.hub import split_front_matter


@pytest.fixture()
def model_dir(tmp_path) -> str:
    folder = tmp_path / "pfmel"
    MultimodalNSPConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37).save_pretrained(folder)
    return str(folder)


def test_options_reach_the_card(model_dir, tmp_path, capsys):
    results = tmp_path / "eval_results.json"
    results.write_text(json.dumps({"dev": {"accuracy": 0.5}, "test": {"accuracy": 0.75}}))
    output = tmp_path / "card.md"
    assert main(["model-card", "--model", model_dir, "--results", str(results), "--output", str(output),
                 "--model_name", "me/pfmel-tiny", "--dataset_type", "my_kb", "--base_model", "my/bert"]) == 0
    assert capsys.readouterr().out.strip() == str(output)  # the card's path is printed
    meta, body = split_front_matter(output.read_text(encoding="utf-8"))
    assert meta["datasets"] == ["my_kb"] and meta["library_name"] == "transformers"
    (entry,) = meta["model-index"]
    assert entry["name"] == "me/pfmel-tiny"
    assert [(r["dataset"]["split"], r["dataset"]["type"], r["metrics"][0]["value"]) for r in entry["results"]] == [
        ("dev", "my_kb", 0.5), ("test", "my_kb", 0.75)]
    assert body.lstrip().startswith("# me/pfmel-tiny") and "Base text encoder: `my/bert`" in body
    assert not (tmp_path / "pfmel" / "README.md").exists()  # --output, not the model folder


def test_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert main(["model-card", "--model", model_dir, "--results", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mel model-card: ") and "not valid JSON" in err and "\n" not in err
    assert main(["model-card", "--model", str(tmp_path)]) == 2
    assert "holds no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["model-card", "--results", str(bad)])
    assert exit_info.value.code == 2 and "the following arguments are required: --model" in capsys.readouterr().err
