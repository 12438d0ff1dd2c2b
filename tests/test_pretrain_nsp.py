"""``mel pretrain`` (modeling_mel.scripts.pretrain_nsp): its options, and bad arguments or a used output folder refused
before the corpus or a model is loaded (a ValueError naming the value; ``python -m`` prints it as one line, exit 2).
Pre-training end to end: tests/test_pfmel_training.py."""

from __future__ import annotations

import pytest

from modeling_mel.scripts import pretrain_nsp, run_as_script


@pytest.fixture()
def argv(tmp_path) -> list[str]:
    """Arguments of a run over an empty data folder: any refusal below comes before the corpus is read."""
    (tmp_path / "data").mkdir()
    return ["--dataset", "twitter_mel", "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]


def test_help_lists_the_pretraining_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain_nsp.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--tasks", "--swap_roles", "--pretrain_split", "--negative_draw", "--backbone", "--image_features"):
        assert option in out, option


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tasks", "mixed", "jigsaw"], "unknown pre-training task 'jigsaw'"),
        (["--pretrain_split", "validation"], "unknown --pretrain_split 'validation'"),
        (["--image_features", "clip"], "unknown --image_features 'clip'"),
        (["--max_length", "4"], "--max_length must be >= 8, got 4"),
    ],
)
def test_pretrain_bad_arguments(argv, extra, message):
    with pytest.raises(ValueError, match=message):
        pretrain_nsp.main(argv + extra)


def test_a_used_output_dir_is_refused_in_one_line(argv, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    assert run_as_script(pretrain_nsp.main, "pretrain_nsp", argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pretrain_nsp: --output_dir {str(tmp_path / 'out')!r} already holds another run")
    assert "\n" not in err
