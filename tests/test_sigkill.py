"""Real SIGKILLs of ``mel index`` and ``mel link`` processes (issue 15 acceptance).

``mel index`` is killed at several points while it writes over a good index (during the KB encoding, while writing
the vectors, while writing the FAISS file, between the renames that swap the folders, and from outside once the temp
folder appears): afterwards the folder loads and links exactly as the old index did, or as the new one; never a
mixed folder. ``mel link`` is killed midway; ``--resume`` completes the output with each line exactly once.

Each kill is a ``SIGKILL`` of a real ``mel`` process (no Python cleanup runs); the kill points are reached by a
small hook installed before ``mel`` starts, so the test does not depend on timing, except the outside kill.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from transformers import pipeline

from inference_fixtures import KB_ROWS, register_all, tiny_zemel, write_kb
from modeling_mel.entity_index import EntityIndex
from modeling_mel.pipeline_entity_linking import TASK

register_all()

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

QUERIES = [{"text": "launch day at NASA with friends", "mention": "NASA"},
           {"text": "Justin on stage tonight", "mention": "Justin"},
           {"text": "I love new york city in winter", "mention": "new york city"}]

EXTRA_ROWS = [
    {"entity_id": "taylormade", "name": "TaylorMade Golf", "description": "golf equipment maker"},
    {"entity_id": "nasajpl", "name": "NASA JPL", "description": "jet propulsion laboratory"},
    {"entity_id": "yorkshire", "name": "Yorkshire", "description": "county of England"},
]

# Runs `mel` with a hook that SIGKILLs the process itself when it reaches the point named by MEL_TEST_KILL_AT.
HOOK = r"""
import os, signal, sys
point = os.environ.get("MEL_TEST_KILL_AT", "")

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if point == "encode":
    import modeling_mel.entity_index as ei
    ei.encode_entities = die
elif point == "vectors":
    import safetensors.numpy
    safetensors.numpy.save_file = die
elif point == "faiss":
    import faiss
    faiss.write_index = die
elif point == "rename":
    import modeling_mel.index_files as index_files
    index_files._exchange_dirs = lambda a, b: False
    real = os.rename
    os.rename = lambda a, b: die() if ".tmp-" in os.fspath(a) else real(a, b)
elif point.startswith("link-call-"):
    from modeling_mel.pipeline_entity_linking import MultimodalEntityLinkingPipeline as P
    n, calls, original = int(point.rsplit("-", 1)[1]), [0], P.__call__
    def call(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            die()
        return original(self, *args, **kwargs)
    P.__call__ = call
from modeling_mel.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(point: str = "") -> dict:
    return dict(os.environ, MEL_TEST_KILL_AT=point, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                OMP_NUM_THREADS="1")


def _mel(args: list[str], point: str = "", wait: bool = True):
    cmd = [sys.executable, "-c", HOOK, *args]
    if not wait:
        return subprocess.Popen(cmd, env=_env(point), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(cmd, env=_env(point), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sigkill")
    model, processor = tiny_zemel()
    model.save_pretrained(root / "zemel")
    processor.save_pretrained(root / "zemel")
    kb_old = write_kb(str(root))
    kb_new = str(root / "kb_new.jsonl")
    with open(kb_new, "w", encoding="utf-8") as f:
        for row in KB_ROWS + EXTRA_ROWS:
            f.write(json.dumps(row) + "\n")
    return {"root": root, "model": str(root / "zemel"), "kb_old": kb_old, "kb_new": kb_new, "model_obj": model,
            "processor_obj": processor}


def _index(setup, kb: str, out: str, point: str = "", wait: bool = True):
    return _mel(["index", "--model", setup["model"], "--kb", kb, "--out", out, "--no_images", "--fp32",
                 "--batch_size", "2"], point, wait)


def _view(setup, directory: str) -> dict:
    """What a user sees of an index folder: its ids, and the pipeline's links over it."""
    index = EntityIndex.load(directory, model=setup["model_obj"])
    pipe = pipeline(TASK, model=setup["model_obj"], processor=setup["processor_obj"], kb=directory, use_images=False)
    links = pipe(QUERIES, top_k=3, candidates="dense")
    return {"ids": index.entity_ids, "links": [[(p["entity_id"], round(p["score"], 5)) for p in row] for row in links]}


@pytest.fixture(scope="module")
def views(setup) -> dict:
    """The old and the new index as written by uninterrupted `mel index` runs."""
    out = {}
    for name in ("old", "new"):
        directory = os.path.join(str(setup["root"]), f"reference-{name}")
        run = _index(setup, setup[f"kb_{name}"], directory)
        assert run.returncode == 0, run.stderr
        out[name] = _view(setup, directory)
        out[f"{name}_dir"] = directory
    assert out["old"]["ids"] != out["new"]["ids"]
    return out


@pytest.mark.parametrize("point", ["encode", "vectors", "faiss", "rename", "outside"])
def test_sigkilled_mel_index_leaves_the_old_or_the_new_index(point, setup, views, tmp_path):
    directory = str(tmp_path / "index")
    shutil.copytree(views["old_dir"], directory)  # a good index written by `mel index`
    if point == "outside":  # a kill from outside once the new folder is being written
        proc = _index(setup, setup["kb_new"], directory, wait=False)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if any(".tmp-" in name for name in os.listdir(tmp_path)):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
        code = proc.returncode
    else:
        code = _index(setup, setup["kb_new"], directory, point).returncode
    if point != "outside":
        assert code == -signal.SIGKILL  # the hook was reached: the process died there
    after = _view(setup, directory)
    assert after in (views["old"], views["new"])  # never a mixed folder
    if point in ("encode", "vectors", "faiss"):
        assert after == views["old"]  # killed before the swap: the old index is untouched
    if point == "rename":  # the next write cleans up what the killed writer left and succeeds
        assert _index(setup, setup["kb_new"], directory).returncode == 0
        assert _view(setup, directory) == views["new"]
        assert sorted(os.listdir(tmp_path)) == ["index", "index.lock"]


def test_sigkilled_mel_link_resumes_each_line_once(setup, views, tmp_path):
    directory = str(tmp_path / "index")
    shutil.copytree(views["new_dir"], directory)
    rows = [{"id": f"m{n}", "text": f"launch day {n} at NASA with friends", "mention": "NASA"} for n in range(30)]
    inputs, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["link", "--model", setup["model"], "--index", directory, "--input", str(inputs), "--output", str(output),
            "--no_images", "--fp32", "--top_k", "2", "--batch_size", "1"]
    killed = _mel(args, "link-call-3")
    assert killed.returncode == -signal.SIGKILL
    assert not output.exists()  # never a half-written output
    partial = [p for p in os.listdir(tmp_path) if p.startswith("out.jsonl") and p != "out.jsonl"]
    assert partial, "the lines linked before the kill are kept in the partial file"
    resumed = _mel(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == [r["id"] for r in rows]  # each line exactly once, in order
    assert all(r["predictions"] for r in records)
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert 0 < summary["resumed"] < len(rows)  # some lines came from before the kill
