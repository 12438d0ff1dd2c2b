"""Installed from a wheel, outside the checkout, the package does everything the checkout does (issue 27).

The wheel is built from a copy of the package files (``pip wheel --no-deps --no-build-isolation``: offline, and nothing
written into the checkout), installed with ``pip install --no-deps --target T``, and every step runs in a subprocess
started with ``python -S`` (no site-packages processing, so the checkout's editable install is invisible), whose
working directory is a temp folder and whose ``sys.path`` is ``T`` plus the environment's site-packages (for the
dependencies) but not the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from pfmel_fixtures import make_tiny_backbone
from test_mimic_mel import write_mimic
from test_richpedia_mel import write_richpedia
from test_wikimel import write_wikimel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE_PACKAGES = sysconfig.get_paths()["purelib"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """``{"target": T, "work": a folder outside the checkout}`` with the wheel installed into ``T``."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "model_card.md"):
        shutil.copy(os.path.join(REPO_ROOT, name), src / name)
    shutil.copytree(os.path.join(REPO_ROOT, "modeling_mel"), src / "modeling_mel",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist, target = root / "dist", root / "target"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True,
                   capture_output=True, timeout=600)
    (wheel,) = dist.glob("modeling_mel-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    work = root / "work"
    work.mkdir()
    return {"target": str(target), "work": str(work), "wheel": str(wheel)}


def run_installed(installed: dict[str, str], args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -S <args>`` in the work folder with only the install target and site-packages on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=os.pathsep.join([installed["target"], SITE_PACKAGES]), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", MEL_LOG_LEVEL="WARNING")
    res = subprocess.run([sys.executable, "-S", *args], cwd=installed["work"], env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, f"{args}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def mel(installed: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_installed(installed, ["-m", "modeling_mel.cli", *args])


def test_wheel_holds_the_builders_and_the_runs(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for module in ("builders/twitter_mel", "builders/mel_jsonl", "builders/zemeld", "builders/wikimel",
                   "builders/richpedia_mel", "builders/mimic_mel", "builders/sample", "builders/zemeld_sample",
                   "scripts/pretrain_nsp", "scripts/finetune_linking", "scripts/evaluate_linking", "scripts/train_zemel",
                   "scripts/evaluate_zemel", "scripts/ablations", "scripts/zemel_ablations", "demo"):
        assert f"modeling_mel/{module}.py" in names
    assert "modeling_mel/model_card.md" in names  # the card template, for mel model-card and push_model_to_hub
    # no module of the package reads a .py file by path
    offenders = []
    for dirpath, _, files in os.walk(os.path.join(REPO_ROOT, "modeling_mel")):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                if "spec_from_file_location" in text or "datasets_scripts_dir" in text:
                    offenders.append(f)
    assert offenders == []


def test_installed_package_loads_every_corpus_trains_indexes_and_links(installed, tmp_path_factory):
    work = installed["work"]
    # corpora: the generators run from the install; WikiMEL / RichpediaMEL fixtures in their release layouts
    run_installed(installed, ["-m", "modeling_mel.builders.sample", "--out", "twitter", "--seed", "0"])
    run_installed(installed, ["-m", "modeling_mel.builders.sample", "--out", "jsonl", "--layout", "jsonl", "--seed", "0"])
    run_installed(installed, ["-m", "modeling_mel.builders.zemeld_sample", "--out", "zemeld", "--seed", "0"])
    write_wikimel(os.path.join(work, "wikimel"))
    write_richpedia(os.path.join(work, "richpedia"))
    write_mimic(os.path.join(work, "mimic", "RichpediaMEL"), "RichpediaMEL")
    backbone = make_tiny_backbone(str(tmp_path_factory.mktemp("tiny_bert")), dropout=0.0)

    script = """
import json
import modeling_mel, modeling_mel.corpus
from modeling_mel.corpus import DATASET_BUILDERS, load_mel_corpus
dirs = {"twitter_mel": "twitter", "mel_jsonl": "jsonl", "zemeld": "zemeld", "wikimel": "wikimel",
        "richpedia_mel": "richpedia", "mimic_mel": "mimic/RichpediaMEL"}
assert set(dirs) == set(DATASET_BUILDERS), sorted(DATASET_BUILDERS)
out = {"files": [modeling_mel.__file__, modeling_mel.corpus.__file__]}
for name, d in dirs.items():
    mentions = load_mel_corpus(name, d, config="mentions", cache_dir="hf_cache")
    kb = load_mel_corpus(name, d, config="kb", cache_dir="hf_cache")
    out[name] = {"mentions": sum(len(s) for s in mentions.values()), "kb": len(kb)}
import modeling_mel.builders.wikimel as w
out["files"].append(w.__file__)
print(json.dumps(out))
"""
    res = run_installed(installed, ["-c", script])
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(f.startswith(installed["target"]) for f in loaded["files"]), loaded["files"]
    for name in ("twitter_mel", "mel_jsonl", "zemeld", "wikimel", "richpedia_mel", "mimic_mel"):
        assert loaded[name]["mentions"] > 0 and loaded[name]["kb"] > 0, (name, loaded[name])
    assert loaded["mimic_mel"] == {"mentions": 6, "kb": 4}

    mel(installed, "build-dataset", "--dataset", "wikimel", "--data_dir", "wikimel", "--out", "built")
    assert os.path.isdir(os.path.join(work, "built"))

    # ZEMEL (text only) and PFMEL (NSP-BERT, text only) for a few steps, from the install
    common = ["--use_cpu", "True", "--report_to", "none", "--disable_tqdm", "True", "--save_strategy", "no",
              "--seed", "0", "--backbone", backbone]
    mel(installed, "train-zemel", "--dataset", "mel_jsonl", "--data_dir", "jsonl", "--output_dir", "zemel",
        "--image_features", "none", "--dataset_cache_dir", "hf_cache", "--max_steps", "2", "--eval_splits", "test",
        "--max_eval_samples", "5", "--poly_m", "4", "--context_max_length", "24", "--candidate_max_length", "24",
        "--num_candidates", "3", "--per_device_train_batch_size", "4", "--bi_hidden_size", "32",
        "--bi_num_attention_heads", "4", "--v_hidden_size", "32", "--v_intermediate_size", "32",
        "--v_num_attention_heads", "4", "--v_num_hidden_layers", "1", *common)
    mel(installed, "finetune", "--dataset", "twitter_mel", "--data_dir", "twitter", "--output_dir", "pfmel",
        "--image_features", "none", "--dataset_cache_dir", "hf_cache", "--max_steps", "2", "--max_length", "64",
        "--max_train_samples", "8", "--max_eval_samples", "5", "--per_device_train_batch_size", "4", *common)
    for model in ("zemel", "pfmel"):
        assert os.path.isfile(os.path.join(work, model, "config.json")), model

    mel(installed, "index", "--model", "zemel", "--kb", "jsonl/kb.jsonl", "--out", "index", "--no_images",
        "--device", "cpu")
    with open(os.path.join(work, "jsonl", "mentions.jsonl"), encoding="utf-8") as f:
        lines = f.read().splitlines()[:6]
    with open(os.path.join(work, "queries.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    res = mel(installed, "link", "--model", "zemel", "--index", "index", "--input", "queries.jsonl", "--output",
              "links.jsonl", "--no_images", "--top_k", "3", "--device", "cpu")
    with open(os.path.join(work, "links.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 6 and all(len(r["predictions"]) == 3 for r in records)

    mel(installed, "model-card", "--model", "zemel", "--results", "zemel/eval_results.json")
    with open(os.path.join(work, "zemel", "README.md"), encoding="utf-8") as f:
        assert "zemel" in f.read().lower()

    res = mel(installed, "demo", "--help")
    assert "--output_dir" in res.stdout
