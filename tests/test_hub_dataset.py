"""Export to Parquet + dataset card, then `load_dataset(out_dir, config)` with no code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest
import yaml

from modeling_mel.builders import sample
from modeling_mel.corpus import KB_FEATURES, MENTION_FEATURES, load_mel_corpus
from modeling_mel.hub_dataset import build_export_parser, export_dataset, export_main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    raw = str(root / "raw")
    sample.generate_twitter_sample(raw, seed=0, n_entities=12, n_mentions=60)
    cache = str(root / "cache")
    mentions = load_mel_corpus("twitter_mel", raw, cache_dir=cache)
    kb = load_mel_corpus("twitter_mel", raw, config="kb", cache_dir=cache)
    return {"root": root, "raw": raw, "cache": cache, "mentions": mentions, "kb": kb}


def _plain(value):
    """Rows with images replaced by their pixels, comparable with ==."""
    if hasattr(value, "getpixel"):
        return ("image", value.size, np.asarray(value.convert("RGB")).tobytes())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def test_export_roundtrip_embeds_images(built, tmp_path):
    out = str(tmp_path / "hub")
    expected_mentions = {s: [_plain(r) for r in d] for s, d in built["mentions"].items()}
    expected_kb = [_plain(r) for r in built["kb"]]
    readme = export_dataset(
        {"mentions": built["mentions"], "kb": built["kb"]},
        out,
        pretty_name="Twitter MEL sample",
        description="A synthetic sample.",
        citation="@misc{x, title={x}}",
        license="cc-by-4.0",
    )
    # the images must be inside the Parquet files: hide the originals before reading back
    shutil.move(os.path.join(built["raw"], "images"), str(tmp_path / "hidden_images"))
    try:
        mentions = datasets.load_dataset(out, "mentions", cache_dir=str(tmp_path / "c"))
        kb = datasets.load_dataset(out, "kb", split="train", cache_dir=str(tmp_path / "c"))
        assert list(mentions) == list(built["mentions"])
        for s, d in mentions.items():
            assert d.features == MENTION_FEATURES
            assert [_plain(r) for r in d] == expected_mentions[s]
        assert kb.features == KB_FEATURES
        assert [_plain(r) for r in kb] == expected_kb
        assert any(r["image"] is not None for r in mentions["train"])
    finally:
        shutil.move(str(tmp_path / "hidden_images"), os.path.join(built["raw"], "images"))

    text = open(readme, encoding="utf-8").read()
    front = yaml.safe_load(text.split("---")[1])
    assert front["license"] == "cc-by-4.0" and front["pretty_name"] == "Twitter MEL sample"
    assert front["task_categories"] and "entity-linking" in front["tags"]
    configs = {c["config_name"]: c for c in front["configs"]}
    assert configs["mentions"]["default"] is True
    assert [f["split"] for f in configs["mentions"]["data_files"]] == list(built["mentions"])
    for section in ("## Description", "## Structure", "## Creation", "## Considerations", "## License", "## Citation"):
        assert section in text
    assert "Build report (mentions)" in text and "| train07 |" in text

    with pytest.raises(FileExistsError, match="overwrite"):
        export_dataset({"kb": built["kb"]}, out)
    export_dataset({"kb": built["kb"]}, out, overwrite=True)


def test_export_cli(built, tmp_path, capsys):
    parser = build_export_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0
    assert "--push_to_hub" in capsys.readouterr().out
    out = str(tmp_path / "cli")
    rc = export_main(
        [
            "--dataset",
            "twitter_mel",
            "--data_dir",
            built["raw"],
            "--out",
            out,
            "--cache_dir",
            built["cache"],
            "--configs",
            "mentions",
        ]
    )
    assert rc == 0 and os.path.isfile(os.path.join(out, "README.md"))
    ds = datasets.load_dataset(out, "mentions", split="test", cache_dir=str(tmp_path / "c"))
    assert len(ds) == len(built["mentions"]["test"])
    with pytest.raises(SystemExit):
        export_main(["--dataset", "nope", "--data_dir", built["raw"], "--out", out])


def test_scripts_help(repo_root):
    env = dict(os.environ)
    for script in ("datasets_scripts/export_dataset.py", "datasets_scripts/sample/generate_sample.py"):
        res = subprocess.run(
            [sys.executable, os.path.join(repo_root, script), "--help"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert "usage" in res.stdout.lower()
