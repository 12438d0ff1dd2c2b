"""Output folder safety of the training scripts (issue 15, point 4).

``train/pretrain_nsp.py``, ``train/finetune_linking.py``, ``train/train_zemel.py`` (and ``mel pretrain|finetune|
train-zemel``) refuse an ``--output_dir`` holding another run (a model or ``checkpoint-*`` folders) unless
``--overwrite_output_dir`` (which removes the old checkpoints) or ``--resume_from_checkpoint``; resuming from a missing
folder or a corrupt checkpoint is a one-line error naming the folder / file; ``mel`` prints argument, data and
checkpoint errors as one line ``mel <command>: <message>`` and exits 2. One tiny 1-step run makes the checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import pytest
from conftest import train_script
import torch

from pfmel_fixtures import tiny_backbone  # noqa: F401
from modeling_mel.cli import main as mel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["pretrain_nsp", "finetune_linking", "train_zemel"]
MEL = {"pretrain_nsp": "pretrain", "finetune_linking": "finetune", "train_zemel": "train-zemel"}
TRAIN_ARGV = ["--use_cpu", "True", "--report_to", "none", "--disable_tqdm", "True", "--logging_steps", "1",
              "--per_device_train_batch_size", "4", "--max_steps", "1"]


def _script(name: str):
    return train_script(name, "_out_dir_test")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def argv_of(sample_dir, tiny_backbone):  # noqa: F811
    """``argv_of(script, output_dir, *extra)``: the arguments of a tiny text-only run (refused ones load nothing)."""

    def build(script: str, output_dir, *extra: str) -> list[str]:
        if script == "train_zemel":
            base = ["--dataset", "mel_jsonl", "--data_dir", sample_dir, "--backbone", tiny_backbone,
                    "--image_features", "none", "--use_cpu", "--report_to", "none", "--max_steps", "1"]
        else:
            base = ["--dataset", "twitter_mel", "--data_dir", sample_dir, "--backbone", tiny_backbone,
                    "--image_features", "none", "--max_length", "64", "--max_train_samples", "4",
                    "--max_eval_samples", "2", *TRAIN_ARGV]
            if script == "finetune_linking":
                base += ["--eval_splits", "dev", "--num_negatives", "1"]
            else:
                base += ["--tasks", "text"]
        return base + ["--output_dir", str(output_dir), *extra]

    return build


@pytest.fixture(scope="module")
def used_run(argv_of, tmp_path_factory) -> str:
    """A finished 1-step fine-tuning run: model files + checkpoint-1 in its output folder."""
    out = tmp_path_factory.mktemp("used") / "run"
    _script("finetune_linking").main(argv_of("finetune_linking", out, "--save_strategy", "steps", "--save_steps", "1"))
    assert (out / "config.json").is_file() and (out / "checkpoint-1" / "trainer_state.json").is_file()
    return str(out)


def _one_line(message: str) -> str:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


# ----------------------------------------------------------------------------------------------------------------------
# A used --output_dir is refused, naming the folder and the fix
def _model_only(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")


def _checkpoints_only(path):
    (path / "checkpoint-3").mkdir(parents=True)


@pytest.mark.parametrize("layout", [_model_only, _checkpoints_only], ids=["model", "checkpoints"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_used_output_dir_is_refused(script, layout, argv_of, tmp_path):
    out = tmp_path / "used"
    layout(out)
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError) as err:
        _script(script).main(argv_of(script, out))
    message = _one_line(str(err.value))
    assert str(out) in message and "--overwrite_output_dir" in message and "--resume_from_checkpoint" in message
    assert sorted(os.listdir(out)) == before  # nothing written or removed


@pytest.mark.parametrize("script", ["finetune_linking", "train_zemel"])
def test_mel_refuses_used_output_dir_in_one_line(script, argv_of, tmp_path, capsys):
    out = tmp_path / "used"
    _checkpoints_only(out)
    code = mel([MEL[script], *argv_of(script, out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"mel {MEL[script]}: ") and str(out) in err and len(err.splitlines()) == 1


def test_overwrite_output_dir_removes_old_checkpoints(used_run, argv_of, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(used_run, out)
    (out / "checkpoint-7").mkdir()  # an older run's newest checkpoint
    (out / "notes.txt").write_text("kept")
    results = _script("finetune_linking").main(argv_of("finetune_linking", out, "--overwrite_output_dir", "True",
                                                       "--save_strategy", "no"))
    assert results["train"]["global_step"] == 1
    assert not [n for n in os.listdir(out) if n.startswith("checkpoint-")]
    assert (out / "model.safetensors").is_file() and (out / "notes.txt").read_text() == "kept"
    # a later "resume last" cannot pick the old run up
    with pytest.raises(ValueError, match="no checkpoint-\\* folder in"):
        _script("finetune_linking").main(argv_of("finetune_linking", out, "--resume_from_checkpoint", "last"))
    # overwriting and resuming the same folder contradict each other
    with pytest.raises(ValueError, match="cannot be combined"):
        _script("finetune_linking").main(argv_of("finetune_linking", out, "--overwrite_output_dir", "True",
                                                 "--resume_from_checkpoint", "last"))


# ----------------------------------------------------------------------------------------------------------------------
# --resume_from_checkpoint last with a missing / checkpoint-less folder
@pytest.mark.parametrize("exists", [False, True], ids=["missing", "no-checkpoints"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_last_without_checkpoints(script, exists, argv_of, tmp_path, capsys):
    out = tmp_path / "fresh"
    if exists:
        out.mkdir()
    with pytest.raises(ValueError) as err:
        _script(script).main(argv_of(script, out, "--resume_from_checkpoint", "last"))
    message = _one_line(str(err.value))
    assert str(out) in message and ("does not exist" in message if not exists else "no checkpoint-* folder" in message)
    code = mel([MEL[script], *argv_of(script, out, "--resume_from_checkpoint", "last")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"mel {MEL[script]}: ") and str(out) in lines[0]


# ----------------------------------------------------------------------------------------------------------------------
# Corrupt checkpoints: one line naming the file
def _truncate_weights(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage_optimizer(ckpt):
    path = ckpt / "optimizer.pt"
    path.write_bytes(b"this is not a torch file" * 10)
    return path


def _no_trainer_state(ckpt):
    path = ckpt / "trainer_state.json"
    path.unlink()
    return path


@pytest.mark.parametrize("corrupt", [_truncate_weights, _garbage_optimizer, _no_trainer_state],
                         ids=["truncated-safetensors", "garbage-optimizer", "no-trainer-state"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_corrupt_checkpoint_is_one_line_error(script, corrupt, used_run, argv_of, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(used_run, out)
    bad = corrupt(out / "checkpoint-1")
    for resume in ("last", str(out / "checkpoint-1")):
        with pytest.raises(ValueError) as err:
            _script(script).main(argv_of(script, out, "--resume_from_checkpoint", resume))
        message = _one_line(str(err.value))
        assert str(bad) in message
    code = mel([MEL[script], *argv_of(script, out, "--resume_from_checkpoint", "last")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(bad) in lines[0]


# ----------------------------------------------------------------------------------------------------------------------
# mel: argument and data errors are one line, exit 2 (argparse's own exits unchanged)
@pytest.mark.parametrize(
    "command, argv, expected",
    [
        ("finetune", ["--dataset", "nope", "--data_dir", "."], "unknown --dataset 'nope'"),
        ("pretrain", ["--dataset", "twitter_mel", "--data_dir", "/nonexistent/corpus"], "/nonexistent/corpus"),
        ("train-zemel", ["--dataset", "nope", "--data_dir", "."], "unknown --dataset 'nope'"),
    ],
)
def test_mel_argument_errors_exit_2_with_one_line(command, argv, expected, tmp_path, capsys):
    code = mel([command, *argv, "--output_dir", str(tmp_path / "o")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"mel {command}: ") and expected in lines[0], lines


def test_mel_argparse_exit_is_unchanged(capsys):
    with pytest.raises(SystemExit) as exit_:
        mel(["finetune", "--max_steps", "many"])
    assert exit_.value.code == 2 and "invalid int value" in capsys.readouterr().err
