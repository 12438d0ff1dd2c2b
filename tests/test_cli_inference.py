"""What the inference commands share (modeling_mel.cli_inference), without loading a model: the pipeline options and
their checks before any model loads, the checks of an input row's offsets and boxes, and the precision an entity index
was built in, which ``mel link`` / ``serve`` / ``calibrate`` follow."""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pytest
import torch

from modeling_mel.cli_inference import (
    DEFAULT_MAX_IMAGE_PIXELS,
    _check_boxes,
    _check_offset,
    _index_precision,
    _precision_setting,
    add_pipeline_args,
    load_model_and_processor,
    pipeline_argument_error,
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mel test")
    add_pipeline_args(parser)
    return parser.parse_args(list(argv))


def _index(folder, **config) -> str:
    folder.mkdir(exist_ok=True)
    (folder / "index_config.json").write_text(json.dumps(config))
    return str(folder)


def test_pipeline_options_and_defaults(tmp_path, capsys):
    args = _parse("--model", "m", "--kb", "kb.jsonl")
    assert (args.device, args.max_image_pixels, args.no_images, args.fp32, args.bf16) == (
        "auto", DEFAULT_MAX_IMAGE_PIXELS, False, False, False)
    for argv in (["--model", "m", "--kb", "k", "--index", "i"], ["--model", "m"],
                 ["--model", "m", "--kb", "k", "--fp32", "--bf16"]):
        with pytest.raises(SystemExit) as exit_info:
            _parse(*argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --index: not allowed with argument --kb" in err and "one of the arguments --index --kb" in err


def test_argument_errors_before_any_model_loads(tmp_path):
    kb = tmp_path / "kb.jsonl"
    kb.write_text("{}\n")
    index = _index(tmp_path / "index", kind="dense")
    assert pipeline_argument_error(_parse("--model", "m", "--kb", str(kb))) is None
    assert pipeline_argument_error(_parse("--model", "m", "--index", index, "--retriever", "bm25")) is None
    cases = {
        ("--kb", str(tmp_path / "missing.jsonl")): "does not exist",
        ("--index", str(tmp_path)): "is not an entity index directory (no index_config.json); build one with mel index",
        ("--kb", str(kb), "--retriever", str(tmp_path)): "is neither 'bm25' nor an entity index directory",
        ("--kb", str(kb), "--max_image_pixels", "0"): "--max_image_pixels must be >= 1, got 0",
        ("--kb", str(kb), "--device", "tpu"): "--device tpu: unknown device",
    }
    for argv, message in cases.items():
        problem = pipeline_argument_error(_parse("--model", "m", *argv))
        assert problem is not None and message in problem and "\n" not in problem, (argv, problem)
    with pytest.raises(SystemExit, match="mel: model 'no-such-model' is not a directory"):
        load_model_and_processor("no-such-model")


def test_offsets_and_boxes_of_an_input_row():
    assert _check_offset("mention_start", 3) == 3
    assert _check_offset("mention_start", 3.0) == 3 and type(_check_offset("mention_start", 3.0)) is int
    assert _check_offset("mention_end", np.int64(7)) == 7  # offsets from a DataFrame or a datasets column
    assert _check_offset("mention_start", None) is None and _check_offset("mention_start", "4") == "4"  # checked later
    for value in (True, 2.5, [1], {"a": 1}):
        with pytest.raises(ValueError, match="mention_start must be an integer, got"):
            _check_offset("mention_start", value)
    _check_boxes([[0, 0, 10, 10.5], [1, 2, 3, 4]])
    _check_boxes([])
    for boxes in ([[1, 2, 3]], [[1, 2, 3, True]], [["a", 2, 3, 4]], [1, 2, 3, 4], "0 0 1 1"):
        with pytest.raises(ValueError, match=r"boxes must be a list of \[x1, y1, x2, y2\] number lists"):
            _check_boxes(boxes)


def test_the_precision_of_an_index_is_followed(tmp_path, caplog):
    bf16_index = _index(tmp_path / "bf16", kind="dense", bf16=True)
    fp32_index = _index(tmp_path / "fp32", kind="dense", bf16=False)
    assert _index_precision(bf16_index) is True and _index_precision(fp32_index) is False
    assert _index_precision(None) is None and _index_precision(str(tmp_path / "missing")) is None
    assert _index_precision(_index(tmp_path / "bm25", kind="bm25", bf16=True)) is None  # no vectors: no precision
    cpu = torch.device("cpu")
    plain, fp32, bf16 = (_parse("--model", "m", "--kb", "k", *flag) for flag in ((), ("--fp32",), ("--bf16",)))
    assert _precision_setting(plain, None, cpu, "mel link") is None  # nothing recorded: the hardware decides later
    assert _precision_setting(fp32, None, cpu, "mel link") is False and _precision_setting(bf16, None, cpu, "x") is True
    assert _precision_setting(plain, fp32_index, cpu, "mel link") is False  # the index's precision
    with caplog.at_level(logging.WARNING, logger="modeling_mel.cli_inference"):
        assert _precision_setting(fp32, bf16_index, cpu, "mel link") is False  # forced, with a warning naming both
    assert any("--fp32" in r.getMessage() and "built in bf16" in r.getMessage() for r in caplog.records)
