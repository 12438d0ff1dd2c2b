"""Output folders of training runs, shared by both families' training arguments and scripts: a non-empty
``--output_dir`` holding another run is refused unless ``--overwrite_output_dir`` (which removes the old checkpoints)
or ``--resume_from_checkpoint`` is given; ``--resume_from_checkpoint last`` is resolved and the checkpoint's files are
checked before anything is loaded, with one-line errors naming the file and the fix."""

from __future__ import annotations

import json
import logging
import os
import zipfile
import shutil
import struct
from dataclasses import dataclass, field

from transformers import TrainingArguments

logger = logging.getLogger(__name__)


#: ``--resume_from_checkpoint`` values meaning "the newest checkpoint-* of --output_dir".
RESUME_LAST = ("last", "latest", "True", "true")
#: Files whose presence marks a folder as holding a saved model.
_MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _checkpoint_dirs(output_dir: str) -> list[str]:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return sorted(
        name for name in os.listdir(output_dir)
        if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and os.path.isdir(os.path.join(output_dir, name))
    )


def check_output_dir_args(output_dir: str | None, overwrite_output_dir: bool, resume_from_checkpoint: str | None) -> None:
    """Argument-level check (no file system changes): ``--overwrite_output_dir`` removes the checkpoints that
    ``--resume_from_checkpoint`` would resume, so the two together are a ``ValueError`` when the checkpoint is in
    ``output_dir``."""
    if not (overwrite_output_dir and resume_from_checkpoint):
        return
    inside = resume_from_checkpoint in RESUME_LAST or (
        output_dir and os.path.abspath(resume_from_checkpoint).startswith(os.path.abspath(output_dir) + os.sep)
    )
    if inside:
        raise ValueError(
            f"--overwrite_output_dir removes the checkpoints of --output_dir {output_dir!r}; it cannot be combined with "
            f"--resume_from_checkpoint {resume_from_checkpoint!r}: drop one of them"
        )


def prepare_output_dir(output_dir: str, overwrite_output_dir: bool = False, resume_from_checkpoint: str | None = None) -> None:
    """Refuse an ``output_dir`` holding a model (``config.json`` / ``model.safetensors``) or ``checkpoint-*`` folders
    of another run (``ValueError`` naming the folder and the fix), unless resuming (``resume_from_checkpoint``) or
    ``overwrite_output_dir`` (then its ``checkpoint-*`` folders are removed, so that a later
    ``--resume_from_checkpoint last`` cannot pick up the old run)."""
    check_output_dir_args(output_dir, overwrite_output_dir, resume_from_checkpoint)
    if resume_from_checkpoint or not output_dir or not os.path.isdir(output_dir):
        return
    checkpoints = _checkpoint_dirs(output_dir)
    used = [name for name in _MODEL_FILES if os.path.isfile(os.path.join(output_dir, name))] + checkpoints
    if not used:
        return
    if not overwrite_output_dir:
        shown = ", ".join(used[:4]) + (", ..." if len(used) > 4 else "")
        raise ValueError(
            f"--output_dir {output_dir!r} already holds another run ({shown}); pass --overwrite_output_dir to replace it "
            "(its checkpoints are removed), --resume_from_checkpoint last to resume it, or choose an empty --output_dir"
        )
    import shutil

    for name in checkpoints:
        shutil.rmtree(os.path.join(output_dir, name))
    if checkpoints:
        logger.warning("--overwrite_output_dir: removed %d old checkpoint folder(s) of %s", len(checkpoints), output_dir)


def _check_safetensors(path: str) -> None:
    """``ValueError`` naming ``path`` unless its header parses and the file is as long as the header says."""
    import struct

    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError("header length beyond the end of the file")
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise ValueError(f"checkpoint file {path} is corrupt (not a readable safetensors file: {err})") from None
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        raise ValueError(f"checkpoint file {path} is truncated or corrupt ({size} bytes, its header says {expected})")


def _check_torch_file(path: str) -> None:
    """``ValueError`` naming ``path`` unless it is a readable ``torch.save`` zip archive (or a legacy pickle)."""
    import zipfile

    with open(path, "rb") as f:
        start = f.read(2)
    if start[:1] == b"\x80":  # legacy (non-zip) torch.save pickle
        return
    try:
        with zipfile.ZipFile(path) as archive:
            if not archive.namelist():
                raise zipfile.BadZipFile("empty archive")
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"checkpoint file {path} is corrupt (not a readable torch.save file: {err})") from None


def check_checkpoint(path: str) -> None:
    """``ValueError`` naming the file when the Trainer checkpoint folder ``path`` is incomplete or corrupt: a missing or
    unreadable ``trainer_state.json``, no model weights, truncated ``*.safetensors``, unreadable ``*.pt`` /
    ``*.pth`` / ``pytorch_model*.bin`` (optimizer, scheduler, RNG states)."""
    state = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state):
        raise ValueError(f"checkpoint file {state} is missing: {path!r} is not a complete Trainer checkpoint")
    try:
        with open(state, encoding="utf-8") as f:
            if not isinstance(json.load(f), dict):
                raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"checkpoint file {state} is corrupt ({err})") from None
    names = sorted(os.listdir(path))
    weights = [n for n in names if n.endswith(".safetensors") or (n.startswith("pytorch_model") and n.endswith(".bin"))]
    other_layouts = any(n.startswith(("global_step", "pytorch_model_fsdp")) for n in names)  # DeepSpeed / FSDP
    if not weights and not other_layouts:
        raise ValueError(f"checkpoint file {os.path.join(path, 'model.safetensors')} is missing: no model weights in {path!r}")
    for name in names:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        if name.endswith(".safetensors"):
            _check_safetensors(file)
        elif name.endswith((".pt", ".pth")) or (name.startswith("pytorch_model") and name.endswith(".bin")):
            _check_torch_file(file)


def resolve_resume_checkpoint(output_dir: str | None, resume_from_checkpoint: str | None) -> str | None:
    """The checkpoint folder that ``--resume_from_checkpoint`` names (``last``: the newest ``checkpoint-*`` of
    ``output_dir``), checked with :func:`check_checkpoint`; ``None`` when not resuming. ``ValueError`` (one line,
    naming the folder or file) otherwise."""
    from transformers.trainer_utils import get_last_checkpoint

    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint in RESUME_LAST:
        if not output_dir or not os.path.isdir(output_dir):
            raise ValueError(
                f"--resume_from_checkpoint {resume_from_checkpoint}: --output_dir {output_dir!r} does not exist; "
                "nothing to resume (drop --resume_from_checkpoint to start a new run)"
            )
        path = get_last_checkpoint(output_dir)
        if path is None:
            raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint}: no checkpoint-* folder in {output_dir!r}")
    elif not os.path.isdir(resume_from_checkpoint):
        raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint folder")
    else:
        path = resume_from_checkpoint
    check_checkpoint(path)
    return path


@dataclass
class SafeOutputTrainingArguments(TrainingArguments):
    """``TrainingArguments`` whose ``--output_dir`` is checked (:func:`check_output_dir_args`) when parsed; the base of
    ``PFMELTrainingArguments`` and ``ZemelTrainingArguments``."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "train into an --output_dir that holds another run's model or checkpoint-* folders (the old "
                  "checkpoints are removed first); without it such a folder is refused unless resuming"},
    )

    def __post_init__(self) -> None:
        check_output_dir_args(self.output_dir, self.overwrite_output_dir, self.resume_from_checkpoint)
        super().__post_init__()


__all__ = [
    "RESUME_LAST",
    "SafeOutputTrainingArguments",
    "check_output_dir_args",
    "prepare_output_dir",
    "check_checkpoint",
    "resolve_resume_checkpoint",
]
