"""``mel calibrate`` (modeling_mel.cli_calibrate) before any model loads: every labelled row is checked and a bad one
is named by its file line; a corpus folder needs its builder; the destination is checked; each problem is one line
and exit code 2. Calibration itself (the threshold, the file, the pipeline reading it): tests/test_nil.py."""

from __future__ import annotations

import json

import pytest

from inference_fixtures import write_kb
from modeling_mel import cli_calibrate
from modeling_mel.cli import main

NASA = "launch day at NASA with friends"


@pytest.fixture()
def setup(tmp_path, monkeypatch) -> dict[str, str]:
    """A KB, and a model folder that must never be loaded (every case here fails before)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(cli_calibrate, "load_model_and_processor", refuse)
    (tmp_path / "model").mkdir()
    return {"nsp": str(tmp_path / "model"), "kb": write_kb(str(tmp_path))}


def _line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def _one_line(err: str) -> str:
    """The one ``mel calibrate: ...`` error line of a run's stderr."""
    lines = [line for line in err.splitlines() if line.startswith("mel ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_help_lists_the_protocol_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data", "--nil_fraction", "--max_in_kb_drop", "--seed", "--out", "--index", "--retriever"):
        assert option in out, option


def test_mel_calibrate_names_the_file_line_of_a_bad_row_before_loading(setup, tmp_path, capsys):
    rows = [_line({"text": f"{NASA} {i}", "mention": "NASA", "entity_id": "nasa"}) for i in range(8)]
    rows.insert(3, b"")  # a blank line and an unlabelled row: file lines and labelled rows differ
    rows.insert(5, _line({"text": NASA, "mention": "NASA"}))
    rows.append(_line({"text": NASA, "mention_start": 14, "mention_end": 99, "entity_id": "nasa"}))  # line 11
    data = tmp_path / "dev.jsonl"
    data.write_bytes(b"\n".join(rows) + b"\n")
    code = main(["calibrate", "--model", setup["nsp"], "--kb", setup["kb"], "--data", str(data), "--no_images"])
    assert code == 2
    err = _one_line(capsys.readouterr().err)
    assert f"--data {str(data)!r} line 11:" in err and "mention span (14, 99)" in err and "input 8" not in err


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"text": "", "mention": "NASA"}, "'text' must be a non-empty string"),
        ({"text": NASA, "mention_start": True, "mention_end": 4}, "mention_start must be an integer"),
        ({"text": NASA, "mention": "NASA", "boxes": [[1, 2]]}, "boxes must be a list"),
        ({"text": NASA}, "give 'mention'"),
    ],
)
def test_mel_calibrate_row_checks(setup, tmp_path, capsys, row, expected):
    data = tmp_path / "dev.jsonl"
    data.write_bytes(_line({"text": NASA, "mention": "NASA", "entity_id": "nasa"}) + b"\n"
                     + _line({**row, "entity_id": "nasa"}) + b"\n")
    assert main(["calibrate", "--model", setup["nsp"], "--kb", setup["kb"], "--data", str(data), "--no_images"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "line 2:" in err and expected in err


def test_data_and_destination_checks(setup, tmp_path, capsys):
    def calibrate(*extra: str, kb: tuple[str, ...] = ("--kb", setup["kb"])) -> str:
        assert main(["calibrate", "--model", setup["nsp"], *kb, "--no_images", *extra]) == 2
        return _one_line(capsys.readouterr().err)

    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_bytes(_line({"text": NASA, "mention": "NASA"}) + b"\n")
    assert "has no mention with an entity_id" in calibrate("--data", str(unlabelled))
    assert "is a folder: give its builder with --dataset" in calibrate("--data", str(tmp_path))
    labelled = tmp_path / "dev.jsonl"
    labelled.write_bytes(_line({"text": NASA, "mention": "NASA", "entity_id": "nasa"}) + b"\n")
    missing = str(tmp_path / "no_such_folder")
    assert f"folder {missing!r} does not exist; pass an existing folder as --out" in calibrate(
        "--data", str(labelled), "--out", missing)
    assert "is not an entity index directory" in calibrate("--data", str(labelled), kb=("--index", str(tmp_path)))
    assert "--device tpu: unknown device" in calibrate("--data", str(labelled), "--device", "tpu")
