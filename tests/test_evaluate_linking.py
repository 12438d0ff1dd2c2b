"""``mel evaluate`` (modeling_mel.scripts.evaluate_linking): its options, and bad arguments refused before the corpus
or the model is loaded. Evaluation of a fine-tuned model: tests/test_pfmel_training.py, test_eval_equals_product.py."""

from __future__ import annotations

import pytest

from modeling_mel.scripts import evaluate_linking, run_as_script


@pytest.fixture()
def argv(tmp_path) -> list[str]:
    """A "model" folder (a config.json only: nothing is loaded before the checks) and an empty data folder."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "data").mkdir()
    return ["--model", str(tmp_path / "model"), "--dataset", "twitter_mel", "--data_dir", str(tmp_path / "data")]


def test_help_lists_the_evaluation_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_linking.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--split", "--predictions_file", "--retriever", "--retriever_k", "--nil_threshold"):
        assert option in out, option


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--split", "dev", "holdout"], r"unknown --split 'holdout'; choose from \['train', 'train07'"),
        (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
        (["--retriever", "nowhere"], "--retriever 'nowhere' is not an entity index directory"),
        (["--retriever_k", "0"], "--retriever_k must be >= 1, got 0"),
    ],
)
def test_evaluate_bad_arguments(argv, extra, message):
    with pytest.raises(ValueError, match=message):
        evaluate_linking.main(argv + extra)


def test_model_must_be_a_saved_model_in_one_line(argv, tmp_path, capsys):
    argv[1] = str(tmp_path / "data")  # a folder without config.json
    assert run_as_script(evaluate_linking.main, "evaluate_linking", argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"evaluate_linking: --model {argv[1]!r} is not a saved model directory (no config.json)"
