"""BertForMultimodalNSP, its config and processor, on tiny configs (ModelTester style)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, BertConfig, BertForNextSentencePrediction

from modeling_mel import (
    BertForMultimodalNSP,
    MultimodalNSPConfig,
    MultimodalNSPProcessor,
    entity_context,
    entity_prompt,
    mention_prompt,
)


class MultimodalNSPModelTester:
    """Tiny config and inputs: hidden 32, 2 layers, 4 heads, vocab 99, batch 13, length 7."""

    batch_size = 13
    seq_length = 7
    vocab_size = 99
    image_id = 98
    feature_dim = 16

    def config(self, **kw) -> MultimodalNSPConfig:
        args = dict(
            vocab_size=self.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
            image_feature_dim=self.feature_dim,
            image_placeholder_id=self.image_id,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        args.update(kw)
        return MultimodalNSPConfig(**args)

    def inputs(self, with_images: bool = True, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, self.vocab_size - 2, (self.batch_size, self.seq_length), generator=g)
        ids[:, 0] = 1
        ids[:, 3] = 2
        ids[:, -1] = 2
        types = torch.zeros_like(ids)
        types[:, 4:] = 1
        out = {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids)}
        if with_images:
            ids[:, 2] = self.image_id  # one image in sentence A
            ids[:, 5] = self.image_id  # one image in sentence B
            out["image_features"] = torch.randn(self.batch_size, 2, self.feature_dim, generator=g)
        return out


tester = MultimodalNSPModelTester()


def test_forward_shapes_and_loss():
    torch.manual_seed(0)
    model = BertForMultimodalNSP(tester.config()).eval()
    inputs = tester.inputs()
    labels = torch.randint(0, 2, (tester.batch_size,))
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (tester.batch_size, 2)
    expected = torch.nn.functional.cross_entropy(out.logits, labels)
    torch.testing.assert_close(out.loss, expected)
    assert list(out.keys())[0] == "loss"
    tup = model(**inputs, labels=labels, return_dict=False)
    torch.testing.assert_close(tup[0], out.loss)


def test_image_token_changes_logits_and_gradient_reaches_projection():
    torch.manual_seed(0)
    model = BertForMultimodalNSP(tester.config(initializer_range=0.2)).eval()
    inputs = tester.inputs()
    base = model(**inputs).logits
    other = dict(inputs, image_features=torch.randn_like(inputs["image_features"]))
    assert (base - model(**other).logits).abs().max() > 1e-3
    model.train()
    loss = model(**inputs, labels=torch.zeros(tester.batch_size, dtype=torch.long)).loss
    loss.backward()
    grad = model.image_projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_image_embedding_sits_in_its_sentence():
    """The projected feature replaces the word embedding; position and segment embeddings are added."""
    torch.manual_seed(0)
    model = BertForMultimodalNSP(tester.config()).eval()
    inputs = tester.inputs()
    embeds = model.embed(inputs["input_ids"], inputs["image_features"])
    expected = model.image_projection(inputs["image_features"][:, 1])  # second image token = B's image
    torch.testing.assert_close(embeds[:, 5], expected)
    text_pos = inputs["input_ids"][:, 4]
    torch.testing.assert_close(embeds[:, 4], model.bert.embeddings.word_embeddings(text_pos))


def test_text_only_equals_bert_nsp():
    torch.manual_seed(0)
    config = tester.config()
    model = BertForMultimodalNSP(config).eval()
    reference = BertForNextSentencePrediction(BertConfig(**config.to_dict())).eval()
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert set(unexpected) == {"image_projection.weight", "image_projection.bias"}
    assert not missing
    inputs = tester.inputs(with_images=False)
    torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=0)


def test_variable_image_counts_per_example():
    torch.manual_seed(0)
    model = BertForMultimodalNSP(tester.config()).eval()
    inputs = tester.inputs(with_images=False)
    inputs["input_ids"][0, 2] = tester.image_id  # example 0: one image; the rest: none
    inputs["image_features"] = torch.randn(tester.batch_size, 1, tester.feature_dim)
    out = model(**inputs).logits
    plain = model(**{k: v[1:] for k, v in inputs.items() if k != "image_features"}).logits
    torch.testing.assert_close(out[1:], plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "case, message",
    [
        ("wrong_feature_size", "does not match config.image_feature_dim"),
        ("tokens_without_features", "no image_features were given"),
        ("features_without_tokens", "hold no image token"),
        ("more_tokens_than_features", "image tokens but image_features hold only"),
    ],
)
def test_bad_image_inputs_raise(case, message):
    model = BertForMultimodalNSP(tester.config()).eval()
    inputs = tester.inputs()
    if case == "wrong_feature_size":
        inputs["image_features"] = torch.randn(tester.batch_size, 2, tester.feature_dim + 1)
    elif case == "tokens_without_features":
        inputs.pop("image_features")
    elif case == "features_without_tokens":
        inputs = tester.inputs(with_images=False)
        inputs["image_features"] = torch.randn(tester.batch_size, 1, tester.feature_dim)
    else:
        inputs["image_features"] = inputs["image_features"][:, :1]
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_save_load_auto_classes(tmp_path):
    torch.manual_seed(0)
    model = BertForMultimodalNSP(tester.config()).eval()
    inputs = tester.inputs()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "modeling_multimodal_nsp.py", "configuration_multimodal_nsp.py"} <= files
    assert not any(f.endswith(".bin") for f in files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].endswith("modeling_multimodal_nsp.BertForMultimodalNSP")
    # Installed package: Auto classes work without remote code.
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MultimodalNSPConfig)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_remote_code_loading_in_fresh_process(tmp_path):
    """`AutoModel.from_pretrained(dir, trust_remote_code=True)` with modeling_mel never imported."""
    torch.manual_seed(0)
    model = BertForMultimodalNSP(tester.config()).eval()
    inputs = tester.inputs()
    model.save_pretrained(tmp_path / "model")
    torch.save(inputs, tmp_path / "inputs.pt")
    expected = model(**inputs).logits
    script = f"""
import sys, torch
from transformers import AutoModel
m = AutoModel.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True).eval()
assert "modeling_mel" not in sys.modules, "the package was imported"
assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
torch.save(m(**torch.load({str(tmp_path / 'inputs.pt')!r})).logits, {str(tmp_path / 'out.pt')!r})
"""
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected)


def test_from_pretrained_minilm_loads_encoder_weights(minilm_path):
    from safetensors.torch import load_file

    model = BertForMultimodalNSP.from_pretrained(minilm_path)
    state = load_file(os.path.join(minilm_path, "model.safetensors"))
    key = next(k for k in state if k.endswith("encoder.layer.3.attention.self.query.weight"))
    torch.testing.assert_close(model.bert.encoder.layer[3].attention.self.query.weight, state[key])
    emb = next(k for k in state if k.endswith("embeddings.word_embeddings.weight"))
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, state[emb])
    assert model.image_projection.in_features == 2048


# -- templates -----------------------------------------------------------------------------------


def test_entity_context_full():
    profile = {"screen_name": "AndrewYNg", "location": "Palo Alto, CA, USA", "name": "Andrew Ng", "description": "Co-Founder of Coursera"}
    timeline = [{"tweet_id": "10", "text": "old"}, {"tweet_id": "30", "text": "newest"}, {"tweet_id": "20", "text": "middle"}, {"tweet_id": "5", "text": "oldest"}]
    assert entity_context(profile, timeline) == (
        "the username of @AndrewYNg who lives in Palo Alto, CA, USA is Andrew Ng and the description is "
        "Co-Founder of Coursera. some recent tweets of the user include: newest, middle and old."
    )


def test_entity_context_na_and_cuts():
    words = [f"w{i}" for i in range(50)]
    profile = {"userScreenName": "@jdoe", "userName": "", "userDescription": " ".join(words)}
    timeline = ["first " + " ".join(words), "second"]
    expected_desc = " ".join(words[:30])
    expected_t1 = " ".join((["first"] + words)[:35])
    assert entity_context(profile, timeline) == (
        f"the username of @jdoe who lives in NA is NA and the description is {expected_desc}. "
        f"some recent tweets of the user include: {expected_t1} and second."
    )
    assert entity_context({}, []) == (
        "the username of @NA who lives in NA is NA and the description is NA. "
        "some recent tweets of the user include: NA."
    )
    assert entity_context({"screen_name": "a"}, ["only"]).endswith("include: only.")


def test_prompts():
    assert mention_prompt("hand hearts taylor's version", "taylor") == "hand hearts taylor's version. taylor is"
    assert mention_prompt("hello world", "taylor") == "hello world. taylor is"  # the prompt needs no span
    assert entity_prompt("taylorswift13", "the username of ...") == "@taylorswift13. the username of ..."
    assert entity_prompt("@taylorswift13", "ctx") == "@taylorswift13. ctx"


@pytest.mark.parametrize(
    "text, mention, message",
    [("", "taylor", "tweet text is empty"), ("hello", " ", "mention is empty")],
)
def test_prompt_bad_input(text, mention, message):
    with pytest.raises(ValueError, match=message):
        mention_prompt(text, mention)


# -- processor -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    from modeling_mel.backbones import load_tokenizer

    return MultimodalNSPProcessor(load_tokenizer("minilm"), max_length=24, image_feature_dim=8)


def test_processor_layout(processor):
    tok = processor.tokenizer
    batch = processor(["a tweet about taylor"], ["@taylor. the singer"], images=[np.ones(8)], images_pair=[np.ones((2, 8))])
    ids = batch["input_ids"][0].tolist()
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]"
    assert tokens.count("[SEP]") == 2 and tokens.count("[IMG]") == 3
    first_sep = tokens.index("[SEP]")
    assert tokens[first_sep - 1] == "[IMG]" and tokens[-2] == "[IMG]"
    types = batch["token_type_ids"][0].tolist()
    assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1 :]) == {1}
    assert batch["image_features"].shape == (1, 3, 8)
    assert processor.image_placeholder_id == tok.convert_tokens_to_ids("[IMG]")


def test_truncation_keeps_image_tokens_and_seps(processor):
    long_a = " ".join(["alpha"] * 100)
    long_b = " ".join(["beta"] * 100)
    batch = processor([long_a, "short"], [long_b, long_b], images=[np.ones((2, 8)), None], images_pair=[np.ones(8), np.ones(8)])
    tok = processor.tokenizer
    for row, n_img in ((0, 3), (1, 1)):
        ids = [i for i in batch["input_ids"][row].tolist() if i != tok.pad_token_id]
        tokens = tok.convert_ids_to_tokens(ids)
        assert len(ids) == 24
        assert tokens.count("[IMG]") == n_img and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    row1 = tok.convert_ids_to_tokens(batch["input_ids"][1].tolist())
    assert row1[1] == "short"  # the longer side is cut first


def test_processor_dynamic_padding_and_collation(processor):
    feats = processor(["a", "a b c d e f"], ["x", "y"], padding=False, return_tensors=None)
    assert len(feats[0]["input_ids"]) < len(feats[1]["input_ids"])
    for f, label in zip(feats, (0, 1)):
        f["labels"] = label
    batch = processor.pad(feats)
    assert batch["input_ids"].shape[1] == len(feats[1]["input_ids"])
    assert batch["labels"].tolist() == [0, 1]
    assert batch["attention_mask"][0].sum() == len(feats[0]["input_ids"])


def test_processor_bad_input(processor):
    with pytest.raises(ValueError, match=r"image feature of shape \(1, 9\); expected \(8,\)"):
        processor(["a"], ["b"], images=[np.ones(9)])
    with pytest.raises(ValueError, match="neither text nor image"):
        processor([""], ["b"])


def test_processor_save_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = MultimodalNSPProcessor.from_pretrained(tmp_path)
    assert loaded.max_length == 24 and loaded.image_feature_dim == 8
    a = processor(["hello there"], ["@x. y"], images=[np.ones(8)])
    b = loaded(["hello there"], ["@x. y"], images=[np.ones(8)])
    assert torch.equal(a["input_ids"], b["input_ids"])


def test_processor_configures_model(processor):
    model = BertForMultimodalNSP(tester.config(vocab_size=processor.tokenizer.vocab_size, image_feature_dim=8)).eval()
    processor.configure_model(model)
    batch = processor(["a tweet"], ["@x. ctx"], images=[np.ones(8)])
    assert model(**batch).logits.shape == (1, 2)


def test_unknown_backbone():
    from modeling_mel.backbones import resolve_backbone

    with pytest.raises(ValueError, match="unknown backbone 'bertt'"):
        resolve_backbone("bertt")
    with pytest.raises(ValueError, match="not an existing directory"):
        resolve_backbone("./no/such/dir")
    assert resolve_backbone("bert-base-uncased") == "google-bert/bert-base-uncased"


def test_pfmel_long_text_keeps_the_mention_in_view():
    """PFMEL's mention side "<text>. <mention> is" in a very long text: the cut keeps the prompt's tail, so two
    mentions of the same text give different inputs (cut from the right, both were the text's head only)."""
    from modeling_mel.backbones import load_tokenizer
    from modeling_mel.processing_multimodal_nsp import MultimodalNSPProcessor, mention_prompt

    processor = MultimodalNSPProcessor(load_tokenizer("minilm"), max_length=64)
    text = "the match went on for hours " * 4000 + "and Wiggins scored while Taylor sang"
    ids = {}
    for mention in ("Wiggins", "Taylor"):
        enc = processor([mention_prompt(text, mention)], ["an entity description"], max_length=64)
        ids[mention] = enc["input_ids"][0].tolist()
        first = processor.tokenizer.decode(ids[mention][: ids[mention].index(processor.tokenizer.sep_token_id)])
        assert len(ids[mention]) <= 64 and first.endswith(f". {mention.lower()} is"), first
    assert ids["Wiggins"] != ids["Taylor"]
