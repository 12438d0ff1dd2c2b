"""Extract once (issue 28 point 3): ``mel features`` writes a resumable safetensors feature cache that ZEMEL training
reads with ``--features``; the cache records its encoder and refuses another one; the skip report counts missing and
corrupt images."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from conftest import train_script

from modeling_mel import cli
from modeling_mel.feature_cache import CachedImageFeatures, FeatureCache, extract_features, open_features
from modeling_mel.image_encoders import ImageEncoderError
from modeling_mel.image_features import ImageFeatureExtractor

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURE_ARGS = ["--image_model", "tiny", "--image_size", "32", "--no_progress", "--chunk_size", "32"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, zemeld_raw):
    out = str(tmp_path_factory.mktemp("features") / "cache")
    assert cli.main(["features", "--dataset", "zemeld", "--data_dir", zemeld_raw, "--out", out, *FEATURE_ARGS]) == 0
    return out


def test_killed_run_resumes_without_re_encoding(zemeld_raw, cache_dir, tmp_path):
    out = str(tmp_path / "cache")
    killed = ImageFeatureExtractor("tiny", image_size=32)
    calls = {"images": 0}
    forward = killed._forward

    def dying_forward(images, patches=False):  # "killed" after about two chunks of images
        calls["images"] += len(images)
        if calls["images"] > 150:
            raise KeyboardInterrupt("killed")
        return forward(images, patches)

    killed._forward = dying_forward
    with pytest.raises(KeyboardInterrupt):
        extract_features("zemeld", zemeld_raw, out, "tiny", image_size=32, chunk_size=32, progress=False,
                         extractor=killed)
    done = set(FeatureCache(out)._where)
    assert 0 < len(done) < len(FeatureCache(cache_dir))
    assert not json.load(open(os.path.join(out, "index.json")))["complete"]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]

    again = ImageFeatureExtractor("tiny", image_size=32)
    stored = []
    store = again._store
    again._store = lambda key, feat: (stored.append(key), store(key, feat))
    summary = extract_features("zemeld", zemeld_raw, out, "tiny", image_size=32, chunk_size=32, progress=False,
                               extractor=again)
    assert not done & set(stored)  # the done images were not encoded again
    assert summary["encoded"] == len(stored) == len(FeatureCache(cache_dir)) - len(done)
    assert set(FeatureCache(out)._where) == set(FeatureCache(cache_dir)._where)
    assert json.load(open(os.path.join(out, "index.json")))["complete"]


def test_training_from_cache_gives_the_same_first_loss(zemeld_raw, cache_dir, tmp_path):
    from transformers import BertConfig, BertModel

    from modeling_mel.backbones import load_tokenizer

    backbone = str(tmp_path / "bert")
    tokenizer = load_tokenizer("minilm")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    script = train_script("train_zemel")
    common = ["--dataset", "zemeld", "--data_dir", zemeld_raw, "--backbone", backbone, "--max_steps", "2",
              "--logging_steps", "1", "--eval_splits", "", "--seed", "0", "--v_hidden_size", "32",
              "--v_intermediate_size", "32", "--v_num_attention_heads", "4", "--v_num_hidden_layers", "1",
              "--bi_hidden_size", "32", "--bi_num_attention_heads", "4", "--poly_m", "4", "--max_regions", "3",
              "--max_entity_images", "1", "--context_max_length", "24", "--candidate_max_length", "24",
              "--num_candidates", "3", "--per_device_train_batch_size", "8", "--max_train_samples", "16",
              "--save_strategy", "no", "--use_cpu", "--disable_tqdm", "true",
              "--dataset_cache_dir", str(tmp_path / "ds")]
    direct = script.main([*common, "--output_dir", str(tmp_path / "direct"), "--image_model", "tiny",
                          "--image_size", "32"])
    cached = script.main([*common, "--output_dir", str(tmp_path / "cached"), "--features", cache_dir])
    assert cached["train"]["losses"][0] == pytest.approx(direct["train"]["losses"][0], rel=1e-5)
    recorded = json.load(open(tmp_path / "cached" / "processor_config.json"))["image_encoder"]
    assert recorded == FeatureCache(cache_dir).identity  # the model records the cache's encoder
    # mel index reads the KB images' features from the cache: the same index as encoding them with the encoder
    kb = os.path.join(zemeld_raw, "kb.jsonl")
    model = str(tmp_path / "cached")
    assert cli.main(["index", "--model", model, "--kb", kb, "--out", str(tmp_path / "i_enc"), "--fp32"]) == 0
    def no_encoding(self, images, patches=False):
        raise AssertionError("mel index --features must not run the image encoder")

    forward = ImageFeatureExtractor._forward
    ImageFeatureExtractor._forward = no_encoding
    try:
        assert cli.main(["index", "--model", model, "--kb", kb, "--out", str(tmp_path / "i_cache"), "--fp32",
                         "--features", cache_dir]) == 0
        with pytest.raises(AssertionError, match="must not run the image encoder"):  # the control: without the cache
            cli.main(["index", "--model", model, "--kb", kb, "--out", str(tmp_path / "i_none"), "--fp32"])
    finally:
        ImageFeatureExtractor._forward = forward
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "vectors.safetensors")) for d in ("i_enc", "i_cache"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_cache_refused_for_another_encoder(zemeld_raw, cache_dir, capsys):
    # resuming with another encoder
    code = cli.main(["features", "--dataset", "zemeld", "--data_dir", zemeld_raw, "--out", cache_dir,
                     "--image_model", "random:tiny-resnet-32", "--image_size", "32", "--no_progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "random:tiny-resnet'" in err and "random:tiny-resnet-32'" in err and "feature cache" in err
    # reading it for a model trained with another encoder
    other = ImageFeatureExtractor("tiny", image_size=48).identity
    with pytest.raises(ImageEncoderError, match="image encoder mismatch.*image_size") as info:
        open_features(cache_dir, recorded=other)
    assert "\n" not in str(info.value)
    # training with --features and another --image_model
    with pytest.raises(ImageEncoderError, match="random:tiny-clip"):
        CachedImageFeatures(cache_dir, image_model="random:tiny-clip")


def test_miss_names_the_image(cache_dir, tmp_path):
    from PIL import Image

    path = str(tmp_path / "new.png")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(path)
    with pytest.raises(ImageEncoderError, match="new.png.*not in the feature cache.*mel features"):
        CachedImageFeatures(cache_dir).encode([path])


def test_skip_report_counts_missing_and_corrupt(zemeld_raw, tmp_path):
    raw = str(tmp_path / "raw")
    shutil.copytree(zemeld_raw, raw)
    os.remove(os.path.join(raw, "images", "kb", "Q1000_0.png"))
    with open(os.path.join(raw, "images", "kb", "Q1001_0.png"), "wb") as f:
        f.write(b"not a png")
    out = str(tmp_path / "cache")
    assert cli.main(["features", "--dataset", "zemeld", "--data_dir", raw, "--out", out, *FEATURE_ARGS]) == 0
    report = json.load(open(os.path.join(out, "skip_report.json")))
    assert report["counts"] == {"missing": 1, "corrupt": 1}
    assert json.load(open(os.path.join(out, "index.json")))["summary"]["skipped"]["total"] == 2
