"""``mel ablations`` (modeling_mel.scripts.ablations): the variants of the paper's Tables 4-6 and how they are built,
the tables it writes, bad arguments refused before the corpus is loaded, and (slow) a quick run of three variants
over two seeds."""

from __future__ import annotations

import os

import pytest

from modeling_mel.scripts import ablations
from pfmel_fixtures import base_argv, tiny_backbone, tiny_resnet_dir  # noqa: F401 - fixtures


@pytest.fixture()
def argv(tmp_path) -> list[str]:
    """Arguments of a run over an empty data folder: any refusal below comes before the corpus is read."""
    (tmp_path / "data").mkdir()
    return ["--dataset", "twitter_mel", "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]


def test_help_lists_the_ablation_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ablations.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--variants", "--seeds", "--quick", "--eval_split", "--keep_models"):
        assert option in out, option


def test_variants_and_tables_follow_the_paper():
    assert ablations.VARIANTS["NSP-BERT"] == (False, None, False, "train")  # text only, no pre-training
    assert ablations.VARIANTS["PFMEL"] == (True, ("mixed", "text", "multi"), True, "train")
    assert ablations.VARIANTS["PFMEL05"][1:3] == ablations.VARIANTS["PFMEL"][1:3]  # same pre-training, train05
    assert ablations.VARIANTS["PFMEL05"][3] == "train05"
    named = {v for names in ablations.TABLES.values() for v in names}
    assert named == set(ablations.VARIANTS)  # every variant is in a table, every table row is a variant


def test_markdown_tables_show_mean_and_std_in_percent():
    summary = {"PFMEL": {"mean": 0.8731, "std": 0.0125}, "FMEL": {"mean": 0.5, "std": 0.0}}
    text = ablations._markdown(summary, "test", [0, 21])
    assert text.splitlines()[0] == "Accuracy (%) on test, mean ± std over seeds [0, 21]."
    assert "| PFMEL | 87.310 ± 1.250 |" in text and "| FMEL | 50.000 ± 0.000 |" in text
    assert "### Table 4 (approaches)" in text and "### Table 6 (fine-tuning data size)" in text
    assert "NSP-BERT" not in text  # variants that did not run are left out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--variants", "PFMEL", "PFMELx"], r"unknown variant 'PFMELx'; choose from \['NSP-BERT'"),
        (["--eval_split", "train"], "--eval_split must be dev or test, got 'train'"),
    ],
)
def test_ablations_bad_arguments(argv, extra, message):
    with pytest.raises(ValueError, match=message):
        ablations.main(argv + extra)


@pytest.mark.slow
def test_ablations_quick_tiny(base_argv, tiny_backbone, tmp_path):  # noqa: F811
    out = str(tmp_path / "abl")
    results = ablations.main(base_argv + ["--backbone", tiny_backbone, "--output_dir", out, "--quick",
                                          "--variants", "NSP-BERT", "PFMELm", "PFMEL07", "--seeds", "0", "21",
                                          "--max_steps", "2"])
    table = open(os.path.join(out, "results.md")).read()
    for v in ("NSP-BERT", "PFMELm", "PFMEL07"):
        assert v in table and len(results["runs"][v]) == 2
