"""Sharded, resumable ``mel index`` (issue 17 point 2): a 2-process ``torchrun`` run on CPU (gloo) gives the vectors
and top-10 of a 1-process run; a run killed after its first shard resumes without encoding that shard again."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from inference_fixtures import tiny_zemel
from modeling_mel.cli import main
from modeling_mel.entity_index import EntityIndex
from modeling_mel.sharded_index import EXIT_AFTER_SHARD_ENV, iter_kb_shards, shard_paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ENTITIES, SHARD = 40, 7  # 6 shards, the last one short
WORDS = "alpha beta gamma delta river city band album singer actor team club north south".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sharded")
    model, processor = tiny_zemel()
    model.save_pretrained(root / "zemel")
    processor.save_pretrained(root / "zemel")
    rng = random.Random(0)
    with open(root / "kb.jsonl", "w", encoding="utf-8") as f:
        for i in range(N_ENTITIES):
            f.write(json.dumps({"entity_id": f"E{i}", "name": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {i}",
                                "description": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))}) + "\n")
            if i == 3:
                f.write("\n")  # blank lines are skipped, as by the unsharded reader
    return {"root": root, "model": str(root / "zemel"), "kb": str(root / "kb.jsonl"), "zemel": (model, processor)}


def index_args(setup: dict, out, *extra: str) -> list[str]:
    return ["index", "--model", setup["model"], "--kb", setup["kb"], "--out", str(out), "--shard_size", str(SHARD),
            "--fp32", "--no_images", "--batch_size", "4", *extra]


def run_cli(args: list[str], cwd, launcher: list[str] | None = None, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
                    PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(name, None)
    cmd = [sys.executable, *(launcher or []), "-m", "modeling_mel.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def vectors(out) -> np.ndarray:
    return load_file(os.path.join(out, "vectors.safetensors"))["vectors"]


def test_kb_is_streamed_in_shards(setup):
    shards = list(iter_kb_shards(setup["kb"], SHARD, owned=lambda s: s % 2 == 1))
    assert [(s, start, len(r)) for s, start, r, _ in shards] == [(0, 0, 0), (1, 7, 7), (2, 14, 0), (3, 21, 7),
                                                                  (4, 28, 0), (5, 35, 5)]
    assert [e["entity_id"] for e in shards[1][2]] == [f"E{i}" for i in range(7, 14)]
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        next(iter_kb_shards(setup["kb"], 0))


def test_two_processes_equal_one_process(setup, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(index_args(setup, one)) == 0
    proc = run_cli(index_args(setup, two), tmp_path,
                   launcher=["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1/2: 3 shards encoded" in proc.stderr and "rank 0/2: 3 shards encoded" in proc.stderr
    np.testing.assert_allclose(vectors(two), vectors(one), atol=1e-5)
    # and both equal the unsharded encoder's vectors (EntityIndex.build over the whole KB)
    model, processor = setup["zemel"]
    whole = EntityIndex.build(model, processor, setup["kb"], batch_size=4, progress=False)
    np.testing.assert_allclose(vectors(one), whole.vectors, atol=1e-5)
    a, b = EntityIndex.load(one, model=model), EntityIndex.load(two, model=model)
    assert a.entity_ids == b.entity_ids == [f"E{i}" for i in range(N_ENTITIES)]
    queries = np.random.default_rng(0).standard_normal((12, 32)).astype(np.float32)
    np.testing.assert_array_equal(a.search(queries, 10)[1], b.search(queries, 10)[1])
    assert b.config["shards"] == {"count": 6, "shard_size": SHARD}
    assert not os.path.exists(str(two) + ".shards")  # removed once the index is saved


def test_killed_run_resumes_without_reencoding(setup, tmp_path, monkeypatch, caplog):
    out, shard_dir = tmp_path / "idx", tmp_path / "idx.shards"
    killed = run_cli(index_args(setup, out), tmp_path, **{EXIT_AFTER_SHARD_ENV: "0"})
    assert killed.returncode == 75, killed.stderr[-2000:]
    first_vec, first_marker = shard_paths(str(shard_dir), 0)
    assert os.path.isfile(first_vec) and os.path.isfile(first_marker)
    assert not os.path.isfile(shard_paths(str(shard_dir), 1)[1]) and not (out / "index_config.json").exists()
    before = os.stat(first_vec)

    import modeling_mel.sharded_index as sharded

    encoded: list[str] = []
    real = sharded.encode_entities

    def spy(model, processor, entities, **kw):
        encoded.extend(e["entity_id"] for e in entities)
        return real(model, processor, entities, **kw)

    monkeypatch.setattr(sharded, "encode_entities", spy)
    with caplog.at_level(logging.INFO, logger="modeling_mel.sharded_index"):
        assert main(index_args(setup, out, "--keep_shards")) == 0
    assert "reusing finished shard 0 (7 entities)" in caplog.text
    assert encoded == [f"E{i}" for i in range(7, N_ENTITIES)]  # shard 0 (E0..E6) not encoded again
    after = os.stat(first_vec)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # nor rewritten
    model, processor = setup["zemel"]
    whole = EntityIndex.build(model, processor, setup["kb"], batch_size=4, progress=False)
    np.testing.assert_allclose(vectors(out), whole.vectors, atol=1e-5)

    # a third run with one KB line changed re-encodes that line's shard only (the marker keys the shard's lines)
    kb = tmp_path / "kb_changed.jsonl"
    lines = open(setup["kb"], encoding="utf-8").read().splitlines()
    lines[16] = json.dumps({"entity_id": "E15", "name": "changed", "description": "a new description"})
    kb.write_text("\n".join(lines) + "\n")
    encoded.clear()
    args = index_args(setup, out, "--keep_shards")
    args[args.index("--kb") + 1] = str(kb)
    assert main(args) == 0
    assert encoded == [f"E{i}" for i in range(14, 21)]


def test_sharded_ivf_index_tunes_nprobe_like_the_unsharded_build(setup, tmp_path):
    """`mel index --shard_size` of an IVF type without --ivf_nprobe tunes nprobe on the model's mention-like queries,
    its exact search streamed over the shards: the same choice and sweep as the unsharded `EntityIndex.build`."""
    out = tmp_path / "ivf"
    assert main(index_args(setup, out, "--index_type", "ivfsq8", "--ivf_nlist", "4")) == 0
    with open(out / "index_config.json", encoding="utf-8") as f:
        config = json.load(f)
    tuned = config["query_recall"]
    assert config["index_params"]["ivf_nprobe"] == tuned["nprobe"] and tuned["queries"] > 0
    model, processor = setup["zemel"]
    whole = EntityIndex.build(model, processor, setup["kb"], batch_size=4, progress=False, index_type="ivfsq8",
                              ivf_nlist=4, bf16=False)
    assert {str(p): r for p, r in whole.config["query_recall"]["sweep"].items()} == tuned["sweep"]
    assert whole.config["query_recall"]["nprobe"] == tuned["nprobe"]
    given = tmp_path / "given"
    assert main(index_args(setup, given, "--index_type", "ivfsq8", "--ivf_nlist", "4", "--ivf_nprobe", "3")) == 0
    with open(given / "index_config.json", encoding="utf-8") as f:
        config = json.load(f)
    assert config["index_params"]["ivf_nprobe"] == 3 and "query_recall" not in config
