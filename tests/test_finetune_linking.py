"""``mel finetune`` (modeling_mel.scripts.finetune_linking): its options, and bad arguments refused before the corpus
or a model is loaded (a ValueError naming the value; ``python -m`` prints it as one line, exit 2). Fine-tuning end to
end, resume and the retriever's candidates: tests/test_pfmel_training.py, tests/test_rerank.py."""

from __future__ import annotations

import pytest

from modeling_mel.scripts import finetune_linking, run_as_script


@pytest.fixture()
def argv(tmp_path) -> list[str]:
    """Arguments of a run over an empty data folder: any refusal below comes before the corpus is read."""
    (tmp_path / "data").mkdir()
    return ["--dataset", "twitter_mel", "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]


def test_help_lists_the_finetuning_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune_linking.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--init_from", "--train_split", "--eval_splits", "--num_negatives", "--loss", "--retriever",
                   "--max_candidates"):
        assert option in out, option


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval_splits", "dev", "val"], r"unknown split 'val'; choose from \['train', 'train07', 'train05', 'dev'"),
        (["--loss", "hinge"], "unknown --loss 'hinge'; choose 'binary' or 'listwise'"),
        (["--num_negatives", "-1"], "--num_negatives must be >= 0, got -1"),
        (["--retriever", "nowhere"], "--retriever 'nowhere' is not an entity index directory"),
        (["--dataset", "wikidata"], "unknown --dataset 'wikidata'"),
    ],
)
def test_finetune_bad_arguments(argv, extra, message):
    with pytest.raises(ValueError, match=message):
        finetune_linking.main(argv + extra)


def test_init_from_must_be_a_saved_model_in_one_line(argv, tmp_path, capsys):
    assert run_as_script(finetune_linking.main, "finetune_linking", argv + ["--init_from", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"finetune_linking: --init_from {str(tmp_path)!r} is not a saved model directory (no config.json)"
