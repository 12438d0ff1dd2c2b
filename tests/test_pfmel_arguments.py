"""PFMEL's run arguments: the paper's defaults (Table 3), a bad value refused with the option's name before anything is
loaded, and the command lines ``HfArgumentParser`` reads into them (the scripts' parsers)."""

from __future__ import annotations

import pytest
from transformers import HfArgumentParser

from modeling_mel.pfmel_arguments import (
    DATASETS,
    SPLITS,
    PFMELDataArguments,
    PFMELFinetuningArguments,
    PFMELModelArguments,
    PFMELPretrainingArguments,
)

RUN = {"report_to": "none", "use_cpu": True}


def test_defaults_are_the_paper_s(tmp_path):
    pre = PFMELPretrainingArguments(output_dir=str(tmp_path / "pre"), **RUN)
    fine = PFMELFinetuningArguments(output_dir=str(tmp_path / "fine"), **RUN)
    for args in (pre, fine):  # AdamW, lr 5e-6 with linear decay, length-grouped batches, task_ids kept
        assert args.learning_rate == 5e-6 and args.optim == "adamw_torch"
        assert str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)) == "linear"
        assert args.remove_unused_columns is False and args.head_learning_rate is None
    assert (pre.num_train_epochs, pre.per_device_train_batch_size) == (5.0, 4)
    assert (fine.num_train_epochs, fine.per_device_train_batch_size) == (4.0, 16)
    assert pre.tasks == ["mixed", "text", "multi"] and pre.swap_roles and pre.negative_draw == "distinct"
    assert (fine.train_split, fine.eval_splits, fine.num_negatives, fine.loss) == ("train", ["dev", "test"], 32, "binary")
    assert PFMELModelArguments().max_length == 300
    data = PFMELDataArguments()
    assert (data.dataset, data.image_features, data.feature_norm, data.max_candidates) == (
        "twitter_mel", "resnet50", "center_l2", 32)
    assert "twitter_mel" in DATASETS and SPLITS == ("train", "train07", "train05", "dev", "test")


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset": "nope"}, "unknown --dataset 'nope'"),
    ({"image_features": "clip"}, "unknown --image_features 'clip'"),
    ({"feature_norm": "zscore"}, "unknown --feature_norm 'zscore'"),
    ({"image_features": "precomputed"}, "needs --features_path"),
    ({"data_dir": "/no/such/folder"}, "is not a directory"),
    ({"max_candidates": 0}, "--max_candidates must be >= 1"),
    ({"max_eval_samples": 0}, "--max_eval_samples must be >= 1"),
])
def test_data_arguments_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PFMELDataArguments(**kwargs)


def test_model_arguments_refuse_bad_values(tmp_path):
    with pytest.raises(ValueError, match="--max_length must be >= 8"):
        PFMELModelArguments(max_length=4)
    with pytest.raises(ValueError, match="not a saved model directory"):
        PFMELModelArguments(init_from=str(tmp_path))


@pytest.mark.parametrize("cls, kwargs, message", [
    (PFMELPretrainingArguments, {"negative_draw": "any"}, "unknown --negative_draw 'any'"),
    (PFMELPretrainingArguments, {"tasks": ["vision"]}, "unknown pre-training task 'vision'"),
    (PFMELPretrainingArguments, {"pretrain_split": "val"}, "unknown --pretrain_split 'val'"),
    (PFMELFinetuningArguments, {"eval_splits": ["dev", "val"]}, "unknown split 'val'"),
    (PFMELFinetuningArguments, {"loss": "pairwise"}, "unknown --loss 'pairwise'"),
    (PFMELFinetuningArguments, {"list_size": 1}, "--list_size must be >= 2"),
    (PFMELFinetuningArguments, {"retriever_k": 0}, "--retriever_k must be >= 1"),
    (PFMELFinetuningArguments, {"num_negatives": -1}, "--num_negatives must be >= 0"),
    (PFMELFinetuningArguments, {"pairs_per_forward": -1}, "--pairs_per_forward must be >= 0"),
    (PFMELFinetuningArguments, {"calibration_mentions": -1}, "--calibration_mentions must be >= 0"),
    (PFMELFinetuningArguments, {"retriever": "/no/such/index"}, "not an entity index directory"),
])
def test_training_arguments_refuse_bad_values(cls, kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        cls(output_dir=str(tmp_path), **RUN, **kwargs)


def test_the_scripts_parsers_read_the_command_line(tmp_path, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    parser = HfArgumentParser((PFMELDataArguments, PFMELModelArguments, PFMELPretrainingArguments))
    data, model, pre = parser.parse_args_into_dataclasses(args=[
        "--dataset", "wikimel", "--data_dir", str(data_dir), "--image_features", "none", "--max_length", "64",
        "--output_dir", str(tmp_path / "out"), "--tasks", "mix", "text", "--no_swap_roles", "--pair_seed", "3",
        "--head_learning_rate", "1e-3", "--use_cpu", "True", "--report_to", "none",
    ])
    assert (data.dataset, data.data_dir, data.image_features, model.max_length) == ("wikimel", str(data_dir), "none", 64)
    assert pre.tasks == ["mixed", "text"] and pre.swap_roles is False and pre.pair_seed == 3  # aliases normalised
    assert pre.head_learning_rate == 1e-3 and pre.learning_rate == 5e-6
    parser = HfArgumentParser((PFMELDataArguments, PFMELModelArguments, PFMELFinetuningArguments))
    _, _, fine = parser.parse_args_into_dataclasses(args=[
        "--output_dir", str(tmp_path / "fine"), "--train_split", "train07", "--eval_splits", "test", "--loss", "listwise",
        "--list_size", "4", "--use_cpu", "True", "--report_to", "none",
    ])
    assert (fine.train_split, fine.eval_splits, fine.loss, fine.list_size) == ("train07", ["test"], "listwise", 4)
    with pytest.raises(SystemExit):  # the parser offers the choices
        HfArgumentParser(PFMELPretrainingArguments).parse_args_into_dataclasses(
            args=["--output_dir", str(tmp_path / "x"), "--negative_draw", "nope", "--report_to", "none"])
    assert "invalid choice: 'nope' (choose from 'distinct', 'paper')" in capsys.readouterr().err
