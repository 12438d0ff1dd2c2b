"""``mel index`` (modeling_mel.cli_index) without a model: a metadata-only (BM25) index of a KB, the options it
documents, and bad options refused (exit code 2, one line naming the option) before anything is read or loaded. With
models: tests/test_entity_index.py, test_index_files.py, test_compressed_index.py, test_sharded_index.py."""

from __future__ import annotations

import json
import os

import pytest

from inference_fixtures import KB_ROWS, write_kb
from modeling_mel import cli_index
from modeling_mel.cli import main


@pytest.fixture()
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(cli_index, "load_model_and_processor", refuse)  # the name mel index calls


def test_help_lists_the_index_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--kb", "--out", "--index_type", "--memory_budget", "--shard_size", "--bm25_only", "--device"):
        assert option in out, option


def test_bm25_only_index_of_a_kb(tmp_path, no_model_loading):
    kb = write_kb(str(tmp_path))
    out = tmp_path / "index"
    assert main(["index", "--bm25_only", "--kb", kb, "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["entities.jsonl", "index_config.json"]  # no vectors, no FAISS file
    config = json.loads((out / "index_config.json").read_text())
    assert config["kind"] == "bm25" and config["num_entities"] == len(KB_ROWS)
    entities = [json.loads(line) for line in open(out / "entities.jsonl", encoding="utf-8")]
    assert [e["entity_id"] for e in entities] == [r["entity_id"] for r in KB_ROWS]  # KB order


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch_size", "0"], "mel index: --batch_size must be >= 1, got 0"),
        (["--ef_search", "-5"], "mel index: --ef_search must be >= 1, got -5"),
        (["--shard_size", "0"], "mel index: --shard_size must be >= 1, got 0"),
    ],
)
def test_non_positive_options_exit_2_with_one_line(extra, message, tmp_path, capsys, no_model_loading):
    argv = ["index", "--model", str(tmp_path / "model"), "--kb", str(tmp_path / "kb.jsonl"),
            "--out", str(tmp_path / "o")]
    assert main(argv + extra) == 2
    assert capsys.readouterr().err.strip() == message
    assert not os.path.exists(tmp_path / "o")


def test_parser_errors_name_the_option(tmp_path, capsys, no_model_loading):
    base = ["index", "--kb", str(tmp_path / "kb.jsonl"), "--out", str(tmp_path / "o")]
    for argv, message in ((base, "--model is required (or --bm25_only for a metadata-only index)"),
                          (base + ["--bm25_only", "--memory_budget", "lots"], "--memory_budget:"),
                          (base + ["--bm25_only", "--index_type", "annoy"], "argument --index_type: invalid choice")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert f"mel index: error: {message}" in capsys.readouterr().err
