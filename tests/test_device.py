"""``--device`` of the inference commands (issue 27 points 2 and 3): one resolver (``hardware.resolve_device``), the
same output files on the CPU with and without ``--device cpu``, one-line refusals (exit 2) for devices this machine
lacks, and pipelines whose model, KB cache and scored tensors sit on the device they were built for."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch
from transformers import pipeline

from inference_fixtures import MENTIONS, mentions, register_all, tiny_extractor, tiny_nsp, tiny_zemel, write_kb
from modeling_mel import cli_calibrate, cli_index, cli_inference, hardware
from modeling_mel.cli import main
from modeling_mel.pipeline_entity_linking import TASK, LinkingKB

register_all()

#: The devices this machine can build a pipeline on ("cuda" only where there is a GPU: not a skip, no parameter).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: A CUDA device this machine lacks (all of CUDA here; one past the last GPU on a GPU machine).
MISSING_CUDA = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
BEYOND = f"cuda:{max(7, torch.cuda.device_count() if torch.cuda.is_available() else 0)}"


# -- resolve_device ----------------------------------------------------------------------------------------------------


@pytest.fixture()
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "_mps_available", lambda: False)


@pytest.fixture()
def two_gpus(monkeypatch):
    """A machine with cuda:0 and cuda:1 as far as the resolver can tell (no tensor is made on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(hardware, "_mps_available", lambda: False)


def test_auto_and_cpu_resolve_to_the_cpu_without_an_accelerator(no_accelerator):
    for spec in ("auto", None, "cpu", "CPU", " cpu ", torch.device("cpu")):
        assert hardware.resolve_device(spec) == torch.device("cpu")
    assert hardware.available_devices() == ["cpu"]


def test_auto_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if hardware._mps_available() else "cpu")
    assert hardware.resolve_device("auto").type == expected
    assert hardware.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec, message", [
    ("cuda", "--device cuda: CUDA is not available on this machine (available: cpu); pass --device cpu or auto"),
    ("cuda:7", "--device cuda:7: CUDA is not available on this machine (available: cpu)"),
    ("mps", "--device mps: MPS is not available on this machine (available: cpu)"),
    ("bogus", "--device bogus: unknown device; use auto, cpu, cuda, cuda:N or mps (available: cpu)"),
    ("gpu", "--device gpu: unknown device"),
    ("cuda:x", "--device cuda:x: unknown device"),
    ("cuda:-1", "--device cuda:-1: unknown device"),
    ("cpu:1", "--device cpu:1: unknown device"),
])
def test_refusals_name_the_device_and_what_is_available(no_accelerator, spec, message):
    with pytest.raises(ValueError) as err:
        hardware.resolve_device(spec)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_cuda_devices_with_gpus(two_gpus):
    assert hardware.available_devices() == ["cpu", "cuda:0", "cuda:1"]
    assert hardware.resolve_device("auto") == torch.device("cuda", 0)
    assert hardware.resolve_device("cuda") == torch.device("cuda", 0)  # always with its index
    assert hardware.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert hardware.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^--device cuda:2: this machine has 2 CUDA devices \(available: cpu, cuda:0, cuda:1\)"):
        hardware.resolve_device("cuda:2")
    with pytest.raises(ValueError, match="--device cuda:7: this machine has 2 CUDA devices"):
        hardware.resolve_device("cuda:7")


def test_each_process_of_a_launch_gets_its_own_gpu(two_gpus, monkeypatch):
    """torchrun / accelerate launch: auto and cuda put local rank r on cuda:(r mod GPUs); cuda:N and cpu are kept."""
    from modeling_mel.sharded_index import process_device

    assert [hardware.resolve_device("auto", local_rank=r).index for r in range(4)] == [0, 1, 0, 1]
    assert hardware.resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert hardware.resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    assert hardware.resolve_device("cpu", local_rank=1) == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device("auto") == torch.device("cuda", 1)
    assert process_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device("auto") == torch.device("cpu")  # CPU processes where there is no accelerator


# -- the commands --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, str]:
    """Saved tiny ZEMEL and PFMEL models, a KB and a mentions file (with gold ids)."""
    root = tmp_path_factory.mktemp("device")
    paths = {"root": str(root), "kb": write_kb(str(root))}
    for name, (model, processor) in (("zemel", tiny_zemel()), ("nsp", tiny_nsp())):
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        paths[name] = str(root / name)
    golds = ["taylorswift13", "jtimberlake", "nasa", "newyorkcity", "swiftlang"]
    paths["mentions"] = str(root / "mentions.jsonl")
    with open(paths["mentions"], "w", encoding="utf-8") as f:
        for i, (row, gold) in enumerate(zip(MENTIONS, golds)):
            f.write(json.dumps(dict(row, id=f"m{i}", entity_id=gold)) + "\n")
    return paths


def _files(folder) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


@pytest.mark.parametrize("sharded", [False, True], ids=["index", "sharded-index"])
def test_index_and_link_on_cpu_equal_the_default(setup, tmp_path, sharded):
    """``mel index`` / ``mel link`` with ``--device cpu`` write the same files as without --device (auto: the CPU
    here; on a GPU machine the default is the GPU, so the comparison is with the CPU run's own outputs there)."""
    default = [] if hardware.resolve_device("auto").type == "cpu" else ["--device", "cpu"]
    shards = ["--shard_size", "3"] if sharded else []
    outputs = {}
    for name, device in (("default", default), ("cpu", ["--device", "cpu"])):
        index = tmp_path / f"index_{name}"
        assert main(["index", "--model", setup["zemel"], "--kb", setup["kb"], "--out", str(index), "--no_images",
                     "--batch_size", "3", *shards, *device]) == 0
        links = tmp_path / f"links_{name}.jsonl"
        assert main(["link", "--model", setup["zemel"], "--index", str(index), "--input", setup["mentions"],
                     "--output", str(links), "--no_images", "--top_k", "3", *device]) == 0
        nsp_links = tmp_path / f"nsp_links_{name}.jsonl"
        assert main(["link", "--model", setup["nsp"], "--kb", setup["kb"], "--input", setup["mentions"],
                     "--output", str(nsp_links), "--no_images", "--top_k", "3", *device]) == 0
        outputs[name] = (_files(index), links.read_bytes(), nsp_links.read_bytes())
    default_index, default_links, default_nsp = outputs["default"]
    cpu_index, cpu_links, cpu_nsp = outputs["cpu"]
    assert sorted(default_index) == sorted(cpu_index) and "faiss.index" in cpu_index
    for name in default_index:
        assert default_index[name] == cpu_index[name], name
    assert default_links == cpu_links and default_nsp == cpu_nsp
    assert len(cpu_links.splitlines()) == len(MENTIONS) and b'"error"' not in cpu_links


@pytest.fixture()
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before --device was checked")

    for module in (cli_inference, cli_index, cli_calibrate):  # link and serve load through cli_inference
        monkeypatch.setattr(module, "load_model_and_processor", refuse)


def _command(name: str, setup: dict, tmp_path) -> list[str]:
    if name == "index":
        return ["index", "--model", setup["zemel"], "--kb", setup["kb"], "--out", str(tmp_path / "index")]
    if name == "link":
        return ["link", "--model", setup["zemel"], "--kb", setup["kb"], "--input", setup["mentions"],
                "--output", str(tmp_path / "links.jsonl")]
    if name == "calibrate":
        return ["calibrate", "--model", setup["zemel"], "--kb", setup["kb"], "--data", setup["mentions"],
                "--out", str(tmp_path / "calibration")]
    return ["serve", "--model", setup["zemel"], "--kb", setup["kb"], "--port", "0"]


@pytest.mark.parametrize("command", ["index", "link", "calibrate", "serve"])
@pytest.mark.parametrize("spec", [MISSING_CUDA, BEYOND, "bogus"])
def test_a_missing_device_exits_2_with_one_line(setup, tmp_path, capsys, no_model_loading, command, spec):
    code = main([*_command(command, setup, tmp_path), "--no_images", "--device", spec])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"mel {command}: --device {spec}: ") and "\n" not in err, err
    assert ("unknown device" if spec == "bogus" else "CUDA") in err and "available: cpu" in err
    assert not [p for p in os.listdir(tmp_path) if not p.startswith(".")]  # nothing written


@pytest.mark.parametrize("command", ["index", "link", "calibrate", "serve"])
def test_every_inference_command_documents_device(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--device DEVICE" in out and "auto (default: CUDA when available, else MPS, else CPU)" in out


# -- pipelines on a device -----------------------------------------------------------------------------------------------


def _record_score_devices(pipe) -> list[set[str]]:
    """Wrap ``pipe.model.score``: every call appends the device types of its tensor inputs."""
    seen: list[set[str]] = []
    score = pipe.model.score

    def recording(context, candidates, *args, **kwargs):
        tensors = [v for v in context.values() if isinstance(v, torch.Tensor)] + [candidates]
        seen.append({t.device.type for t in tensors})
        out = score(context, candidates, *args, **kwargs)
        seen.append({out.device.type})
        return out

    pipe.model.score = recording
    return seen


@pytest.fixture(scope="module")
def zemel_index(setup, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("zindex") / "index")
    assert main(["index", "--model", setup["zemel"], "--kb", setup["kb"], "--out", out, "--no_images",
                 "--device", "cpu"]) == 0
    return out


def _items(setup) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "image"} for m in MENTIONS]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kb_kind", ["kb", "index", "index-faiss-search"])
def test_zemel_pipeline_keeps_model_cache_and_scores_on_its_device(setup, zemel_index, device, kb_kind):
    model, processor = cli_inference.load_model_and_processor(setup["zemel"])
    kb = setup["kb"] if kb_kind == "kb" else zemel_index
    extra = {"exact_threshold": 0} if kb_kind == "index-faiss-search" else {}  # FAISS (on the CPU) finds candidates
    pipe = pipeline(TASK, model=model, processor=processor, kb=kb, use_images=False, device=device, **extra)
    assert pipe.device.type == device and (device == "cpu" or pipe.device.index is not None)
    assert {p.device.type for p in pipe.model.parameters()} == {device}
    assert pipe.kb.vectors.device.type == device
    if kb_kind == "index-faiss-search":
        assert pipe.kb.searcher is not None
    seen = _record_score_devices(pipe)
    out = pipe(_items(setup), candidates="dense", top_k=3, batch_size=2)
    assert len(out) == len(MENTIONS) and all(len(row) == 3 for row in out)
    assert seen and all(types == {device} for types in seen), seen


@pytest.mark.parametrize("device", DEVICES)
def test_pfmel_pipeline_and_its_retriever_run_on_its_device(setup, zemel_index, device, monkeypatch):
    model, processor = cli_inference.load_model_and_processor(setup["nsp"])
    pipe = pipeline(TASK, model=model, processor=processor, kb=setup["kb"], use_images=False, device=device,
                    retriever=zemel_index, retriever_model=setup["zemel"])
    assert {p.device.type for p in pipe.model.parameters()} == {device}
    assert {p.device.type for p in pipe.retriever.model.parameters()} == {device}  # the dense first stage too
    inputs: list[set[str]] = []
    scores = pipe.model.inference_scores  # the cross linker's entry to the model

    def recording(*args, **kwargs):
        inputs.append({v.device.type for v in kwargs.values() if isinstance(v, torch.Tensor)})
        return scores(*args, **kwargs)

    monkeypatch.setattr(pipe.model, "inference_scores", recording)
    retriever_scores = _record_score_devices(pipe.retriever)
    out = pipe(_items(setup), top_k=3, batch_size=2)
    assert len(out) == len(MENTIONS)
    assert inputs and all(types == {device} for types in inputs), inputs
    assert retriever_scores and all(types == {device} for types in retriever_scores), retriever_scores


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["zemel", "nsp"])
def test_pipelines_with_images_on_device(setup, device, family, monkeypatch):
    """Mention images (features made on the CPU, moved by the Pipeline) and KB images reach the model on the device."""
    model, processor = cli_inference.load_model_and_processor(setup[family])
    pipe = pipeline(TASK, model=model, processor=processor, kb=setup["kb"], image_extractor=tiny_extractor(),
                    device=device)
    if family == "zemel":
        assert pipe.kb.vectors.device.type == device
    inputs: list[set[str]] = []
    entry = "forward" if family == "zemel" else "inference_scores"  # the cross linker calls inference_scores
    called = getattr(pipe.model, entry)

    def recording(*args, **kwargs):
        inputs.append({v.device.type for v in kwargs.values() if isinstance(v, torch.Tensor)})
        return called(*args, **kwargs)

    monkeypatch.setattr(pipe.model, entry, recording)
    seen = _record_score_devices(pipe) if family == "zemel" else inputs
    out = pipe(mentions(setup["root"]), top_k=3, batch_size=2, **({"candidates": "dense"} if family == "zemel" else {}))
    assert len(out) == len(MENTIONS) and all(out)
    assert seen and all(types == {device} for types in seen), seen


@pytest.mark.parametrize("device", DEVICES)
def test_build_pipeline_puts_everything_on_device(setup, zemel_index, device):
    parser = argparse.ArgumentParser()
    cli_inference.add_pipeline_args(parser)
    args = parser.parse_args(["--model", setup["zemel"], "--index", zemel_index, "--no_images", "--device", device])
    pipe = cli_inference.build_pipeline(args)
    assert pipe.device.type == device and pipe.kb.vectors.device.type == device
    assert {p.device.type for p in pipe.model.parameters()} == {device}


@pytest.mark.parametrize("device", DEVICES)
def test_decoded_code_rows_go_to_the_device(device):
    """An index written without its vectors: the rows decoded from the FAISS codes land on the pipeline's device."""

    class Codes:  # CodeVectors' interface: rows by position, as numpy
        def __init__(self, rows: np.ndarray):
            self.rows = rows

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, key):
            return self.rows[key]

    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    from modeling_mel.linking_dense import DenseLinker

    linker = DenseLinker(torch.nn.Linear(1, 1), None, Codes(rows), device=device)
    gathered = linker.gather(torch.tensor([[3, 1]]))
    assert gathered.device.type == device and gathered.cpu().tolist() == [[rows[3].tolist(), rows[1].tolist()]]
    assert linker.all_vectors().device.type == device and linker.all_vectors().cpu().tolist() == rows.tolist()
