"""PFMEL training runs: the train/ scripts end to end (pre-training, fine-tuning, evaluation), resume, errors,
multi-process. Each script's own arguments and help: tests/test_<script>.py; the Trainer's per-task losses:
tests/test_pfmel_trainer.py; prediction and metrics: tests/test_pfmel_evaluation.py; the arguments:
tests/test_pfmel_arguments.py; listwise training: tests/test_pfmel_listwise.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import train_script
from transformers import TrainerCallback

from modeling_mel.modeling_multimodal_nsp import BertForMultimodalNSP

from pfmel_fixtures import (  # noqa: F401 - fixtures
    base_argv,
    make_tiny_backbone,
    tiny_backbone,
    tiny_resnet_dir,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name: str):
    return train_script(name, "_pfmel_test")


TRAIN_ARGV = ["--use_cpu", "True", "--report_to", "none", "--disable_tqdm", "True", "--logging_steps", "1",
              "--per_device_train_batch_size", "4", "--learning_rate", "1e-3"]


# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("old, new", [
    ("pfmel_training", "pfmel_arguments"), ("pfmel_training", "pfmel_trainer"), ("pfmel_training", "pfmel_evaluation"),
    ("pfmel_training", "pfmel_listwise"), ("pfmel_data", "pfmel_pretraining_pairs"), ("pfmel_data", "pfmel_features"),
])
def test_moved_names_stay_importable_from_their_old_module(old, new):
    # scripts, tests and users import them from pfmel_training / pfmel_data, where they lived before
    old_module, new_module = (importlib.import_module(f"modeling_mel.{m}") for m in (old, new))
    assert new_module.__all__
    for name in new_module.__all__:
        assert getattr(old_module, name) is getattr(new_module, name), name


def test_cli_help_and_commands(capsys):
    from modeling_mel.cli import COMMANDS, main

    assert {"demo", "pretrain", "finetune", "evaluate"} <= set(COMMANDS)
    assert main(["--help"]) == 0
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["finetune", "--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit):
        main(["nope"])


def test_end_to_end_pretrain_finetune_evaluate(base_argv, tiny_backbone, tmp_path):
    pre_dir, fine_dir = str(tmp_path / "pre"), str(tmp_path / "fine")
    summary = _script("pretrain_nsp").main(
        base_argv + TRAIN_ARGV + ["--backbone", tiny_backbone, "--output_dir", pre_dir, "--max_steps", "3", "--save_strategy", "no"]
    )
    assert summary["global_step"] == 3 and set(summary["pairs_per_task"]) == {"mixed", "text", "multi"}
    assert os.path.isfile(os.path.join(pre_dir, "config.json"))
    results = _script("finetune_linking").main(
        base_argv + TRAIN_ARGV + ["--init_from", pre_dir, "--output_dir", fine_dir, "--max_steps", "3", "--save_strategy", "no"]
    )
    saved = json.load(open(os.path.join(fine_dir, "eval_results.json")))
    for split in ("dev", "test"):
        assert {"accuracy", "candidate_recall"} <= set(saved[split])
        assert 0.0 <= saved[split]["accuracy"] <= saved[split]["candidate_recall"] <= 1.0
        assert saved[split] == results[split]
    config = json.load(open(os.path.join(fine_dir, "config.json")))
    assert "auto_map" in config and "pfmel_image_features" not in config  # image settings live in the processor
    assert config["max_candidates"] == 32  # the name-rule cap of training and evaluation, which the pipeline follows
    processor_config = json.load(open(os.path.join(fine_dir, "processor_config.json")))
    assert processor_config["image_features"] == "resnet50" and processor_config["feature_norm"] == "center_l2"
    assert len(processor_config["feature_mean"]) == json.load(open(os.path.join(fine_dir, "config.json")))["image_feature_dim"]
    out = str(tmp_path / "eval.json")
    ev = _script("evaluate_linking").main(base_argv[:10] + ["--model", fine_dir, "--split", "dev", "--output_file", out,
                                                            "--max_eval_samples", "10"])
    assert ev["dev"]["accuracy"] == pytest.approx(results["dev"]["accuracy"])
    assert json.load(open(out))["dev"]["n"] == 10
    # NIL metrics under the protocol: off without a calibration; with one, its threshold and protocol are used
    # (uncalibrated, a NIL mention is still found when none of its candidates is left in the reduced KB)
    assert ev["dev"]["nil_threshold"] is None and ev["dev"]["nil_fraction"] == 0.2 and ev["dev"]["nil_recall"] < 1.0
    from modeling_mel.nil import save_calibration

    save_calibration(fine_dir, {"threshold": 1e9, "protocol": {"nil_fraction": 0.5, "seed": 1}})
    ev = _script("evaluate_linking").main(base_argv[:10] + ["--model", fine_dir, "--split", "dev", "--output_file", out,
                                                            "--max_eval_samples", "10"])
    saved = json.load(open(out))["dev"]
    assert saved["nil_threshold"] == 1e9 and saved["nil_fraction"] == 0.5 and saved["nil_removed_entities"] > 0
    assert saved["nil_recall"] == 1.0 and saved["nil_in_kb_accuracy"] == 0.0  # every mention predicted NIL
    assert saved["accuracy"] == pytest.approx(results["dev"]["accuracy"])  # linking accuracy unchanged
    os.remove(os.path.join(fine_dir, "nil_calibration.json"))
    # the text-only model of the same run must be evaluated text-only
    with pytest.raises(ValueError, match="--image_features 'resnet50'"):
        _script("evaluate_linking").main(base_argv[:10] + ["--model", fine_dir, "--image_features", "none"])
    # a backbone whose hidden size does not match the loaded model: error before training
    with pytest.raises(ValueError, match="hidden size"):
        _script("finetune_linking").main(base_argv + TRAIN_ARGV + ["--init_from", pre_dir, "--backbone", "minilm",
                                                                  "--output_dir", str(tmp_path / "x")])


def test_finetune_missing_split_and_text_only_pretraining(base_argv, tiny_backbone, tmp_path):
    with pytest.raises(ValueError, match="unknown split 'val'"):
        _script("finetune_linking").main(base_argv + ["--output_dir", str(tmp_path), "--eval_splits", "dev", "val"])
    with pytest.raises(ValueError, match="need images"):
        _script("pretrain_nsp").main(base_argv + ["--backbone", tiny_backbone, "--output_dir", str(tmp_path),
                                                  "--image_features", "none"])


class _StopAt(TrainerCallback):
    """Simulates an interruption: stops training after ``step`` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_resume_from_checkpoint(base_argv, tiny_backbone, tmp_path):
    out = str(tmp_path / "run")
    argv = base_argv + TRAIN_ARGV + ["--backbone", tiny_backbone, "--output_dir", out, "--max_steps", "4",
                                     "--save_strategy", "steps", "--save_steps", "2", "--eval_splits", "dev"]
    first = _script("finetune_linking").main(argv, callbacks=[_StopAt(3)])
    assert first["train"]["global_step"] == 3
    assert os.path.isdir(os.path.join(out, "checkpoint-2")) and not os.path.isdir(os.path.join(out, "checkpoint-4"))
    # "last" resolves to the newest checkpoint-* of --output_dir (here checkpoint-2)
    resumed = _script("finetune_linking").main(argv + ["--resume_from_checkpoint", "last"])
    assert resumed["train"]["global_step"] == 4
    state = json.load(open(os.path.join(out, "checkpoint-4", "trainer_state.json")))
    assert state["global_step"] == 4 and state["max_steps"] == 4
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        _script("finetune_linking").main(argv + ["--resume_from_checkpoint", os.path.join(out, "checkpoint-9")])


# ----------------------------------------------------------------------------------------------------------------------
def _step1_loss(output_dir: str) -> float:
    state = json.load(open(os.path.join(output_dir, "checkpoint-1", "trainer_state.json")))
    return next(h["loss"] for h in state["log_history"] if h.get("step") == 1 and "loss" in h)


@pytest.mark.slow
def test_two_cpu_processes_log_the_single_process_loss(base_argv, tmp_path):
    """torchrun with 2 CPU processes, per-device batch 2 == 1 process with batch 4: same step-1 loss (no x world size)."""
    backbone = make_tiny_backbone(str(tmp_path / "tiny_nodrop"), dropout=0.0)
    common = base_argv + ["--backbone", backbone, "--use_cpu", "True", "--report_to", "none", "--disable_tqdm", "True",
                          "--logging_steps", "1", "--max_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
                          "--train_sampling_strategy", "sequential", "--eval_splits", "dev", "--max_eval_samples", "4"]
    script = os.path.join(REPO, "train", "finetune_linking.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    subprocess.run([sys.executable, script, *common, "--per_device_train_batch_size", "4", "--output_dir", single],
                   check=True, env=env, cwd=REPO, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    proc = subprocess.run([*torchrun, script, *common, "--per_device_train_batch_size", "2", "--output_dir", multi],
                          env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2" in proc.stderr or "num_processes=2" in proc.stderr or True
    assert _step1_loss(multi) == pytest.approx(_step1_loss(single), rel=1e-4)
    assert json.load(open(os.path.join(multi, "eval_results.json")))["dev"]["n"] == 4
