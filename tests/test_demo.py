"""``mel demo`` (modeling_mel.demo) without running it: its options reach the run, the image encoder it picks offline,
and the table it prints. The demo itself, end to end: test_demo_beats_name_match below."""

from __future__ import annotations

import logging

import pytest

from modeling_mel import demo
from modeling_mel.cli import main


def test_options_reach_the_run(monkeypatch):
    runs = []
    monkeypatch.setattr(demo, "run_demo", lambda *args, **kwargs: runs.append((args, kwargs)))
    assert main(["demo"]) == 0
    assert main(["demo", "--output_dir", "out", "--full", "--seed", "3", "--backbone", "bert-base-uncased"]) == 0
    assert runs == [(("outputs/demo",), {"quick": True, "seed": 0, "backbone": None}),
                    (("out",), {"quick": False, "seed": 3, "backbone": "bert-base-uncased"})]
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--seed", "zero"])
    assert exit_info.value.code == 2 and runs[2:] == []


def test_offline_without_a_cached_resnet_the_random_encoder_is_asked_for_and_said(caplog):
    # the tests' hub cache is an empty temp folder (conftest.py): microsoft/resnet-50 is not in it
    with caplog.at_level(logging.WARNING, logger="modeling_mel.demo"):
        assert demo._image_model() == "random:resnet-50"
    assert any("RANDOMLY INITIALISED ResNet-50" in r.getMessage() for r in caplog.records)


def test_the_printed_table(capsys):
    results = {
        "accuracy": {"dev": {"PFMEL": 0.7261, "NSP-BERT": 0.6, "name-match": 0.7029, "candidate_recall": 1.0, "n": 175},
                     "test": {"PFMEL": 0.873, "NSP-BERT": 0.7, "name-match": 0.587, "candidate_recall": 1.0, "n": 63}},
        "nsp_head_pretrained": False,
        "image_encoder": "random:resnet-50 (random init)",
        "example": {"text": "go wiggins go", "gold": "bradwiggins",
                    "ranked": [("bradwiggins", -0.1), ("22wiggins", -2.5)]},
        "model_dir": "outputs/demo/pfmel", "wall_time_s": 12.3, "timings_s": {},
    }
    demo._print(results)
    out = capsys.readouterr().out
    assert "| dev | 0.726 | 0.600 | 0.703 | 1.000 | 175 |" in out
    assert "| test | 0.873 | 0.700 | 0.587 | 1.000 | 63 |" in out
    assert "has no pre-trained NSP head" in out and "randomly initialised, asked for explicitly" in out
    assert "  1. bradwiggins          log p(is next) = -0.100   <- gold" in out
    assert "  2. 22wiggins            log p(is next) = -2.500\n" in out
    assert "model saved to outputs/demo/pfmel" in out


def test_demo_beats_name_match(tmp_path, capsys):
    """``mel demo``'s run as ``make demo`` runs it (real MiniLM, sample corpus, seed 0, bf16 where the CPU runs it fast,
    else fp32): the fine-tuned PFMEL beats the name-match baseline on test (the split the paper reports: 0.873 vs
    0.587 when measured, in fp32 and in bf16 alike), prints the three accuracies per split, saves a loadable model and
    links the example mention.

    Dev is printed and returned but not asserted: its margin at seed 0 is 4 of 175 mentions (0.726 vs 0.703) and at
    seed 1 PFMEL is below name-match on dev (0.730 vs 0.741); see the README's demo section.
    """
    from modeling_mel.demo import run_demo

    results = run_demo(str(tmp_path / "demo"), quick=True, seed=0)
    acc = results["accuracy"]
    assert acc["test"]["PFMEL"] > acc["test"]["name-match"], acc
    assert acc["test"]["candidate_recall"] == 1.0 and acc["test"]["n"] > 0
    printed = capsys.readouterr().out
    for split in ("dev", "test"):
        r = acc[split]
        assert f"| {split} | {r['PFMEL']:.3f} | {r['NSP-BERT']:.3f} | {r['name-match']:.3f} |" in printed
    from modeling_mel.processing_multimodal_nsp import MultimodalNSPProcessor

    assert MultimodalNSPProcessor.from_pretrained(results["model_dir"]).image_features == "resnet50"
    ranked = results["example"]["ranked"]
    assert len(ranked) > 2 and [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
