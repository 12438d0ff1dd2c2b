"""Reliability round 2 (issue 29): broken model and index folders, KB rows, Unicode normal forms, the bf16 choice,
NaN NIL thresholds, numpy offsets, non-positive ``mel index`` options and huge images (calibrated index folders:
``tests/test_index_files.py``).

Every failure is one line naming the file (or option, row, image) and the fix -- ``mel`` exits with code 2 -- or the
behaviour is now correct.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import pickle
import shutil
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from transformers import pipeline

from inference_fixtures import KB_ROWS, register_all, tiny_extractor, tiny_nsp, tiny_zemel, write_kb
from modeling_mel import hardware
from modeling_mel.cli import main
from modeling_mel.pipeline_entity_linking import TASK, MultimodalEntityLinkingPipeline

register_all()


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures: a saved tiny ZEMEL model, a KB, an index built from them, a mentions file
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = str(tmp_path_factory.mktemp("reliability"))
    kb = write_kb(root)
    model, processor = tiny_zemel()
    good = os.path.join(root, "zemel")
    model.save_pretrained(good)
    processor.save_pretrained(good)
    mentions = os.path.join(root, "mentions.jsonl")
    with open(mentions, "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": "launch day at NASA with friends", "mention": "NASA"}) + "\n")
        f.write(json.dumps({"text": "I love new york city in winter", "mention": "new york city"}) + "\n")
    index = os.path.join(root, "index")
    assert main(["index", "--model", good, "--kb", kb, "--out", index, "--no_images", "--batch_size", "4"]) == 0
    return {"root": root, "kb": kb, "model": good, "mentions": mentions, "index": index}


def _one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("mel ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def _copy_model(files: dict, tmp_path, name: str) -> str:
    folder = str(tmp_path / name)
    shutil.copytree(files["model"], folder)
    return folder


def _truncate(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


class _Payload:
    """A pickle that would create a folder when unpickled without ``weights_only``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _break_truncated_config(folder: str, tmp_path) -> tuple[str, ...]:
    _truncate(os.path.join(folder, "config.json"))
    return "config.json", "not valid JSON", "save_pretrained"


def _break_missing_weights(folder: str, tmp_path) -> tuple[str, ...]:
    os.remove(os.path.join(folder, "model.safetensors"))
    return "has no weights", "model.safetensors", "save_pretrained"


def _break_truncated_weights(folder: str, tmp_path) -> tuple[str, ...]:
    _truncate(os.path.join(folder, "model.safetensors"))
    return "model.safetensors", "truncated or corrupt", "save_pretrained"


def _break_malicious_pickle(folder: str, tmp_path) -> tuple[str, ...]:
    os.remove(os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "pytorch_model.bin"), "wb") as f:
        pickle.dump(_Payload(str(tmp_path / "payload-ran")), f, protocol=2)
    return "pytorch_model.bin", "weights_only", "do not load it"


BROKEN_MODELS = {
    "truncated_config_json": _break_truncated_config,
    "missing_model_safetensors": _break_missing_weights,
    "truncated_model_safetensors": _break_truncated_weights,
    "malicious_pytorch_model_bin": _break_malicious_pickle,
}


# ----------------------------------------------------------------------------------------------------------------------
# A. Broken model and index folders, bad KB rows, a pipeline without a model
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["index", "link"])
@pytest.mark.parametrize("case", sorted(BROKEN_MODELS))
def test_broken_model_folder_is_a_one_line_error(case, command, files, tmp_path, capsys):
    folder = _copy_model(files, tmp_path, case)
    parts = BROKEN_MODELS[case](folder, tmp_path)
    if command == "index":
        argv = ["index", "--model", folder, "--kb", files["kb"], "--out", str(tmp_path / "out"), "--no_images"]
    else:
        argv = ["link", "--model", folder, "--kb", files["kb"], "--input", files["mentions"],
                "--output", str(tmp_path / "links.jsonl"), "--no_images"]
    assert main(argv) == 2
    line = _one_line_error(capsys, *parts)
    assert repr(folder) in line
    assert not os.path.exists(tmp_path / "payload-ran")  # the pickle's code never ran


def test_poly_m_edited_after_indexing_names_config_json(files, tmp_path, capsys):
    folder = _copy_model(files, tmp_path, "edited")
    config_path = os.path.join(folder, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["poly_m"] = 8  # saved with 4
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    code = main(["link", "--model", folder, "--index", files["index"], "--input", files["mentions"],
                 "--output", str(tmp_path / "links.jsonl"), "--no_images"])
    assert code == 2
    line = _one_line_error(capsys, "config.json", "does not fit the saved weights", "poly_codes", "[4, 32]", "[8, 32]")
    assert "restore the saved config.json" in line


def test_index_config_format_version_list_is_one_line(files, tmp_path, capsys):
    from modeling_mel.entity_index import EntityIndex

    index = str(tmp_path / "index")
    shutil.copytree(files["index"], index)
    path = os.path.join(index, "index_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["format_version"] = [2]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"format_version must be an integer, got \[2\]"):
        EntityIndex.load(index)
    code = main(["link", "--model", files["model"], "--index", index, "--input", files["mentions"],
                 "--output", str(tmp_path / "links.jsonl"), "--no_images"])
    assert code == 2
    _one_line_error(capsys, "index_config.json", "format_version", "mel index")


@pytest.mark.parametrize("value, kind", [(["singer", "actor"], "list"), ({"en": "singer"}, "object")])
@pytest.mark.parametrize("command", ["index", "link"])
def test_kb_description_list_or_dict_names_line_and_field(command, value, kind, files, tmp_path, capsys):
    kb = str(tmp_path / "kb.jsonl")
    rows = [dict(r) for r in KB_ROWS]
    rows[2]["description"] = value  # jtimberlake, the 3rd line
    with open(kb, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    if command == "index":
        argv = ["index", "--model", files["model"], "--kb", kb, "--out", str(tmp_path / "out"), "--no_images"]
    else:
        argv = ["link", "--model", files["model"], "--kb", kb, "--input", files["mentions"],
                "--output", str(tmp_path / "links.jsonl"), "--no_images"]
    assert main(argv) == 2
    _one_line_error(capsys, f"{kb} line 3", "'jtimberlake'", f"description must be a string, got a {kind}")


def test_pipeline_without_a_model_says_pass_model(files):
    with pytest.raises(ValueError, match=r"needs a model: pass model="):
        pipeline(TASK, kb=files["kb"])


# ----------------------------------------------------------------------------------------------------------------------
# B. Mention alignment across Unicode normal forms: tests/test_mention_spans.py


# ----------------------------------------------------------------------------------------------------------------------
# C. bf16 chosen by the hardware, recorded in the index, followed by the commands that read it
# ----------------------------------------------------------------------------------------------------------------------


def _clock(fp32_s: float, bf16_s: float):
    """A fake ``time.perf_counter``: read in pairs, alternately ``fp32_s`` and ``bf16_s`` apart (how a timing of one
    product of each kind, interleaved, would see them)."""
    deltas = itertools.cycle([fp32_s, 0.0, bf16_s, 0.0])
    now = [0.0]

    def perf_counter() -> float:
        now[0] += next(deltas)
        return now[0]

    return perf_counter


@pytest.mark.parametrize("flags", [{"avx2", "avx512f", "avx512_bf16"}, {"avx2", "fma"}])
def test_bf16_choice_does_not_change_with_timings(flags, monkeypatch):
    """Issue 29: under load the timed choice flipped between runs (an index built in fp32, served in bf16). Whether
    bf16 looks 50x slower or 50x faster than fp32, the answer is the same: the CPU's flags decide."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: set(flags))
    answers = []
    try:
        for fp32_s, bf16_s in [(0.001, 0.05), (0.05, 0.001), (0.001, 0.05), (0.05, 0.001)]:  # slow, fast, slow, fast
            monkeypatch.setattr(time, "perf_counter", _clock(fp32_s, bf16_s))
            hardware.bf16_is_fast.cache_clear()
            answers.append(hardware.bf16_is_fast("cpu"))
    finally:
        hardware.bf16_is_fast.cache_clear()
    assert answers == [("avx512_bf16" in flags)] * 4


def test_bf16_choice_of_this_machine_is_stable():
    hardware.bf16_is_fast.cache_clear()
    first = hardware.bf16_is_fast("cpu")
    hardware.bf16_is_fast.cache_clear()
    assert all(hardware.bf16_is_fast.__wrapped__("cpu") is first for _ in range(3))


def _pipeline_args(argv: list[str]) -> argparse.Namespace:
    from modeling_mel.cli_inference import add_pipeline_args

    parser = argparse.ArgumentParser()
    add_pipeline_args(parser)
    return parser.parse_args(argv)


def test_index_records_its_precision_and_link_follows_it(files, tmp_path, caplog):
    from modeling_mel.cli_inference import build_pipeline

    with open(os.path.join(files["index"], "index_config.json"), encoding="utf-8") as f:
        assert json.load(f)["bf16"] is hardware.bf16_is_fast("cpu")  # mel index, no flag: the hardware decides
    bf16_index = str(tmp_path / "bf16_index")
    assert main(["index", "--model", files["model"], "--kb", files["kb"], "--out", bf16_index, "--no_images",
                 "--bf16"]) == 0
    with open(os.path.join(bf16_index, "index_config.json"), encoding="utf-8") as f:
        assert json.load(f)["bf16"] is True
    base = ["--model", files["model"], "--index", bf16_index, "--no_images", "--device", "cpu"]
    with caplog.at_level(logging.INFO, logger="modeling_mel.cli_inference"):
        pipe = build_pipeline(_pipeline_args(base))
    assert pipe.bf16 is True  # the index's precision, whatever this machine would choose
    assert any("the precision entity index" in r.getMessage() and "bf16" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="modeling_mel.cli_inference"):
        pipe = build_pipeline(_pipeline_args(base + ["--fp32"]))
    assert pipe.bf16 is False  # an explicit flag wins, with a warning naming both precisions
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("--fp32" in m and "built in bf16" in m for m in warned), warned



def test_bf16_index_on_a_machine_without_bf16_kernels_runs_fp32(files, tmp_path, caplog, monkeypatch):
    # bf16 without native kernels is many times slower than fp32 (70x on AVX2): the command falls back, and says so
    from modeling_mel.cli_inference import build_pipeline

    bf16_index = str(tmp_path / "bf16_index")
    assert main(["index", "--model", files["model"], "--kb", files["kb"], "--out", bf16_index, "--no_images",
                 "--bf16"]) == 0
    monkeypatch.setattr(hardware, "bf16_is_fast", lambda device=None: False)
    base = ["--model", files["model"], "--index", bf16_index, "--no_images", "--device", "cpu"]
    with caplog.at_level(logging.INFO, logger="modeling_mel.cli_inference"):
        pipe = build_pipeline(_pipeline_args(base))
    assert pipe.bf16 is False
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("built in bf16" in m and "no native bf16 kernels" in m and "fp32" in m for m in warned), warned
    assert build_pipeline(_pipeline_args(base + ["--bf16"])).bf16 is True  # forcing it still works


# ----------------------------------------------------------------------------------------------------------------------
# D. NaN NIL thresholds, numpy offsets, non-positive options, huge images, calibrated index folders
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nsp_pipe(files):
    model, processor = tiny_nsp()
    return pipeline(TASK, model=model, processor=processor, kb=files["kb"], image_extractor=tiny_extractor(),
                    pipeline_class=MultimodalEntityLinkingPipeline)


def test_nan_nil_threshold_is_refused(nsp_pipe, tmp_path):
    from modeling_mel.nil import (
        check_nil_threshold,
        choose_threshold,
        load_calibration,
        nil_settings,
        save_calibration,
    )

    item = {"text": "launch day at NASA", "mention": "NASA"}
    with pytest.raises(ValueError, match="NaN"):
        nsp_pipe(item, nil_threshold=float("nan"))
    assert nsp_pipe(item, nil_threshold=-1e9)[0]["entity_id"] == "nasa"  # a number still works
    with pytest.raises(ValueError, match="NaN"):
        nil_settings(None, "nan")  # the evaluation scripts' --nil_threshold
    with pytest.raises(ValueError, match="NaN"):
        check_nil_threshold(math.nan)
    with pytest.raises(ValueError, match="NaN"):
        save_calibration(str(tmp_path), {"threshold": float("nan")})
    (tmp_path / "nil_calibration.json").write_text('{"threshold": NaN}')
    with pytest.raises(ValueError, match="NaN.*mel calibrate"):
        load_calibration(str(tmp_path))
    with pytest.raises(ValueError, match="max_in_kb_drop"):
        choose_threshold(["a"], [0.5], ["a"], [False], max_in_kb_drop=float("nan"))
    with pytest.raises(ValueError, match="NaN score"):
        choose_threshold(["a", "b"], [0.5, float("nan")], ["a", "b"], [False, True])
    # a NaN threshold in a model folder's calibration: refused when the pipeline is built
    model, processor = tiny_nsp()
    folder = str(tmp_path / "nsp")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    with open(os.path.join(folder, "nil_calibration.json"), "w", encoding="utf-8") as f:
        f.write('{"threshold": NaN}')
    with pytest.raises(ValueError, match="nil_calibration.json.*mel calibrate"):
        pipeline(TASK, model=folder, kb=KB_ROWS, use_images=False, pipeline_class=MultimodalEntityLinkingPipeline)


def test_numpy_integer_offsets_are_accepted(nsp_pipe):
    from modeling_mel.cli_inference import _check_offset

    assert _check_offset("mention_start", np.int64(14)) == 14 and type(_check_offset("x", np.int32(3))) is int
    with pytest.raises(ValueError, match="must be an integer"):
        _check_offset("mention_start", np.float64(1.5))
    item = {"text": "launch day at NASA with friends", "mention_start": np.int64(14), "mention_end": np.int64(18)}
    checked = MultimodalEntityLinkingPipeline._check_input(item)
    assert (checked["mention"], checked["mention_start"], checked["mention_end"]) == ("NASA", 14, 18)
    assert nsp_pipe(item)[0]["entity_id"] == "nasa"


@pytest.mark.parametrize("option, value", [("--max_length", "0"), ("--ef_search", "-1"), ("--batch_size", "0"),
                                           ("--max_image_pixels", "0")])
def test_index_refuses_non_positive_options(option, value, files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["index", "--model", files["model"], "--kb", files["kb"], "--out", str(out), option, value]) == 2
    _one_line_error(capsys, f"{option} must be >= 1, got {value}")
    assert not out.exists()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _big_1bit_png(side: int = 13000) -> bytes:
    """A valid all-black 1-bit PNG of ``side x side`` pixels: about 20 KB on disk, 169M pixels (under PIL's error
    limit of about 179M), 2.1 GB of memory once decoded."""
    row = b"\0" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture()
def huge_png(tmp_path, monkeypatch) -> str:
    from PIL import ImageFile

    path = tmp_path / "huge.png"
    path.write_bytes(_big_1bit_png())
    assert path.stat().st_size < 100_000

    def no_decoding(self, *args, **kwargs):
        pytest.fail(f"{self.filename} was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)  # refused from the header, never decoded
    return str(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_image_is_refused_from_its_header(huge_png):
    from PIL import Image

    from modeling_mel.cli_inference import DEFAULT_MAX_IMAGE_PIXELS as CLI_DEFAULT
    from modeling_mel.image_features import (
        DEFAULT_MAX_IMAGE_PIXELS,
        ImageReadError,
        ImageReadWarning,
        open_image,
    )

    assert CLI_DEFAULT == DEFAULT_MAX_IMAGE_PIXELS == 50_000_000 < Image.MAX_IMAGE_PIXELS
    expected = r"huge\.png.* is 13000x13000 = 169,000,000 pixels, over the limit of 50,000,000"
    with pytest.raises(ImageReadError, match=expected):
        open_image(huge_png)
    extractor = tiny_extractor()
    with pytest.warns(ImageReadWarning, match="13000x13000"):
        feats = extractor.encode([huge_png])
    assert not feats.any() and extractor.stats["too_large"] == 1
    extractor.strict = True
    with pytest.raises(ImageReadError, match="13000x13000"):
        extractor.encode([huge_png])
    with Image.open(huge_png) as lazy:  # a lazily opened PIL image is checked before its content key decodes it
        with pytest.raises(ImageReadError, match="13000x13000"):
            extractor.encode([lazy])


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pipeline_refuses_a_huge_mention_image(huge_png, files, caplog):
    model, processor = tiny_nsp()
    kwargs = dict(model=model, processor=processor, kb=files["kb"], image_extractor=tiny_extractor(),
                  pipeline_class=MultimodalEntityLinkingPipeline)
    strict = pipeline(TASK, strict_images=True, **kwargs)
    with pytest.raises(ValueError, match=r"huge\.png.*13000x13000 = 169,000,000 pixels"):
        strict({"text": "launch day at NASA", "mention": "NASA", "image": huge_png})
    lenient = pipeline(TASK, **kwargs)
    with caplog.at_level(logging.WARNING):
        assert lenient({"text": "launch day at NASA", "mention": "NASA", "image": huge_png})[0]["entity_id"] == "nasa"
    assert any("13000x13000" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="max_image_pixels must be >= 1"):
        pipeline(TASK, max_image_pixels=0, **kwargs)


@pytest.mark.parametrize("command", ["index", "link", "calibrate", "serve"])
def test_max_image_pixels_is_documented(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--max_image_pixels" in capsys.readouterr().out


def test_link_refuses_non_positive_max_image_pixels(files, tmp_path, capsys):
    code = main(["link", "--model", files["model"], "--kb", files["kb"], "--input", files["mentions"],
                 "--output", str(tmp_path / "links.jsonl"), "--max_image_pixels", "-5"])
    assert code == 2
    _one_line_error(capsys, "--max_image_pixels must be >= 1, got -5")
