"""BertForMultimodalNSP on tiny configs (ModelTester style): loss, image tokens, text-only equality with BERT NSP, bad
image inputs, save / load through the Auto classes and remote code, BERT weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModel, BertConfig, BertForNextSentencePrediction

from modeling_mel import BertForMultimodalNSP, MultimodalNSPConfig


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
    assert {"model.safetensors", "config.json", "modeling_multimodal_nsp.py", "configuration_multimodal_nsp.py",
            "low_precision.py"} <= files
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
x = torch.load({str(tmp_path / 'inputs.pt')!r})
torch.save((m(**x).logits, m.inference_scores(**x, autocast_dtype=torch.bfloat16)), {str(tmp_path / 'out.pt')!r})
"""
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path)
    logits, fast = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(fast, model.inference_scores(**inputs, autocast_dtype=torch.bfloat16), rtol=0, atol=0)


def test_inference_scores_equal_the_forward_and_follow_weight_updates():
    # the inference path of the cross linker: fp32 equals link_scores(forward); bf16 runs a copy of BERT wholly in
    # bf16 (SDPA attention, no autocast), within bf16 rounding of the autocast forward, rebuilt after an update
    torch.manual_seed(0)
    model = BertForMultimodalNSP(tester.config()).eval()
    inputs = tester.inputs()
    before = model.bert.config._attn_implementation
    with torch.no_grad():
        plain = model.link_scores(model(**inputs).logits)
        torch.testing.assert_close(model.inference_scores(**inputs), plain, rtol=0, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model.link_scores(model(**inputs).logits)
    fast = model.inference_scores(**inputs, autocast_dtype=torch.bfloat16)
    assert fast.dtype == torch.float32 and fast.shape == plain.shape
    torch.testing.assert_close(fast, autocast, rtol=0, atol=0.05)
    copy = model.__dict__["_low_precision_copies"]["bert"][1]
    assert copy.config._attn_implementation == "sdpa" and copy.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16
    assert copy.embeddings.LayerNorm.weight.dtype == torch.bfloat16  # wholly bf16: no cast between operations
    assert model.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.float32  # the model is untouched
    assert model.bert.config._attn_implementation == before
    # on CPU with oneDNN bf16 the copy runs through the fused forward (low_precision.FusedBertEncoder)
    from modeling_mel.low_precision import _fused_linear_op

    fused = copy.__dict__["fused_cpu_forward"]
    assert (fused is None) == (_fused_linear_op() is None)
    if fused is not None:
        calls = []

        class Recording:  # the fused forward's two steps: the batch's first-token states, then their tail
            def trunk(self, **kw):
                calls.append(kw)
                return fused.trunk(**kw)

            def tail(self, states):
                calls.append(states.shape)
                return fused.tail(states)

        copy.__dict__["fused_cpu_forward"] = Recording()
        torch.testing.assert_close(model.inference_scores(**inputs, autocast_dtype=torch.bfloat16), fast, rtol=0, atol=0)
        assert len(calls) == 2 and calls[0]["inputs_embeds"].dtype == torch.bfloat16  # image pairs: embeddings
        assert calls[1] == (inputs["input_ids"].shape[0], 2 * model.config.hidden_size)

        class Broken:  # a torch whose fused op fails: BERT's own forward, from then on
            def trunk(self, **kw):
                raise RuntimeError("mkldnn::_linear_pointwise: no such overload")

        copy.__dict__["fused_cpu_forward"] = Broken()
        unfused = model.inference_scores(**inputs, autocast_dtype=torch.bfloat16)
        assert copy.__dict__["fused_cpu_forward"] is None
        torch.testing.assert_close(unfused, fast, rtol=0, atol=0.05)
    with torch.no_grad():
        model.cls.seq_relationship.bias.add_(torch.tensor([2.0, -2.0]))  # outside BERT: used as is
        model.bert.pooler.dense.weight.mul_(0.0)  # inside BERT: the copy is rebuilt
        changed = model.link_scores(model(**inputs).logits)
    torch.testing.assert_close(model.inference_scores(**inputs, autocast_dtype=torch.bfloat16), changed, rtol=0, atol=0.05)
    assert model.__dict__["_low_precision_copies"]["bert"][1] is not copy


def test_from_pretrained_minilm_loads_encoder_weights(minilm_path):
    from safetensors.torch import load_file

    model = BertForMultimodalNSP.from_pretrained(minilm_path)
    state = load_file(os.path.join(minilm_path, "model.safetensors"))
    key = next(k for k in state if k.endswith("encoder.layer.3.attention.self.query.weight"))
    torch.testing.assert_close(model.bert.encoder.layer[3].attention.self.query.weight, state[key])
    emb = next(k for k in state if k.endswith("embeddings.word_embeddings.weight"))
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, state[emb])
    assert model.image_projection.in_features == 2048
