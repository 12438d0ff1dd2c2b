"""The ``mel`` console script: every subcommand has --help; ``mel index`` and ``mel link`` on the sample corpus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from inference_fixtures import register_all, tiny_nsp, tiny_zemel
from modeling_mel.cli import COMMANDS, main

register_all()

SUBCOMMANDS = ["demo", "build-dataset", "pretrain", "finetune", "train-zemel", "evaluate", "index", "link", "calibrate", "serve",
               "export-dataset", "model-card", "zemel-ablations"]


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name, capsys):
    assert name in COMMANDS
    try:
        code = main([name, "--help"])
    except SystemExit as exit_:  # argparse exits after printing the help
        code = exit_.code
    assert code in (0, None)
    out = capsys.readouterr().out
    assert out.strip(), f"mel {name} --help printed nothing"


def test_console_script_help():
    exe = shutil.which("mel", path=os.path.dirname(sys.executable))
    assert exe, "the mel console script is not installed (pip install -e .)"
    result = subprocess.run([exe, "link", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--index" in result.stdout


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> str:
    from modeling_mel.builders import sample

    root = str(tmp_path_factory.mktemp("sample"))
    sample.generate_jsonl_sample(root, seed=0, n_entities=12, n_mentions=24, image_size=32)
    return root


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, (model, processor) in (("zemel", tiny_zemel()), ("nsp", tiny_nsp())):
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _with_bad_lines(sample: str, tmp_path) -> tuple[str, int]:
    with open(os.path.join(sample, "mentions.jsonl"), encoding="utf-8") as f:
        lines = f.read().splitlines()[:10]
    lines += [
        "{not json",
        json.dumps({"id": "unaligned", "text": "nothing to see here", "mention": "obama"}),  # linked, without a span
        "",
        json.dumps(["a", "list"]),
        json.dumps({"id": "bad-image", "text": "wiggins again", "mention": "wiggins", "image": "images/absent.png"}),
    ]
    path = tmp_path / "mentions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    shutil.copytree(os.path.join(sample, "images"), tmp_path / "images", dirs_exist_ok=True)
    return str(path), len(lines)


def _read(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_index_then_link_zemel(sample, saved_models, tmp_path, capsys):
    index_dir = tmp_path / "index"
    code = main(["index", "--model", saved_models["zemel"], "--kb", os.path.join(sample, "kb.jsonl"),
                 "--out", str(index_dir), "--no_images", "--batch_size", "5"])
    assert code == 0 and (index_dir / "faiss.index").is_file()
    inputs, n_lines = _with_bad_lines(sample, tmp_path)
    output = tmp_path / "links.jsonl"
    code = main(["link", "--model", saved_models["zemel"], "--index", str(index_dir), "--input", inputs,
                 "--output", str(output), "--no_images", "--top_k", "3", "--batch_size", "4"])
    assert code == 0
    records = _read(output)
    assert len(records) == n_lines  # one output line per input line
    assert [r["line"] for r in records] == list(range(1, n_lines + 1))
    for r in records[:10]:
        assert "error" not in r and 1 <= len(r["predictions"]) <= 3 and r["gold"]
        assert set(r["predictions"][0]) == {"entity_id", "name", "score"}
    errors = {r["line"]: r["error"] for r in records if "error" in r}
    assert set(errors) == {11, 13, 14}  # the absent image only warns (non-strict): linked text-only
    assert "not valid JSON" in errors[11] and errors[13] == "empty line" and "list" in errors[14]
    # "obama" aligns nowhere in its text: still linked ([M] obama [/M] first), to a full top 3
    assert "error" not in records[11] and len(records[11]["predictions"]) == 3
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["lines"] == n_lines and summary["errors"] == 3


def test_link_pfmel_with_kb_and_images(sample, saved_models, tmp_path):
    from transformers import ResNetModel

    from modeling_mel.image_encoders import tiny_resnet_config

    ResNetModel(tiny_resnet_config(16)).save_pretrained(tmp_path / "resnet")  # a 16-d image model for the tiny model
    inputs, n_lines = _with_bad_lines(sample, tmp_path)
    output = tmp_path / "links.jsonl"
    code = main(["link", "--model", saved_models["nsp"], "--kb", os.path.join(sample, "kb.jsonl"), "--input", inputs,
                 "--output", str(output), "--image_model", str(tmp_path / "resnet"), "--strict_images"])
    assert code == 0
    records = _read(output)
    assert len(records) == n_lines
    assert "error" in records[-1] and "absent.png" in records[-1]["error"]  # strict mode: the bad image fails its line
    gold_hits = [r for r in records[:10] if r["gold"] in {p["entity_id"] for p in r["predictions"]}]
    assert len(gold_hits) >= 8  # the name rule keeps the gold entity among the candidates


def test_cli_errors_are_clear(saved_models, sample, tmp_path, capsys):
    code = main(["link", "--model", saved_models["nsp"], "--kb", os.path.join(sample, "kb.jsonl"),
                 "--input", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "o.jsonl")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    code = main(["index", "--model", saved_models["zemel"], "--kb", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "i"),
                 "--no_images"])
    assert code == 2 and "empty" in capsys.readouterr().err
    code = main(["index", "--kb", os.path.join(sample, "kb.jsonl"), "--out", str(tmp_path / "bm25"), "--bm25_only"])
    assert code == 0 and (tmp_path / "bm25" / "entities.jsonl").is_file()
