"""Any transformers vision encoder as the image encoder, and the encoder as part of the model (issue 28 points 1-2).

Tiny random CLIP-vision (with a saved ``CLIPImageProcessor``) and ViT (without one: the resize / crop fallback) folders
stand in for real checkpoints: PFMEL fine-tuning and ZEMEL training with each record the encoder's identity in the
processor config; ``mel index`` / ``mel link`` / ``pipeline()`` then build that encoder with no image flag and refuse
another one (exit code 2, naming both); ``random:<arch>`` is explicit and said in the card; an unloadable checkpoint
(offline ``microsoft/resnet-50``) is an error naming ``random:resnet-50``, never a silent random encoder.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from inference_fixtures import mentions as fixture_mentions
from inference_fixtures import register_all, write_kb
from modeling_mel.cli import main as mel
from modeling_mel.image_encoders import (
    ImageEncoderError,
    check_image_encoder,
    describe_image_encoder,
    image_encoder_mismatch,
    random_encoder_config,
    read_recorded_image_encoder,
    tiny_resnet_config,
)
from modeling_mel.image_features import ImageFeatureExtractor

from pfmel_fixtures import tiny_backbone  # noqa: F401 - session fixture

register_all()
pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                   patch_size=8)
TRAIN = ["--use_cpu", "True", "--report_to", "none", "--disable_tqdm", "True", "--save_strategy", "no",
         "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "4"]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, str]:
    """Folders: ``clip`` (CLIPVisionModelWithProjection, 16-d projection, 32 px, with a CLIPImageProcessor), ``vit``
    (ViTModel, 32-d CLS, 32 px, no processor), ``clip48`` (another CLIP: other weights, 48 px)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("encoders")
    out = {name: str(root / name) for name in ("clip", "vit", "clip48")}
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION, projection_dim=16)).save_pretrained(out["clip"])
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out["clip"])
    ViTModel(ViTConfig(**TINY_VISION), add_pooling_layer=False).save_pretrained(out["vit"])
    torch.manual_seed(1)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**dict(TINY_VISION, image_size=48), projection_dim=16)).save_pretrained(
        out["clip48"])
    return out


@pytest.fixture(scope="module")
def kb_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("kb"))
    write_kb(root)
    with open(os.path.join(root, "mentions.jsonl"), "w", encoding="utf-8") as f:
        for m in fixture_mentions(root):
            f.write(json.dumps(m) + "\n")
    return root


@pytest.fixture(scope="module")
def twitter_sample(tmp_path_factory) -> str:
    from modeling_mel.builders import sample

    out = str(tmp_path_factory.mktemp("twitter"))
    sample.generate_twitter_sample(out, seed=0, n_entities=12, n_mentions=40, image_size=32)
    return out


@pytest.fixture(scope="module")
def zemeld(tmp_path_factory) -> str:
    from modeling_mel.builders import zemeld_sample

    out = str(tmp_path_factory.mktemp("zemeld") / "raw")
    zemeld_sample.generate(out, seed=0, n_entities=24, n_images=48, kb_images=1)
    return out


def _finetune(sample_dir: str, backbone: str, image_model: str, out: str, cache: str) -> int:
    return mel(["finetune", "--dataset", "twitter_mel", "--data_dir", sample_dir, "--image_model", image_model,
                "--image_cache_dir", cache, "--backbone", backbone, "--max_length", "64", "--max_train_samples", "8",
                "--max_eval_samples", "4", "--eval_splits", "dev", "--output_dir", out, *TRAIN])


def _train_zemel(data_dir: str, backbone: str, image_model: str, out: str, *extra: str) -> int:
    return mel(["train-zemel", "--dataset", "zemeld", "--data_dir", data_dir, "--backbone", backbone,
                "--image_model", image_model, "--output_dir", out, "--eval_splits", "", "--max_train_samples", "16",
                "--v_hidden_size", "32", "--v_intermediate_size", "32", "--v_num_attention_heads", "4",
                "--v_num_hidden_layers", "1", "--bi_hidden_size", "32", "--bi_num_attention_heads", "4",
                "--poly_m", "2", "--max_regions", "3", "--max_entity_images", "1", "--context_max_length", "24",
                "--candidate_max_length", "24", "--num_candidates", "2", "--negatives", "bm25", *extra, *TRAIN])


@pytest.fixture(scope="module")
def trained(encoders, twitter_sample, zemeld, tiny_backbone, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    """PFMEL and ZEMEL models trained a few steps with each encoder folder (ZEMEL with ViT: patch regions)."""
    root = tmp_path_factory.mktemp("trained")
    cache = str(root / "img_cache")
    out = {}
    for name in ("clip", "vit"):
        out[f"pfmel_{name}"] = str(root / f"pfmel_{name}")
        assert _finetune(twitter_sample, tiny_backbone, encoders[name], out[f"pfmel_{name}"], cache) == 0
        out[f"zemel_{name}"] = str(root / f"zemel_{name}")
        extra = ("--image_regions", "patches") if name == "vit" else ()
        assert _train_zemel(zemeld, tiny_backbone, encoders[name], out[f"zemel_{name}"], *extra) == 0
    return out


# ----------------------------------------------------------------------------------------------------------------------
def test_random_configs_and_identity_checks_without_loading():
    config, model_class = random_encoder_config("tiny-resnet-24")
    assert model_class == "ResNetModel" and config.hidden_sizes[-1] == 24
    assert tiny_resnet_config(16).hidden_sizes[-1] == 16
    with pytest.raises(ImageEncoderError, match="random:tiny-resnet-<D>"):
        random_encoder_config("nope")
    recorded = {"name": "a", "weights_sha256": "0" * 64, "feature": "pooled", "feature_dim": 64, "image_size": 32,
                "preprocessing": "resize_crop", "random": True, "seed": 3}
    assert describe_image_encoder(recorded) == "'a' (pooled 64-d, 32 px, resize_crop, random seed 3, weights sha256 000000000000)"
    assert describe_image_encoder(None) == "an unrecorded image encoder"
    other = dict(recorded, name="b", image_size=48)
    assert image_encoder_mismatch(recorded, other) == ["image_size"]
    check_image_encoder(recorded, type("E", (), {"identity": dict(recorded, name="c")})())  # same features: accepted
    with pytest.raises(ImageEncoderError, match="different image_size.*; drop --image_model"):
        check_image_encoder(recorded, type("E", (), {"identity": other})())
    with pytest.raises(ImageEncoderError, match="64-d image features .* gives 16-d"):
        check_image_encoder(recorded, type("E", (), {"feature_dim": 16})())


# ----------------------------------------------------------------------------------------------------------------------
def test_encoder_kinds_sizes_and_processor(encoders, kb_root):
    from PIL import Image

    image = Image.open(os.path.join(kb_root, "img", "red.png"))
    clip = ImageFeatureExtractor(encoders["clip"])
    assert (clip.feature, clip.feature_dim, clip.image_size, clip.preprocessing) == ("projected", 16, 32, "image_processor")
    vit = ImageFeatureExtractor(encoders["vit"])
    assert (vit.feature, vit.feature_dim, vit.image_size, vit.preprocessing) == ("cls", 32, 32, "resize_crop")
    for extractor, n_patches in ((clip, 16), (vit, 16)):
        whole, patches = extractor.encode_patches([image])
        np.testing.assert_allclose(whole[0], extractor.encode([image])[0], atol=1e-5)
        assert patches[0].shape == (n_patches, extractor.feature_dim)
    # the projected feature is CLIP's own image_embeds of the processor's pixels
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(encoders["clip"]).eval()
    pixels = CLIPImageProcessor.from_pretrained(encoders["clip"])(images=[image.convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        expected = model(**pixels).image_embeds[0].numpy()
    np.testing.assert_allclose(clip.encode([image])[0], expected, atol=1e-5)
    # a ViT-like encoder takes its own input size only
    with pytest.raises(ImageEncoderError, match="takes 32-px inputs"):
        ImageFeatureExtractor(encoders["vit"], image_size=64)
    # identities: a random encoder is recorded as such and rebuilt identically
    tiny = ImageFeatureExtractor("tiny", image_size=32)
    assert tiny.identity["name"] == "random:tiny-resnet" and tiny.identity["random"] and tiny.feature_dim == 64
    rebuilt = ImageFeatureExtractor.from_identity(tiny.identity)
    np.testing.assert_array_equal(rebuilt.encode([image]), tiny.encode([image]))
    assert ImageFeatureExtractor("random:tiny-clip").identity["feature"] == "projected"
    with pytest.raises(ImageEncoderError, match="random:resnet-50"):
        ImageFeatureExtractor("random:nope")
    with pytest.raises(ImageEncoderError, match="different weights_sha256"):
        check_image_encoder(clip.identity, ImageFeatureExtractor(encoders["clip48"]))


def test_offline_resnet50_is_an_error_naming_the_random_choice(twitter_sample, tmp_path, capsys):
    with pytest.raises(ImageEncoderError, match=r"--image_model random:resnet-50"):
        ImageFeatureExtractor("microsoft/resnet-50")
    code = mel(["finetune", "--dataset", "twitter_mel", "--data_dir", twitter_sample, "--output_dir",
                str(tmp_path / "o"), "--max_steps", "1", "--use_cpu", "True", "--report_to", "none"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mel ")]
    assert code == 2 and len(err) == 1 and "microsoft/resnet-50" in err[0] and "random:resnet-50" in err[0], err


def test_training_records_the_encoder(trained, encoders):
    for family in ("pfmel", "zemel"):
        for name, feature, dim in (("clip", "projected", 16), ("vit", "cls", 32)):
            recorded = read_recorded_image_encoder(trained[f"{family}_{name}"])
            identity = ImageFeatureExtractor(encoders[name]).identity
            assert recorded == json.loads(json.dumps(identity)), (family, name)
            assert (recorded["name"], recorded["feature"], recorded["feature_dim"], recorded["image_size"]) == (
                encoders[name], feature, dim, 32)
            config = json.load(open(os.path.join(trained[f"{family}_{name}"], "config.json")))
            assert config.get("image_feature_dim", config.get("v_feature_dim")) == dim
    assert json.load(open(os.path.join(trained["zemel_vit"], "processor_config.json")))["image_regions"] == "patches"


@pytest.mark.parametrize("name", ["clip", "vit"])
def test_index_link_pipeline_use_the_recorded_encoder(trained, encoders, kb_root, name, tmp_path, capsys):
    from PIL import Image
    from transformers import pipeline

    kb, inputs = os.path.join(kb_root, "kb.jsonl"), os.path.join(kb_root, "mentions.jsonl")
    image = Image.open(os.path.join(kb_root, "img", "blue.png"))
    reference = ImageFeatureExtractor(encoders[name])
    for family in ("pfmel", "zemel"):
        model = trained[f"{family}_{name}"]
        # pipeline(): the recorded encoder, built on first use; the same features as the encoder's folder gives
        linker = pipeline("multimodal-entity-linking", model=model, kb=kb)
        assert linker._extractor().identity == reference.identity
        np.testing.assert_array_equal(linker._extractor().encode([image]), reference.encode([image]))
        assert linker(fixture_mentions(kb_root)[0], top_k=2)
        with pytest.raises(ValueError, match="image encoder mismatch"):
            pipeline("multimodal-entity-linking", model=model, kb=kb,
                     image_extractor=ImageFeatureExtractor(encoders["clip48"]))
        # mel index (ZEMEL) and mel link: no image flag
        source = ["--kb", kb]
        if family == "zemel":
            index = str(tmp_path / f"index_{name}")
            assert mel(["index", "--model", model, "--kb", kb, "--out", index]) == 0
            built_with = json.load(open(os.path.join(index, "index_config.json")))["image_model"]
            assert built_with == reference.model_key
            source = ["--index", index]
        links = str(tmp_path / f"links_{family}_{name}.jsonl")
        assert mel(["link", "--model", model, *source, "--input", inputs, "--output", links]) == 0
        assert len(open(links).read().splitlines()) == len(fixture_mentions(kb_root))
        capsys.readouterr()
        # another encoder folder (other weights, another input size): exit 2, one line naming both
        commands = [["link", "--model", model, *source, "--input", inputs, "--output", str(tmp_path / "x.jsonl")]]
        if family == "zemel":
            commands.append(["index", "--model", model, "--kb", kb, "--out", str(tmp_path / "other_index")])
        for command in commands:
            assert mel(command + ["--image_model", encoders["clip48"]]) == 2
            err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mel ")]
            assert len(err) == 1 and "image encoder mismatch" in err[0], err
            err = err[0]
            assert encoders[name] in err and encoders["clip48"] in err and "48 px" in err
            assert "drop --image_model" in err


def test_random_encoder_is_recorded_and_in_the_card(zemeld, tiny_backbone, tmp_path):  # noqa: F811
    from modeling_mel.hub import render_model_card

    out = str(tmp_path / "zemel_random")
    assert _train_zemel(zemeld, tiny_backbone, "tiny", out, "--image_size", "32") == 0
    recorded = read_recorded_image_encoder(out)
    assert recorded["name"] == "random:tiny-resnet" and recorded["random"] is True and recorded["seed"] == 0
    assert json.load(open(os.path.join(out, "config.json")))["image_model"] == "random:tiny-resnet"
    card = open(render_model_card(out), encoding="utf-8").read()
    assert "RANDOMLY INITIALISED image encoder" in card and "random:tiny-resnet" in card


def test_evaluation_scripts_use_the_recorded_encoder(trained, encoders, twitter_sample, zemeld, tmp_path, capsys):
    runs = {
        "pfmel": ["evaluate", "--model", trained["pfmel_clip"], "--dataset", "twitter_mel", "--data_dir", twitter_sample,
                  "--split", "dev", "--max_eval_samples", "4", "--output_file", str(tmp_path / "pfmel.json")],
        "zemel": ["evaluate-zemel", "--model_path", trained["zemel_clip"], "--dataset", "zemeld", "--data_dir", zemeld,
                  "--eval_splits", "dev", "--max_eval_samples", "4", "--eval_num_candidates", "5",
                  "--output_dir", str(tmp_path / "zemel")],
    }
    for family, argv in runs.items():
        assert mel(argv) == 0, family
        capsys.readouterr()
        assert mel(argv + ["--image_model", encoders["clip48"]]) == 2, family
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mel ")]
        assert len(err) == 1 and "image encoder mismatch" in err[0] and encoders["clip"] in err[0], err
        assert encoders["clip48"] in err[0]


def test_calibrate_and_serve_refuse_another_encoder(trained, encoders, kb_root, tmp_path, capsys):
    labelled = tmp_path / "dev.jsonl"
    gold = ["taylorswift13", "justinbieber", "nasa", "newyorkcity", "swiftlang"]
    with open(labelled, "w", encoding="utf-8") as f:
        for m, entity_id in zip(fixture_mentions(kb_root), gold):
            f.write(json.dumps(dict(m, entity_id=entity_id)) + "\n")
    kb = os.path.join(kb_root, "kb.jsonl")
    os.makedirs(tmp_path / "calibration")
    calibrate = ["calibrate", "--model", trained["pfmel_clip"], "--kb", kb, "--data", str(labelled), "--out",
                 str(tmp_path / "calibration")]
    assert mel(calibrate) == 0  # the recorded encoder, no image flag
    capsys.readouterr()
    for argv in (calibrate, ["serve", "--model", trained["pfmel_clip"], "--kb", kb, "--port", "0"]):
        assert mel(argv + ["--image_model", encoders["clip48"]]) == 2, argv[0]
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mel ")]
        assert len(err) == 1 and "image encoder mismatch" in err[0] and encoders["clip48"] in err[0], err
