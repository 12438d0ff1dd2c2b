"""Output folders of training runs (modeling_mel.run_outputs), without a training run: a folder holding another run is
refused unless overwriting (which removes its checkpoints) or resuming; ``last`` resolves to the newest checkpoint;
incomplete or corrupt checkpoints are one error naming the file. The scripts and ``mel`` around it:
tests/test_output_dir_safety.py."""

from __future__ import annotations

import json
import os

import pytest

from modeling_mel.run_outputs import (
    SafeOutputTrainingArguments,
    check_checkpoint,
    check_output_dir_args,
    prepare_output_dir,
    resolve_resume_checkpoint,
)


def _checkpoint(folder, step: int) -> str:
    """A minimal complete checkpoint: trainer_state.json and a readable (empty) safetensors file."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    header = b"{}"
    (path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return str(path)


def test_a_used_output_dir_is_refused_unless_overwriting_or_resuming(tmp_path):
    prepare_output_dir(str(tmp_path / "new"))  # a missing or empty folder is fine
    prepare_output_dir(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    _checkpoint(tmp_path, 2)
    with pytest.raises(ValueError, match=r"already holds another run \(config\.json, checkpoint-2\); pass "
                                         r"--overwrite_output_dir"):
        prepare_output_dir(str(tmp_path))
    prepare_output_dir(str(tmp_path), resume_from_checkpoint="last")  # resuming: nothing changes
    assert (tmp_path / "checkpoint-2").is_dir()
    prepare_output_dir(str(tmp_path), overwrite_output_dir=True)
    assert not (tmp_path / "checkpoint-2").exists() and (tmp_path / "config.json").is_file()


def test_overwrite_and_resume_inside_the_folder_contradict(tmp_path):
    with pytest.raises(ValueError, match="cannot be combined with --resume_from_checkpoint 'last'"):
        check_output_dir_args(str(tmp_path), True, "last")
    with pytest.raises(ValueError, match="cannot be combined"):
        check_output_dir_args(str(tmp_path), True, str(tmp_path / "checkpoint-3"))
    check_output_dir_args(str(tmp_path), True, str(tmp_path.parent / "elsewhere" / "checkpoint-3"))  # outside: fine
    with pytest.raises(ValueError, match="cannot be combined"):  # checked when the arguments are parsed
        SafeOutputTrainingArguments(output_dir=str(tmp_path), overwrite_output_dir=True, resume_from_checkpoint="last",
                                    report_to="none", use_cpu=True)


def test_last_resolves_to_the_newest_checkpoint(tmp_path):
    assert resolve_resume_checkpoint(str(tmp_path), None) is None
    _checkpoint(tmp_path, 2)
    newest = _checkpoint(tmp_path, 10)  # numeric order, not text order
    assert resolve_resume_checkpoint(str(tmp_path), "last") == newest
    assert resolve_resume_checkpoint(str(tmp_path), "latest") == newest
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint last: no checkpoint-\* folder in"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-2"), "last")
    with pytest.raises(ValueError, match="--output_dir .* does not exist; nothing to resume"):
        resolve_resume_checkpoint(str(tmp_path / "missing"), "last")
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        resolve_resume_checkpoint(str(tmp_path), str(tmp_path / "checkpoint-9"))


def test_incomplete_or_corrupt_checkpoints_name_the_file(tmp_path):
    path = _checkpoint(tmp_path, 1)
    check_checkpoint(path)
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "ab") as f:
        f.write(b"extra")
    with pytest.raises(ValueError, match=r"checkpoint file .*model\.safetensors is truncated or corrupt \(15 bytes, "
                                         r"its header says 10\)"):
        check_checkpoint(path)
    os.remove(weights)
    with pytest.raises(ValueError, match=r"model\.safetensors is missing: no model weights in"):
        check_checkpoint(path)
    (tmp_path / "checkpoint-1" / "pytorch_model.bin").write_bytes(b"PK not a zip")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is corrupt \(not a readable torch\.save file"):
        check_checkpoint(path)
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text("{trunc")
    with pytest.raises(ValueError, match=r"trainer_state\.json is corrupt"):
        check_checkpoint(path)
    os.remove(tmp_path / "checkpoint-1" / "trainer_state.json")
    with pytest.raises(ValueError, match=r"trainer_state\.json is missing: .* is not a complete Trainer checkpoint"):
        check_checkpoint(path)
