"""``mel build-dataset`` and ``mel export-dataset`` (modeling_mel.cli_datasets): both configs of a corpus saved with
save_to_disk; bad input is one line and exit code 2."""

from __future__ import annotations

import os

import pytest

from modeling_mel.cli import main
from test_richpedia_mel import write_richpedia
from test_wikimel import KB, write_wikimel


@pytest.fixture(scope="module")
def wikimel_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("wikimel"))
    write_wikimel(d)
    return d


@pytest.fixture(scope="module")
def richpedia_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("richpedia"))
    write_richpedia(d)
    return d


def _one_line(err: str, prefix: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_build_dataset_command(wikimel_dir, richpedia_dir, tmp_path, capsys):
    import datasets

    for name, d in (("wikimel", wikimel_dir), ("richpedia_mel", richpedia_dir)):
        out = str(tmp_path / name)
        assert main(["build-dataset", "--dataset", name, "--data_dir", d, "--out", out,
                     "--cache_dir", str(tmp_path / "c")]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == out  # the output folder is printed
        assert len(datasets.load_from_disk(os.path.join(out, "kb"))) == len(KB)
        assert "train" in datasets.load_from_disk(os.path.join(out, "mentions"))


def test_build_dataset_errors_are_one_line(wikimel_dir, tmp_path, capsys):
    missing = str(tmp_path / "missing")
    assert main(["build-dataset", "--dataset", "wikimel", "--data_dir", missing, "--out", str(tmp_path / "o")]) == 2
    assert f"data_dir={missing!r} is not a folder" in _one_line(capsys.readouterr().err, "mel build-dataset: ")
    assert main(["build-dataset", "--dataset", "wikidata", "--data_dir", wikimel_dir,
                 "--out", str(tmp_path / "o")]) == 2
    assert "Unknown dataset 'wikidata'" in _one_line(capsys.readouterr().err, "mel build-dataset: ")
    assert not os.path.exists(tmp_path / "o")
    with pytest.raises(SystemExit) as exit_info:
        main(["build-dataset", "--dataset", "wikimel", "--data_dir", wikimel_dir])
    assert exit_info.value.code == 2 and "the following arguments are required: --out" in capsys.readouterr().err


def test_export_dataset_is_the_hub_dataset_export(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export-dataset", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mel export-dataset") and "--push_to_hub" in out
    missing = str(tmp_path / "missing")
    assert main(["export-dataset", "--dataset", "mel_jsonl", "--data_dir", missing, "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in _one_line(capsys.readouterr().err, "mel export-dataset: ")
