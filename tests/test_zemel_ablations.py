"""``mel zemel-ablations`` (modeling_mel.scripts.zemel_ablations): the ZEMEL paper's Table 4 / Fig. 4 runner end to end
on the ZEMEL sample with a tiny model (two values of m, one seed): results.json and results.md list every variant
with finite numbers, the runs differ in poly_m, a text-only run refuses the Fig. 4 variants with a message, and a
second call reuses the finished runs."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

from test_zemel_training import TINY_MODEL_ARGS, tiny_backbone  # noqa: F401 - the tiny sizes and backbone

VARIANTS = ["m1", "m4", "bi", "images0", "images1"]  # Table 4: two values of m and the bi-encoder; Fig. 4: 0 and 1


@pytest.fixture(scope="module")
def base_argv(tiny_backbone, zemeld_raw, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("zemel_abl_ds_cache"))
    return ["--dataset", "zemeld", "--data_dir", zemeld_raw, "--backbone", tiny_backbone, "--dataset_cache_dir", cache,
            "--max_steps", "6", "--learning_rate", "3e-3", "--eval_splits", "test", "--max_eval_samples", "24",
            *TINY_MODEL_ARGS]


@pytest.fixture(scope="module")
def ablation(base_argv, tmp_path_factory):
    from modeling_mel.scripts import zemel_ablations

    out = str(tmp_path_factory.mktemp("zemel_abl") / "out")
    result = zemel_ablations.main(base_argv + ["--output_dir", out, "--variants", *VARIANTS, "--seeds", "0"])
    return out, result


def test_results_list_every_variant_with_finite_numbers(ablation):
    out, result = ablation
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["variants"] == VARIANTS and results["seeds"] == [0]
    assert results["n_trained"] == 5 and results["n_reused"] == 0 and results["n_skipped"] == 0
    for name in VARIANTS:
        test = results["summary"][name]["test"]
        for key in ("precision/5", "r@1/5", "micro_f1/5", "precision/100", "r@1/100", "micro_f1/100", "H@1", "H@10"):
            assert math.isfinite(test[key]["mean"]) and 0.0 <= test[key]["mean"] <= 1.0, (name, key)
            assert test[key]["std"] == 0.0 and test[key]["n_seeds"] == 1
        assert [r["seed"] for r in results["runs"][name]] == [0]
    settings = results["settings"]
    assert settings["m1"]["poly_m"] == 1 and settings["m4"]["poly_m"] == 4 and settings["bi"]["scoring"] == "bi"
    assert settings["images0"]["max_entity_images"] == 0 and settings["images1"]["max_entity_images"] == 1
    table = open(os.path.join(out, "results.md")).read()
    assert "### Table 4" in table and "### Fig. 4" in table
    for row in ("| m1 | poly | 1 | 1 |", "| m4 | poly | 4 | 1 |", "| bi | bi | - | 1 |", "| images0 | poly | 4 | 0 |",
                "| images1 | poly | 4 | 1 |"):
        assert row in table, row
    # the trained models differ in poly_m / scoring / candidate images (weights removed, config kept)
    for name, scoring, m, images in (("m1", "poly", 1, 1), ("m4", "poly", 4, 1), ("bi", "bi", 4, 1),
                                     ("images0", "poly", 4, 0)):
        run = os.path.join(out, f"{name}-seed0")
        config = json.load(open(os.path.join(run, "config.json")))
        assert (config["scoring"], config["poly_m"], config["max_entity_images"]) == (scoring, m, images), name
        assert not os.path.exists(os.path.join(run, "model.safetensors"))


def test_rerun_skips_finished_runs(ablation, base_argv, monkeypatch):
    from modeling_mel import zemel_training
    from modeling_mel.scripts import zemel_ablations

    out, first = ablation

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(zemel_training, "run_zemel_training", no_training)
    again = zemel_ablations.main(base_argv + ["--output_dir", out, "--variants", *VARIANTS, "--seeds", "0"])
    assert again["n_trained"] == 0 and again["n_reused"] == 5
    assert again["summary"] == first["summary"]


def _text_only_corpus(root) -> str:
    """The mel_jsonl sample with every image reference removed: a corpus without images."""
    from modeling_mel.builders import sample

    sample.generate_jsonl_sample(str(root), seed=0, n_entities=8, n_mentions=24, image_size=16)
    for name, drop in (("mentions.jsonl", ("image",)), ("kb.jsonl", ("images", "timeline"))):
        path = os.path.join(str(root), name)
        rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({k: v for k, v in r.items() if k not in drop}) + "\n" for r in rows)
    shutil.rmtree(os.path.join(str(root), "images"))
    return str(root)


def test_text_only_run_refuses_fig4_variants(base_argv, tmp_path):
    from modeling_mel.scripts import zemel_ablations

    # a corpus without images, and --image_features none on a corpus with images
    corpus = _text_only_corpus(tmp_path / "text_corpus")
    argv = ["--dataset", "mel_jsonl", "--data_dir", corpus, "--output_dir", str(tmp_path / "o1"),
            "--dataset_cache_dir", str(tmp_path / "cache"), "--variants", "images0", "images3"]
    with pytest.raises(ValueError, match=r"Fig\. 4 variants .* need candidate images.*mel_jsonl corpus has no images"):
        zemel_ablations.main(argv)
    argv = base_argv + ["--output_dir", str(tmp_path / "o2"), "--image_features", "none"]
    with pytest.raises(ValueError, match=r"Fig\. 4 variants .* need candidate images.*--image_features none"):
        zemel_ablations.main(argv + ["--variants", "images0", "images3"])
    assert zemel_ablations.variant_settings("images0") == {"max_entity_images": 0}
    assert zemel_ablations.variant_settings("m360") == {"scoring": "poly", "poly_m": 360}
    assert zemel_ablations.variant_settings("bi") == {"scoring": "bi"}
    with pytest.raises(ValueError, match="unknown variant"):
        zemel_ablations.variant_settings("m0")


def test_text_only_mixed_run_skips_and_counts(ablation, base_argv, tmp_path, caplog):
    """Table 4 variants run, Fig. 4 variants are skipped with the reason (the m1 run is reused: copied)."""
    from modeling_mel.scripts import zemel_ablations

    out, _ = ablation
    dest = tmp_path / "text"
    dest.mkdir()
    shutil.copytree(os.path.join(out, "m1-seed0"), dest / "m1-seed0")
    with caplog.at_level("WARNING"):
        result = zemel_ablations.main(base_argv + ["--output_dir", str(dest), "--image_features", "none",
                                                   "--variants", "m1", "images0", "images9", "--seeds", "0"])
    assert result["variants"] == ["m1"] and result["n_skipped"] == 2 and result["n_reused"] == 1
    assert set(result["skipped"]) == {"images0", "images9"}
    assert "skipping 2 Fig. 4 variant(s)" in caplog.text and "--image_features none" in caplog.text
    table = open(dest / "results.md").read()
    assert "Skipped (2)" in table and "| m1 | poly | 1 | text only |" in table
