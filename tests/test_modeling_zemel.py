"""ZemelPolyEncoder: cache == forward, poly head vs. a hand reference, bi mode, text-only input, BERT loading,
save/load through AutoModel (with the shipped code files), bad input, and a tiny zero-shot training run on the sample
corpus. The config's own checks: tests/test_configuration_zemel.py; the encoder's layers:
tests/test_modeling_zemel_layers.py."""

from __future__ import annotations

import os

import pytest
import torch

from modeling_mel import low_precision, modeling_zemel, modeling_zemel_layers
from modeling_mel.configuration_zemel import ZemelConfig
from modeling_mel.modeling_zemel import ZemelContextOutput, ZemelPolyEncoder
from modeling_mel.registry import register_all

TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)


def tiny_config(**overrides) -> ZemelConfig:
    kw = dict(text_config=TEXT, v_feature_dim=16, v_hidden_size=24, v_num_attention_heads=4, v_intermediate_size=30,
              v_num_hidden_layers=2, bi_hidden_size=32, bi_num_attention_heads=4, poly_m=4, max_regions=3)
    kw.update(overrides)
    return ZemelConfig(**kw)


def inputs(batch=3, k=4, t=7, tc=5, regions=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        input_ids=torch.randint(1, 99, (batch, t), generator=g),
        attention_mask=torch.tensor([[1] * t, [1] * (t - 2) + [0, 0], [1] * t][:batch]),
        visual_features=torch.randn(batch, regions, 16, generator=g),
        visual_spatial=torch.rand(batch, regions, 5, generator=g),
        visual_attention_mask=torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]][:batch]),
        candidate_input_ids=torch.randint(1, 99, (batch, k, tc), generator=g),
        candidate_visual_features=torch.randn(batch, k, 2, 16, generator=g),
        candidate_visual_spatial=torch.rand(batch, k, 2, 5, generator=g),
        candidate_visual_attention_mask=torch.ones(batch, k, 2, dtype=torch.long),
    )


def context_part(x):
    return {k: v for k, v in x.items() if not k.startswith("candidate_")}


def candidate_part(x):
    return {k[len("candidate_"):]: v for k, v in x.items() if k.startswith("candidate_")}


@pytest.fixture(params=["poly", "bi"])
def model(request):
    torch.manual_seed(0)
    return ZemelPolyEncoder(tiny_config(scoring=request.param)).eval()


def test_forward_shapes_and_loss(model):
    x = inputs()
    out = model(**x, labels=torch.tensor([0, 1, 3]))
    assert out.scores.shape == (3, 4)
    assert out.candidate_embeddings.shape == (3, 4, 32)
    expected = (3, 4, 32) if model.config.scoring == "poly" else (3, 32)
    assert out.context_embeddings.shape == expected
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.scores, torch.tensor([0, 1, 3])))
    out.loss.backward()
    assert model.poly_codes.grad is not None or model.config.scoring == "bi"


def test_cache_scores_equal_forward(model):
    x = inputs()
    full = model(**x).scores
    ctx = model.encode_context(**context_part(x))
    cache = model.encode_candidates(**candidate_part(x))  # (B, K, H): per example
    torch.testing.assert_close(model.score(ctx, cache), full, atol=1e-5, rtol=0)
    # shared cache (C, H): every context against every candidate; column block of example b equals its own scores
    flat = {k: v.flatten(0, 1) for k, v in candidate_part(x).items()}
    shared = model.encode_candidates(**flat)  # (B*K, H)
    assert shared.shape == (12, 32)
    scores = model.score(ctx, shared)  # (B, B*K)
    for b in range(3):
        torch.testing.assert_close(scores[b, 4 * b : 4 * b + 4], full[b], atol=1e-5, rtol=0)
    # forward with a precomputed cache
    torch.testing.assert_close(model(**context_part(x), candidate_embeddings=cache).scores, full, atol=1e-5, rtol=0)


def test_bi_mode_is_dot_product_of_pooled():
    torch.manual_seed(0)
    m = ZemelPolyEncoder(tiny_config(scoring="bi")).eval()
    x = inputs()
    ctx = m.encode_context(**context_part(x))
    cand = m.encode_candidates(**candidate_part(x))
    expected = torch.stack([cand[b] @ ctx.pooled_output[b] for b in range(3)])
    torch.testing.assert_close(m(**x).scores, expected, atol=1e-5, rtol=0)
    assert ctx.poly_codes is None


def test_changing_codes_changes_poly_scores():
    torch.manual_seed(0)
    m = ZemelPolyEncoder(tiny_config()).eval()
    x = inputs()
    before = m(**x).scores
    with torch.no_grad():
        m.poly_codes.add_(torch.randn_like(m.poly_codes))
    assert not torch.allclose(before, m(**x).scores)


def test_poly_head_matches_hand_reference():
    """Eq. 1-5 written out with loops on tiny tensors."""
    torch.manual_seed(0)
    m = ZemelPolyEncoder(tiny_config(poly_m=3)).eval()
    h = torch.randn(2, 5, 32)  # context outputs h_1..h_N
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    cand = torch.randn(2, 4, 32)
    with torch.no_grad():
        codes = m._poly_attend(h, mask)
    p = m.poly_codes.detach()
    for b in range(2):
        n = int(mask[b].sum())
        for i in range(3):
            logits = torch.tensor([float(p[i] @ h[b, j]) for j in range(n)])  # eq. 2
            w = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
            y_i = sum(w[j] * h[b, j] for j in range(n))  # eq. 1
            torch.testing.assert_close(codes[b, i], y_i, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        scores = m.score(ZemelContextOutput(poly_codes=codes), cand)
    for b in range(2):
        for k in range(4):
            att = torch.tensor([float(cand[b, k] @ codes[b, i]) for i in range(3)])
            v = torch.softmax(att, 0)  # eq. 4
            y_ctx = sum(v[i] * codes[b, i] for i in range(3))  # eq. 3
            torch.testing.assert_close(scores[b, k], y_ctx @ cand[b, k], atol=1e-5, rtol=1e-5)  # eq. 5


def test_text_only_input_is_finite_and_consistent(model):
    x = inputs()
    no_visual = {k: v for k, v in x.items() if not k.startswith("visual_") and "candidate_visual" not in k}
    s1 = model(**no_visual).scores
    assert torch.isfinite(s1).all()
    masked = dict(x, visual_attention_mask=torch.zeros(3, 3, dtype=torch.long),
                  candidate_visual_attention_mask=torch.zeros(3, 4, 2, dtype=torch.long))
    s2 = model(**masked).scores
    assert torch.isfinite(s2).all()
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=0)
    # gradients stay finite too
    model.train()
    loss = model(**masked, labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_in_batch_negatives():
    torch.manual_seed(0)
    m = ZemelPolyEncoder(tiny_config()).eval()
    x = inputs()
    ctx = context_part(x)
    cand = {k: v[:, 0] for k, v in x.items() if k.startswith("candidate_")}  # one candidate per example: (B, ...)
    out = m(**ctx, **cand, loss_type="in_batch")
    assert out.scores.shape == (3, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.scores, torch.arange(3)))
    assert m(**ctx, **cand).loss is None  # config.loss_type "candidates" without labels: no loss
    m.config.loss_type = "in_batch"  # the config's choice when forward is not given one
    torch.testing.assert_close(m(**ctx, **cand).loss, out.loss)
    assert m(**ctx, **cand, loss_type="none").loss is None


def test_the_loss_is_named_not_inferred_from_the_tensors():
    import pytest

    torch.manual_seed(0)
    m = ZemelPolyEncoder(tiny_config()).eval()
    x = inputs()
    labels = torch.tensor([0, 1, 2])
    index = torch.arange(12).reshape(3, 4)
    with pytest.raises(ValueError, match="candidate_entity_index is used by loss_type='batch_candidates' only"):
        m(**x, labels=labels, candidate_entity_index=index)
    with pytest.raises(ValueError, match="needs labels"):
        m(**x, loss_type="batch_candidates")
    with pytest.raises(ValueError, match="unknown loss_type 'triplet'"):
        m(**x, labels=labels, loss_type="triplet")
    with pytest.raises(ValueError, match="one candidate per context"):
        m(**x, loss_type="in_batch")  # (B, K) candidates: not one per context
    own = m(**x, labels=labels).loss  # default: over each context's own candidates
    torch.testing.assert_close(own, torch.nn.functional.cross_entropy(m(**x).scores, labels))
    shared = m(**x, labels=labels, candidate_entity_index=index, loss_type="batch_candidates")
    assert shared.scores.shape == (3, 12) and not torch.allclose(shared.loss, own)
    with pytest.raises(ValueError, match="unknown loss_type"):
        type(m.config)(loss_type="triplet")


def test_co_attention_uses_visual_input():
    torch.manual_seed(0)
    x = inputs()
    y = dict(x, visual_features=x["visual_features"] + 1.0)
    closed = ZemelPolyEncoder(tiny_config()).eval()  # gates at 0: the text stream is unchanged by any image
    torch.testing.assert_close(closed(**x).scores, closed(**y).scores)
    torch.manual_seed(0)
    m = ZemelPolyEncoder(tiny_config(modality_gate_init=1.0)).eval()  # gates open (as after training)
    a, b = m(**x).scores, m(**y).scores
    assert not torch.allclose(a[0], b[0])  # example 0 has regions
    torch.testing.assert_close(a[1], b[1])  # example 1 is text-only: regions ignored


def test_bad_inputs_raise():
    m = ZemelPolyEncoder(tiny_config()).eval()
    ctx = m.encode_context(**context_part(inputs()))
    with pytest.raises(ValueError, match=r"hidden size 48.*hidden size is 32"):
        m.score(ctx, torch.randn(10, 48))
    with pytest.raises(ValueError, match="config hash"):
        m.check_candidate_cache(torch.randn(10, 32), cache_config_hash="0" * 40)


def test_save_and_auto_model_load(tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    m = ZemelPolyEncoder(tiny_config()).eval()
    x = inputs()
    ref = m(**x).scores
    m.save_pretrained(tmp_path)
    assert {"configuration_zemel.py", "modeling_zemel.py", "modeling_zemel_layers.py", "low_precision.py",
            "config.json"} <= set(os.listdir(tmp_path))
    # the layers and low-precision modules ship with the model file that imports them, as they are in the package
    for module in (modeling_zemel, modeling_zemel_layers, low_precision):
        shipped = (tmp_path / os.path.basename(module.__file__)).read_text(encoding="utf-8")
        assert shipped == open(module.__file__, encoding="utf-8").read()
    remote = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    torch.testing.assert_close(remote(**x).scores, ref)
    register_all()
    local = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(local, ZemelPolyEncoder)
    torch.testing.assert_close(local(**x).scores, ref)


REMOTE_SCRIPT = """
import sys
sys.modules["modeling_mel"] = None  # the package is not installed: the model runs on the files shipped with it
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained({folder!r}, trust_remote_code=True).eval()
x, ref = torch.load({data!r})
torch.testing.assert_close(model(**x).scores, ref)
print(type(model).__module__, type(model.context_encoder).__module__, type(model.config).__module__)
"""


def test_saved_folder_runs_on_its_own_code_files_without_the_package(tmp_path):
    import subprocess
    import sys

    torch.manual_seed(0)
    m = ZemelPolyEncoder(tiny_config(modality_gate_init=1.0)).eval()  # gates open: the visual layers count
    x = inputs()
    m.save_pretrained(tmp_path / "model")
    torch.save((x, m(**x).scores.detach()), tmp_path / "data.pt")
    script = REMOTE_SCRIPT.format(folder=str(tmp_path / "model"), data=str(tmp_path / "data.pt"))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    assert run.returncode == 0, run.stderr[-3000:]
    model_module, encoder_module, config_module = run.stdout.split()
    assert model_module.startswith("transformers_modules.") and model_module.endswith(".modeling_zemel")
    assert encoder_module.startswith("transformers_modules.") and encoder_module.endswith(".modeling_zemel_layers")
    assert config_module.startswith("transformers_modules.") and config_module.endswith(".configuration_zemel")


def test_resize_for_processor(minilm_tokenizer):
    from modeling_mel.processing_zemel import ZemelProcessor

    proc = ZemelProcessor(minilm_tokenizer, feature_dim=16)
    m = ZemelPolyEncoder(tiny_config(text_config=dict(TEXT, vocab_size=30522)))
    old = m.context_encoder.embeddings.word_embeddings.weight[:100].clone()
    m.resize_for_processor(proc)
    assert m.config.text_config.vocab_size == len(proc.tokenizer) == 30525
    for enc in (m.context_encoder, m.candidate_encoder):
        assert enc.embeddings.word_embeddings.num_embeddings == 30525
    torch.testing.assert_close(m.context_encoder.embeddings.word_embeddings.weight[:100], old)
    assert m.config.entity_token_id == proc.entity_id


def test_from_text_backbone_loads_bert_weights(minilm_path):
    from transformers import BertModel

    m, info = ZemelPolyEncoder.from_text_backbone(
        "minilm", output_loading_info=True, v_hidden_size=32, v_intermediate_size=32, v_num_attention_heads=4,
        bi_hidden_size=32, bi_num_attention_heads=4, poly_m=4,
    )
    bert = BertModel.from_pretrained(minilm_path).state_dict()
    for name in ("context_encoder", "candidate_encoder"):
        own = getattr(m, name).state_dict()
        assert info[name]["missing_keys"] == [] and len(info[name]["loaded"]) > 100
        compared = 0
        for key, value in bert.items():
            if key.endswith("position_ids"):
                continue
            torch.testing.assert_close(own[key], value, rtol=0, atol=0)
            compared += 1
        assert compared > 100
    # separate weights: changing one encoder does not touch the other
    assert m.context_encoder.embeddings.word_embeddings.weight.data_ptr() != \
        m.candidate_encoder.embeddings.word_embeddings.weight.data_ptr()
    # text-only, the text stream is exactly BERT
    ids = torch.randint(1000, 2000, (2, 9))
    _, seq, _ = m.eval().context_encoder(ids)
    ref = BertModel.from_pretrained(minilm_path).eval()(ids).last_hidden_state
    torch.testing.assert_close(seq, ref, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Tiny zero-shot training run on the generated sample corpus
# ----------------------------------------------------------------------------------------------------------------------


def _pixel_features(path: str, box=None):
    """Stand-in region feature (4x4 RGB thumbnail, 48-d): ResNet-50 is too slow for a unit test."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if box is not None:
            img = img.crop(tuple(int(v) for v in box))
        return np.asarray(img.resize((4, 4)), dtype="float32").reshape(-1) / 255.0


def test_tiny_training_beats_random_on_unseen_entities(tmp_path, repo_root, minilm_tokenizer):
    from modeling_mel.builders.zemeld import Zemeld
    from modeling_mel.builders.zemeld_sample import generate

    from modeling_mel.processing_zemel import ZemelProcessor
    from modeling_mel.regions import make_regions
    from modeling_mel.zemel_training import ZemelCollator, rank_candidates
    from modeling_mel.zemel_metrics import metrics_at_n

    generate(str(tmp_path / "raw"), seed=0)
    ds = {}
    for cfg in ("mentions", "kb"):
        b = Zemeld(config_name=cfg, data_dir=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"))
        b.download_and_prepare()
        ds[cfg] = b.as_dataset()
    kb = {r["entity_id"]: r for r in ds["kb"]["full"]}
    # ZEMELD calls a mention's text its caption; the linkers read `text` (load_zemel_data renames it the same way)
    train, test = ([dict(r, text=r["caption"]) for r in ds["mentions"][s]] for s in ("train", "test"))
    test_ids = sorted({r["entity_id"] for r in test})
    assert not (test_ids and set(test_ids) & {r["entity_id"] for r in train})

    import numpy as np

    kb_feats = {e: np.stack([_pixel_features(p) for p in r["images"]]) for e, r in kb.items()}
    region_cache = {}

    def regions(row):  # pairing given (V&T-KG): the whole image, then the mention's box
        if row["id"] not in region_cache:
            region_cache[row["id"]] = make_regions(
                _pixel_features(row["image"]), _pixel_features(row["image"], row["box"])[None], [row["box"]],
                (row["width"], row["height"]),
            )
        return region_cache[row["id"]]

    proc = ZemelProcessor(minilm_tokenizer, feature_dim=48, max_regions=2)
    torch.manual_seed(0)
    model = ZemelPolyEncoder(tiny_config(text_config=dict(TEXT, vocab_size=len(proc.tokenizer)), v_feature_dim=48,
                                         v_num_hidden_layers=1, poly_m=4, max_regions=2, modality_gate_init=1.0))
    model.resize_for_processor(proc)
    common = dict(context_regions=regions, entity_image_features=kb_feats.get, context_max_length=24,
                  candidate_max_length=24)
    train_collator = ZemelCollator(proc, kb, mode="in_batch", **common)
    eval_collator = ZemelCollator(proc, {e: kb[e] for e in test_ids}, mode="list",
                                  candidates=lambda m, k: test_ids[:k], num_candidates=len(test_ids), train=False,
                                  **common)

    def evaluate():
        ranked = rank_candidates(model, eval_collator, test)
        return metrics_at_n(ranked, [r["entity_id"] for r in test], len(test_ids))

    before = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    losses = []
    model.train()
    for step in range(40):
        idx = rng.choice(len(train), size=16, replace=False)
        batch = train_collator([train[i] for i in idx])
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = evaluate()
    random_r1 = 1.0 / len(test_ids)
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.3, losses
    assert after[f"r@1/{len(test_ids)}"] > 2 * random_r1, (before, after)
    print(f"zero-shot R@1 before {before}, after {after}, random {random_r1:.3f}, loss {losses[0]:.2f}->{losses[-1]:.2f}")
