"""Issue 29 (reliability round 2): ``mel link`` / ``mel index`` / ``mel calibrate`` and the pipeline refuse, with one
line and exit code 2, what used to run silently wrong or fail late:

1. a model folder whose weights belong to another model (``--allow_weight_mismatch`` / ``allow_weight_mismatch=``);
2. a ``--retriever`` index built over another KB;
3. two runs writing the same output at once (a writer lock on ``OUTPUT.partial``);
4. ``--resume`` after the input or the options changed (a fingerprint beside the partial output);
5. unwritable targets (read-only folder, immutable output, full disk): checked up front, or reported in one line with
   the lines already written kept;
6. a bad ``mel calibrate`` row: found before any model loads, named by its file line (tests/test_cli_calibrate.py).
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from inference_fixtures import KB_ROWS, register_all, tiny_nsp, tiny_zemel, write_kb
from modeling_mel import cli_inference, cli_link
from modeling_mel.cli import main
from modeling_mel.pipeline_entity_linking import TASK, MultimodalEntityLinkingPipeline, check_model_weights

register_all()

NASA = "launch day at NASA with friends"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, str]:
    """Saved tiny PFMEL and ZEMEL models, a ZEMEL config beside PFMEL weights ("mixed"), the tiny KB and another KB."""
    root = tmp_path_factory.mktemp("reliability")
    out = {"root": str(root), "kb": write_kb(str(root))}
    for name, (model, processor) in (("nsp", tiny_nsp()), ("zemel", tiny_zemel())):
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        out[name] = str(root / name)
    shutil.copytree(root / "zemel", root / "mixed")
    shutil.copy(root / "nsp" / "model.safetensors", root / "mixed" / "model.safetensors")
    out["mixed"] = str(root / "mixed")
    other = root / "other_kb.jsonl"
    other.write_text("".join(json.dumps({"entity_id": f"other{i}", "name": f"Other {i}", "description": "elsewhere"})
                             + "\n" for i in range(5)))
    out["other_kb"] = str(other)
    return out


def _line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def _mentions(path, n: int = 20, ids: bool = True) -> list[bytes]:
    lines = [_line({**({"id": f"m{i}"} if ids else {}), "text": f"{NASA} number {i}", "mention": "NASA",
                    "entity_id": "nasa"}) for i in range(1, n + 1)]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines


def _link(setup, inputs, output, *extra: str, model: str = "nsp") -> int:
    return main(["link", "--model", setup[model], "--kb", setup["kb"], "--input", str(inputs), "--output", str(output),
                 "--no_images", "--top_k", "3", "--fp32", *extra])


def _one_line(err: str) -> str:
    """The one ``mel <command>: ...`` error line of a run's stderr (progress bars and log lines aside)."""
    lines = [line for line in err.splitlines() if line.startswith("mel ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(cli_inference, "load_model_and_processor", refuse)


class _KillAt:
    """The pipeline's __call__ raising KeyboardInterrupt (a kill) on call number ``at``."""

    def __init__(self, monkeypatch, at: int) -> None:
        original, self.calls = MultimodalEntityLinkingPipeline.__call__, 0

        def call(pipe, *args, **kwargs):
            self.calls += 1
            if self.calls == at:
                raise KeyboardInterrupt
            return original(pipe, *args, **kwargs)

        monkeypatch.setattr(MultimodalEntityLinkingPipeline, "__call__", call)


def _killed_run(setup, monkeypatch, inputs, output, *extra: str) -> bytes:
    """A `mel link` killed after its first chunk of 8 lines (batch size 1); returns the partial output it left."""
    with monkeypatch.context() as m:
        _KillAt(m, at=2)
        with pytest.raises(KeyboardInterrupt):
            _link(setup, inputs, output, "--batch_size", "1", *extra)
    partial = str(output) + cli_link.PARTIAL_SUFFIX
    with open(partial, "rb") as f:
        data = f.read()
    assert data.count(b"\n") == 8 and os.path.isfile(partial + cli_link.META_SUFFIX)
    return data


# -- 1. weights of another model ---------------------------------------------------------------------------------------


def test_mel_link_refuses_weights_of_another_model(setup, tmp_path, capsys):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 2)
    assert _link(setup, inputs, output, model="mixed") == 2
    err = _one_line(capsys.readouterr().err)
    assert setup["mixed"] in err and "ZemelPolyEncoder" in err and "missing from the checkpoint" in err
    assert "--allow_weight_mismatch" in err and not output.exists()
    # research: accepted with the option (logged), the run goes on
    assert _link(setup, inputs, output, "--allow_weight_mismatch", model="mixed") == 0 and output.exists()


def test_mel_index_refuses_weights_of_another_model(setup, tmp_path, capsys):
    out = tmp_path / "index"
    assert main(["index", "--model", setup["mixed"], "--kb", setup["kb"], "--out", str(out), "--no_images"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "do not belong" in err and "--allow_weight_mismatch" in err and not out.exists()


def test_pipeline_refuses_weights_of_another_model(setup):
    from transformers import pipeline

    with pytest.raises(ValueError, match="allow_weight_mismatch=True") as info:
        pipeline(TASK, model=setup["mixed"], kb=setup["kb"], use_images=False)
    assert "\n" not in str(info.value) and setup["mixed"] in str(info.value)
    pipe = pipeline(TASK, model=setup["mixed"], kb=setup["kb"], use_images=False, allow_weight_mismatch=True)
    assert pipe.kb is not None
    with pytest.raises(ValueError, match="only be set when the pipeline is built"):
        pipe({"text": NASA, "mention": "NASA"}, allow_weight_mismatch=True)


@pytest.mark.parametrize("name", ["nsp", "zemel"])
def test_models_saved_with_save_pretrained_load_cleanly(setup, name):
    """Non-persistent buffers (ZEMEL position_ids) are not asked of the checkpoint."""
    from transformers import pipeline

    model, _ = cli_inference.load_model_and_processor(setup[name])
    check_model_weights(model)
    assert pipeline(TASK, model=setup[name], kb=setup["kb"], use_images=False)({"text": NASA, "mention": "NASA"})


def test_a_model_built_from_another_models_folder_is_not_checked(setup):
    """A PFMEL / ZEMEL model initialised from a text backbone keeps the backbone folder as name_or_path: its weights
    were not loaded from there as this class, so the pipeline does not compare them (in-memory use after training)."""
    from transformers import pipeline

    model, processor = tiny_nsp()
    model.name_or_path = setup["zemel"]  # a folder of another model type
    assert model.name_or_path == setup["zemel"]
    check_model_weights(model)
    assert pipeline(TASK, model=model, processor=processor, kb=setup["kb"], use_images=False)(
        {"text": NASA, "mention": "NASA"})


def test_tied_weights_are_not_missing(tmp_path):
    """A model with tied weights (BERT's MLM decoder = its word embeddings) saves one of them: not a mismatch."""
    from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20)
    BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm")
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    check_model_weights(model)


# -- 2. a retriever index over another KB ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_index(setup, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("other_index") / "index")
    assert main(["index", "--model", setup["zemel"], "--kb", setup["other_kb"], "--out", out, "--no_images"]) == 0
    return out


def test_mel_link_refuses_a_retriever_built_over_another_kb(setup, other_index, tmp_path, capsys, monkeypatch):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 2)

    def no_linking(*args, **kwargs):
        raise AssertionError("linking started")

    monkeypatch.setattr(MultimodalEntityLinkingPipeline, "__call__", no_linking)
    assert _link(setup, inputs, output, "--retriever", other_index, "--retriever_model", setup["zemel"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert other_index in err and setup["kb"] in err and "another knowledge base" in err
    assert "none of its 5 entities is in the KB" in err and not output.exists()


def test_pipeline_refuses_a_retriever_over_a_partly_other_kb(setup, tmp_path):
    from transformers import pipeline

    from modeling_mel.entity_index import EntityIndex

    model, processor = tiny_zemel()
    same_kb = [{k: r[k] for k in ("entity_id", "name", "description")} for r in KB_ROWS]
    rows = same_kb[:3] + [{"entity_id": "elsewhere", "name": "Elsewhere", "description": "not in the KB"}]
    index = EntityIndex.build(model, processor, rows, progress=False)
    with pytest.raises(ValueError, match="1 of its 4 entities are not in the KB") as info:
        pipeline(TASK, model=setup["nsp"], kb=setup["kb"], use_images=False, retriever=index)
    assert "'elsewhere'" in str(info.value)
    same = EntityIndex.build(model, processor, same_kb, progress=False)  # the same KB: accepted
    assert pipeline(TASK, model=setup["nsp"], kb=setup["kb"], use_images=False, retriever=same).retriever is same


# -- 3. one writer per output ------------------------------------------------------------------------------------------

_HOLDER = """
import sys
from modeling_mel.index_files import output_write_lock
with output_write_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_on_the_same_output_exits_2_at_once(setup, tmp_path, capsys, monkeypatch):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 3)
    partial = tmp_path / ("links.jsonl" + cli_link.PARTIAL_SUFFIX)
    output.write_bytes(b"previous links\n")
    partial.write_bytes(b'{"line": 1, "id": "m1", "predictions": []}\n')
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(output)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with monkeypatch.context() as m:
            m.setattr(cli_inference, "load_model_and_processor",
                      lambda *a, **k: pytest.fail("the second run loaded a model"))
            assert _link(setup, inputs, output) == 2
            assert _link(setup, inputs, output, "--resume") == 2
        err = capsys.readouterr().err
        first = next(line for line in err.splitlines() if line.startswith("mel "))
        assert str(output) in first and "another `mel link`" in first and f"process {holder.pid}" in first
        assert output.read_bytes() == b"previous links\n"  # both outputs intact
        assert partial.read_bytes() == b'{"line": 1, "id": "m1", "predictions": []}\n'
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert _link(setup, inputs, output) == 0  # the lock went with its holder
    assert len(output.read_bytes().splitlines()) == 3
    assert not os.path.exists(str(partial) + ".lock") and not partial.exists()


def test_a_thread_holding_the_output_stops_a_second_writer(setup, tmp_path, capsys):
    from modeling_mel.index_files import output_write_lock

    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 2)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with output_write_lock(output):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(60)
        assert _link(setup, inputs, output) == 2
        assert "another writer in this process" in _one_line(capsys.readouterr().err) and not output.exists()
    finally:
        release.set()
        thread.join()


def test_mel_calibrate_takes_the_lock_of_its_output(setup, tmp_path, capsys, no_model_loading):
    from modeling_mel.index_files import output_write_lock

    data = tmp_path / "dev.jsonl"
    _mentions(data, 4)
    out = tmp_path / "cal"
    out.mkdir()
    with output_write_lock(out / "nil_calibration.json"):
        code = main(["calibrate", "--model", setup["nsp"], "--kb", setup["kb"], "--data", str(data), "--out", str(out),
                     "--no_images"])
    assert code == 2
    err = _one_line(capsys.readouterr().err)
    assert str(out / "nil_calibration.json") in err and "another writer in this process" in err


# -- 4. --resume checks the input and the options ----------------------------------------------------------------------


def test_resume_refuses_a_changed_input(setup, tmp_path, monkeypatch, capsys):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    lines = _mentions(inputs, 20, ids=False)  # no ids: the partial lines alone cannot tell the input changed
    kept = _killed_run(setup, monkeypatch, inputs, output)
    inputs.write_bytes(b"".join(line + b"\n" for line in reversed(lines)))  # reordered
    capsys.readouterr()
    assert _link(setup, inputs, output, "--batch_size", "1", "--resume") == 2
    err = _one_line(capsys.readouterr().err)
    assert "--resume" in err and "--input" in err and "content changed" in err and "--top_k" not in err
    assert (tmp_path / "links.jsonl.partial").read_bytes() == kept and not output.exists()


@pytest.mark.parametrize(
    "change, named",
    [(["--top_k", "2"], "--top_k (3 -> 2)"), (["--no_images"], None), (["--retriever", "bm25"], "--retriever")],
)
def test_resume_refuses_changed_options(setup, tmp_path, monkeypatch, capsys, change, named):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 20)
    kept = _killed_run(setup, monkeypatch, inputs, output)
    capsys.readouterr()
    code = _link(setup, inputs, output, "--batch_size", "1", "--resume", *change)
    if named is None:  # the same option again: not a change
        assert code == 0 and len(output.read_bytes().splitlines()) == 20 and output.read_bytes().startswith(kept)
        return
    assert code == 2
    err = _one_line(capsys.readouterr().err)
    assert named in err and "--input" not in err
    assert (tmp_path / "links.jsonl.partial").read_bytes() == kept


def test_resume_refuses_a_changed_model_folder(setup, tmp_path, monkeypatch, capsys):
    model = tmp_path / "nsp"
    shutil.copytree(setup["nsp"], model)
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 20)
    local = dict(setup, nsp=str(model))
    _killed_run(local, monkeypatch, inputs, output)
    tiny_nsp(seed=1)[0].save_pretrained(model)  # retrained in place
    capsys.readouterr()
    assert _link(local, inputs, output, "--batch_size", "1", "--resume") == 2
    assert f"--model ({str(model)!r}: its files changed)" in _one_line(capsys.readouterr().err)


def test_resume_with_the_same_input_and_options_continues(setup, tmp_path, monkeypatch, capsys):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 20, ids=False)
    kept = _killed_run(setup, monkeypatch, inputs, output)
    capsys.readouterr()
    assert _link(setup, inputs, output, "--batch_size", "1", "--resume") == 0
    final = output.read_bytes()
    assert final.startswith(kept) and [json.loads(x)["line"] for x in final.splitlines()] == list(range(1, 21))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed"] == 8
    assert not os.path.exists(str(output) + cli_link.PARTIAL_SUFFIX + cli_link.META_SUFFIX)


def test_resume_of_a_partial_without_its_fingerprint_is_refused(setup, tmp_path, monkeypatch, capsys):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 20)
    _killed_run(setup, monkeypatch, inputs, output)
    os.remove(str(output) + cli_link.PARTIAL_SUFFIX + cli_link.META_SUFFIX)
    capsys.readouterr()
    assert _link(setup, inputs, output, "--resume") == 2
    assert "no record of the input and options" in _one_line(capsys.readouterr().err)


# -- 5. write targets --------------------------------------------------------------------------------------------------


def _read_only(folder, monkeypatch) -> None:
    """Make ``folder`` refuse new files: chmod 0o555, and where that does not stop this user (root), opens for
    writing under it raise EACCES as the kernel would."""
    os.chmod(folder, 0o555)
    probe = os.path.join(folder, ".probe")
    try:
        with open(probe, "w"):
            pass
    except PermissionError:
        return
    os.remove(probe)
    inside = os.path.realpath(folder) + os.sep
    real_os_open, real_open = os.open, builtins.open

    def refused(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.realpath(os.fspath(path)).startswith(inside)

    def fake_os_open(path, flags, *args, **kwargs):
        if refused(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_os_open(path, flags, *args, **kwargs)

    def fake_open(file, mode="r", *args, **kwargs):
        if refused(file) and any(c in mode for c in "wax+"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(builtins, "open", fake_open)


def test_mel_link_into_a_read_only_folder_exits_2_before_loading(setup, tmp_path, monkeypatch, capsys,
                                                                no_model_loading):
    inputs = tmp_path / "mentions.jsonl"
    _mentions(inputs, 2)
    folder = tmp_path / "ro"
    folder.mkdir()
    try:
        _read_only(folder, monkeypatch)
        assert _link(setup, inputs, folder / "links.jsonl") == 2
    finally:
        monkeypatch.undo()
        os.chmod(folder, 0o755)
    err = _one_line(capsys.readouterr().err)
    assert str(folder) in err and "EACCES" in err and os.listdir(folder) == []


def _chattr(flag: str, path) -> bool:
    exe = shutil.which("chattr")
    return bool(exe) and subprocess.run([exe, flag, str(path)], capture_output=True, check=False).returncode == 0


def test_an_immutable_output_exits_2_before_loading(setup, tmp_path, capsys, no_model_loading):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 2)
    output.write_bytes(b"previous links\n")
    if not _chattr("+i", output):
        pytest.skip("chattr +i is not available here (no CAP_LINUX_IMMUTABLE or no file attributes)")
    try:
        assert _link(setup, inputs, output) == 2
    finally:
        _chattr("-i", output)
    err = _one_line(capsys.readouterr().err)
    assert str(output) in err and "immutable" in err and output.read_bytes() == b"previous links\n"


def test_a_failed_final_rename_keeps_every_line_for_resume(setup, tmp_path, monkeypatch, capsys):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 5)
    real_replace = os.replace

    def refuse(src, dst, *args, **kwargs):
        if os.fspath(dst) == str(output):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), os.fspath(src), os.fspath(dst))
        return real_replace(src, dst, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", refuse)
        assert _link(setup, inputs, output) == 2
    err = _one_line(capsys.readouterr().err)
    partial = tmp_path / ("links.jsonl" + cli_link.PARTIAL_SUFFIX)
    assert "EPERM" in err and str(output) in err and str(partial) in err and not output.exists()
    assert len(partial.read_bytes().splitlines()) == 5  # every line kept
    assert _link(setup, inputs, output, "--resume") == 0 and len(output.read_bytes().splitlines()) == 5


class _FullDisk:
    """A binary file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def test_a_full_disk_during_mel_link_is_one_line_and_keeps_the_lines(setup, tmp_path, monkeypatch, capsys):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    _mentions(inputs, 20)
    partial = str(output) + cli_link.PARTIAL_SUFFIX
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FullDisk(f, room=1500) if os.fspath(file) == partial and "b" in mode else f

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", fake_open)
        assert _link(setup, inputs, output, "--batch_size", "1") == 2
    err = _one_line(capsys.readouterr().err)
    assert partial in err and "ENOSPC" in err and "--resume" in err and not output.exists()
    with open(partial, "rb") as f:
        kept = f.read()
    assert 0 < kept.count(b"\n") < 20
    assert _link(setup, inputs, output, "--batch_size", "1", "--resume") == 0  # space is back: nothing was lost
    final = output.read_bytes()
    assert final.startswith(kept) and [json.loads(x)["line"] for x in final.splitlines()] == list(range(1, 21))


def test_a_full_disk_during_mel_index_is_one_line_and_keeps_the_previous_index(setup, tmp_path, monkeypatch, capsys):
    import safetensors.numpy
    from safetensors import SafetensorError

    from modeling_mel.entity_index import EntityIndex

    out = tmp_path / "index"
    args = ["index", "--model", setup["zemel"], "--kb", setup["kb"], "--out", str(out), "--no_images",
            "--store_vectors", "yes"]
    assert main(args) == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    capsys.readouterr()
    assert main(args) == 2
    err = _one_line(capsys.readouterr().err)
    assert str(out) in err and "No space left on device" in err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert len(EntityIndex.load(out)) == len(KB_ROWS)
    assert [n for n in os.listdir(tmp_path) if n.startswith("index.tmp")] == []


def test_mel_calibrate_out_a_read_only_folder_exits_2_before_loading(setup, tmp_path, monkeypatch, capsys,
                                                                    no_model_loading):
    data = tmp_path / "dev.jsonl"
    _mentions(data, 4)
    folder = tmp_path / "ro"
    folder.mkdir()
    try:
        _read_only(folder, monkeypatch)
        code = main(["calibrate", "--model", setup["nsp"], "--kb", setup["kb"], "--data", str(data), "--out",
                     str(folder), "--no_images"])
    finally:
        monkeypatch.undo()
        os.chmod(folder, 0o755)
    assert code == 2
    err = _one_line(capsys.readouterr().err)
    assert str(folder) in err and "EACCES" in err and "--out" in err


def test_mel_calibrate_write_failure_prints_the_result_and_one_line(setup, tmp_path, monkeypatch, capsys):
    from modeling_mel import nil

    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": f"news about {r['name']}", "mention": r["name"],
                                        "entity_id": r["entity_id"]}) + "\n" for r in KB_ROWS))
    out = tmp_path / "cal"
    out.mkdir()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nil, "save_calibration", full)
    code = main(["calibrate", "--model", setup["nsp"], "--kb", setup["kb"], "--data", str(data), "--out", str(out),
                 "--no_images", "--fp32", "--nil_fraction", "0.5"])
    captured = capsys.readouterr()
    assert code == 2
    err = _one_line(captured.err)
    assert str(out / "nil_calibration.json") in err and "ENOSPC" in err
    assert "threshold" in json.loads(captured.out.strip().splitlines()[-1])  # the linking is not lost
    assert os.listdir(out) == []
