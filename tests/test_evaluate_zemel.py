"""``mel evaluate-zemel`` (modeling_mel.scripts.evaluate_zemel): its options, bad arguments refused before the corpus
or the model is loaded, and the predictions file it writes. Evaluation of a trained model:
tests/test_zemel_training.py."""

from __future__ import annotations

import json

import pytest

from modeling_mel.scripts import evaluate_zemel, run_as_script


@pytest.fixture()
def argv(tmp_path) -> list[str]:
    """A "model" folder (a config.json only: nothing is loaded before the checks) and an empty data folder."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "data").mkdir()
    return ["--model_path", str(tmp_path / "model"), "--dataset", "zemeld", "--data_dir", str(tmp_path / "data")]


def test_help_lists_the_evaluation_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_zemel.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model_path", "--eval_splits", "--eval_kb", "--eval_num_candidates", "--predictions_top_k",
                   "--nil_threshold"):
        assert option in out, option


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "twitter_mel"], r"unknown --dataset 'twitter_mel'; choose one of \['zemeld'"),
        (["--eval_kb", "seen"], "unknown --eval_kb 'seen'"),
        (["--image_features", "clip"], "unknown --image_features 'clip'"),
        (["--eval_num_candidates", "5,x"], "--eval_num_candidates '5,x' must be positive integers like '5,100'"),
        (["--eval_num_candidates", "0"], "must be positive integers"),
        (["--eval_splits", " , "], "--eval_splits is empty"),
        (["--predictions_top_k", "-1"], "--predictions_top_k must be >= 0, got -1"),
    ],
)
def test_evaluate_zemel_bad_arguments(argv, extra, message):
    with pytest.raises(ValueError, match=message):
        evaluate_zemel.main(argv + extra)


def test_model_path_must_be_a_saved_model_in_one_line(argv, tmp_path, capsys):
    argv[1] = str(tmp_path / "data")  # a folder without config.json
    assert run_as_script(evaluate_zemel.main, "evaluate_zemel", argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"evaluate_zemel: --model_path {argv[1]!r} is not a saved model directory (no config.json)"


def test_predictions_file_has_one_ranked_line_per_mention(tmp_path):
    rows = [{"id": "m1", "mention": "Noel", "entity_id": "Q6"}, {"id": "m2", "mention": "Powers", "entity_id": "Q99"}]
    path = tmp_path / "predictions_dev.jsonl"
    evaluate_zemel.write_predictions(str(path), rows, [[("Q6", 0.9), ("Q1", 0.2)], []])
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"id": "m1", "mention": "Noel", "gold": "Q6",
         "predictions": [{"entity_id": "Q6", "score": 0.9}, {"entity_id": "Q1", "score": 0.2}]},
        {"id": "m2", "mention": "Powers", "gold": "Q99", "predictions": []},
    ]
