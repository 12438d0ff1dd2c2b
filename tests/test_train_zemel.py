"""``mel train-zemel`` (modeling_mel.scripts.train_zemel): its options, and bad arguments or a used output folder
refused before the corpus or a model is loaded (a ValueError naming the value; ``python -m`` prints it as one line,
exit 2). Training end to end: tests/test_zemel_training.py."""

from __future__ import annotations

import pytest

from modeling_mel.scripts import run_as_script, train_zemel


@pytest.fixture()
def argv(tmp_path) -> list[str]:
    """Arguments of a run over an empty data folder: any refusal below comes before the corpus is read."""
    (tmp_path / "data").mkdir()
    return ["--dataset", "zemeld", "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]


def test_help_lists_the_training_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_zemel.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--num_candidates", "--scoring", "--poly_m", "--image_features", "--resume_from_checkpoint",
                   "--negatives", "--eval_kb", "--features"):
        assert option in out, option


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--scoring", "cross"], r"unknown --scoring 'cross'; choose one of \['poly', 'bi'\]"),
        (["--poly_m", "0"], "--poly_m must be >= 1, got 0"),
        (["--max_regions", "1"], r"--max_regions must be >= 2 \(whole image \+ a box\), got 1"),
        (["--config_overrides", "{x"], "--config_overrides '{x' is not valid JSON"),
        (["--negatives", "mined"], "unknown --negatives 'mined'; choose 'dense' or 'bm25'"),
        (["--eval_kb", "seen"], "unknown --eval_kb 'seen'"),
        (["--dataset", "twitter_mel"], "unknown --dataset 'twitter_mel'"),
    ],
)
def test_train_zemel_bad_arguments(argv, extra, message):
    with pytest.raises(ValueError, match=message):
        train_zemel.main(argv + extra)


def test_a_used_output_dir_is_refused_in_one_line(argv, tmp_path, capsys):
    (tmp_path / "out" / "checkpoint-5").mkdir(parents=True)
    assert run_as_script(train_zemel.main, "train_zemel", argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"train_zemel: --output_dir {str(tmp_path / 'out')!r} already holds another run "
                          "(checkpoint-5); pass --overwrite_output_dir") and "\n" not in err
