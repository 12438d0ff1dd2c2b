"""ModelTester-style checks of ZemelPolyEncoder (as transformers' model tests and
tests/test_modeling_multimodal_nsp.py's MultimodalNSPModelTester do): the text stream equals transformers' BERT
modules weight for weight, outputs survive save/load, an example's scores do not depend on the rest of its batch or
on padding, eval is deterministic, and training reaches every parameter."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

from modeling_mel.configuration_zemel import ZemelConfig
from modeling_mel.modeling_zemel import ZemelPolyEncoder


class ZemelModelTester:
    """Tiny config and inputs: text hidden 32, 2 layers, 4 heads, vocab 99; visual hidden 24; batch 4, 3 regions."""

    batch_size = 4
    seq_length = 9
    cand_length = 6
    num_candidates = 3
    vocab_size = 99
    feature_dim = 16
    regions = 3

    def config(self, **kw) -> ZemelConfig:
        text = dict(vocab_size=self.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
        args = dict(text_config=text, v_feature_dim=self.feature_dim, v_hidden_size=24, v_num_attention_heads=4,
                    v_intermediate_size=30, v_num_hidden_layers=2, bi_hidden_size=32, bi_num_attention_heads=4,
                    poly_m=4, max_regions=self.regions, v_hidden_dropout_prob=0.0, v_attention_probs_dropout_prob=0.0)
        args.update(kw)
        return ZemelConfig(**args)

    def model(self, seed: int = 0, **kw) -> ZemelPolyEncoder:
        torch.manual_seed(seed)
        model = ZemelPolyEncoder(self.config(**kw)).eval()
        # open the zero-initialised gates and fusion so that every path carries signal in these checks
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "gate" in name or "fusion" in name:
                    p.add_(0.3 * torch.randn_like(p))
        return model

    def inputs(self, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        b, k = self.batch_size, self.num_candidates
        ids = torch.randint(3, self.vocab_size, (b, self.seq_length), generator=g)
        mask = torch.ones_like(ids)
        mask[1, -3:] = 0  # a padded context
        ids[1, -3:] = 0
        vmask = torch.ones(b, self.regions, dtype=torch.long)
        vmask[2, 1:] = 0  # a context with the whole image only
        vmask[3] = 0  # a context without image
        return dict(
            input_ids=ids,
            attention_mask=mask,
            visual_features=torch.randn(b, self.regions, self.feature_dim, generator=g),
            visual_spatial=torch.rand(b, self.regions, 5, generator=g),
            visual_attention_mask=vmask,
            candidate_input_ids=torch.randint(3, self.vocab_size, (b, k, self.cand_length), generator=g),
            candidate_visual_features=torch.randn(b, k, 1, self.feature_dim, generator=g),
            candidate_visual_spatial=torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]).expand(b, k, 1, 5).clone(),
            candidate_visual_attention_mask=torch.ones(b, k, 1, dtype=torch.long),
        )

    @staticmethod
    def select(x: dict, rows) -> dict:
        return {name: value[rows] for name, value in x.items()}


tester = ZemelModelTester()


def _bert_config(model: ZemelPolyEncoder) -> BertConfig:
    config = BertConfig(**model.config.text_config.to_dict())
    config._attn_implementation = "eager"
    return config


def test_text_embeddings_equal_transformers_bert_embeddings():
    model = tester.model()
    ours = model.context_encoder.embeddings
    bert = BertEmbeddings(_bert_config(model)).eval()
    missing, unexpected = bert.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in m or "token_type_ids" in m for m in missing)
    x = tester.inputs()
    types = torch.zeros_like(x["input_ids"])
    torch.testing.assert_close(ours(x["input_ids"], types), bert(input_ids=x["input_ids"], token_type_ids=types))


@pytest.mark.parametrize("masked", [False, True])
def test_text_layer_equals_transformers_bert_layer(masked):
    # the text stream is BERT's: each layer loads a BertLayer's weights under the same names and computes the same
    model = tester.model()
    for ours in model.context_encoder.encoder.layer:
        bert = BertLayer(_bert_config(model)).eval()
        assert bert.load_state_dict(ours.state_dict(), strict=True)
        hidden = torch.randn(tester.batch_size, tester.seq_length, 32, generator=torch.Generator().manual_seed(1))
        additive = None
        if masked:
            keep = tester.inputs()["attention_mask"]
            additive = (1.0 - keep[:, None, None, :].float()) * torch.finfo(torch.float32).min
        torch.testing.assert_close(ours(hidden, additive), bert(hidden, attention_mask=additive), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scoring", ["poly", "bi"])
def test_save_load_gives_identical_outputs(scoring, tmp_path):
    model = tester.model(scoring=scoring)
    x = tester.inputs()
    with torch.no_grad():
        before = model(**x)
    model.save_pretrained(tmp_path)
    loaded = ZemelPolyEncoder.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        after = loaded(**x)
    torch.testing.assert_close(after.scores, before.scores)
    torch.testing.assert_close(after.candidate_embeddings, before.candidate_embeddings)


@pytest.mark.parametrize("scoring", ["poly", "bi"])
def test_scores_do_not_depend_on_the_rest_of_the_batch(scoring):
    model = tester.model(scoring=scoring)
    x = tester.inputs()
    with torch.no_grad():
        batch = model(**x).scores
        for i in range(tester.batch_size):
            alone = model(**tester.select(x, [i])).scores
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=1e-5)


def test_padding_changes_nothing():
    # extra padding tokens and padded (masked) regions leave the context's scores unchanged
    model = tester.model()
    x = tester.inputs()
    padded = dict(x)
    pad = 4
    padded["input_ids"] = torch.cat([x["input_ids"], torch.zeros(tester.batch_size, pad, dtype=torch.long)], 1)
    padded["attention_mask"] = torch.cat([x["attention_mask"], torch.zeros(tester.batch_size, pad, dtype=torch.long)], 1)
    extra = torch.randn(tester.batch_size, 2, tester.feature_dim)
    padded["visual_features"] = torch.cat([x["visual_features"], extra], 1)
    padded["visual_spatial"] = torch.cat([x["visual_spatial"], torch.rand(tester.batch_size, 2, 5)], 1)
    padded["visual_attention_mask"] = torch.cat([x["visual_attention_mask"], torch.zeros(tester.batch_size, 2, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(**padded).scores, model(**x).scores, atol=1e-5, rtol=1e-5)


def test_eval_is_deterministic_and_train_mode_uses_dropout():
    text = dict(vocab_size=tester.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.1)
    model = tester.model(text_config=text)
    x = tester.inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**x).scores, model(**x).scores)
        model.train()
        torch.manual_seed(1)
        a = model(**x).scores
        torch.manual_seed(2)
        b = model(**x).scores
    assert not torch.allclose(a, b)


# Parameters no loss can reach, by design: a candidate is its pooled vector, so the candidate encoder's projected
# visual tokens are never used; poly scoring reads the context's token outputs, not its pooled vector; bi scoring
# reads the context's pooled vector, not its tokens or the poly codes.
UNUSED = {
    "poly": ("candidate_encoder.fusion.visual_", "context_encoder.pooler.", "context_encoder.v_pooler.",
             "context_encoder.fusion.dense."),
    "bi": ("candidate_encoder.fusion.visual_", "context_encoder.fusion.visual_", "poly_codes"),
}


@pytest.mark.parametrize("scoring", ["poly", "bi"])
def test_training_reaches_every_parameter(scoring):
    model = tester.model(scoring=scoring).train()
    x = tester.inputs()
    b, k = tester.batch_size, tester.num_candidates  # two regions per candidate, so region attention matters
    x["candidate_visual_features"] = torch.randn(b, k, 2, tester.feature_dim)
    x["candidate_visual_spatial"] = torch.rand(b, k, 2, 5)
    x["candidate_visual_attention_mask"] = torch.ones(b, k, 2, dtype=torch.long)
    model(**x, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    unreached = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()}
    expected = {n for n, _ in model.named_parameters() if n.startswith(UNUSED[scoring])}
    assert unreached == expected


def _reference_in_batch_loss(model, x, labels, entity_index):
    """The in-batch loss as training computed it beside the model before the model owned it (stop 21)."""
    b, k = x["candidate_input_ids"].shape[:2]
    flat = {n: (v.flatten(0, 1) if n.startswith("candidate_") else v) for n, v in x.items()}
    scores = model(**flat).scores.float() * float(model.config.logit_scale)  # (B, B*K)
    target = torch.arange(b) * k + labels
    ids = entity_index.reshape(-1)
    false_negative = ids[None, :] == ids[target][:, None]
    false_negative[torch.arange(b), target] = False
    return torch.nn.functional.cross_entropy(scores.masked_fill(false_negative, torch.finfo(scores.dtype).min), target)


@pytest.mark.parametrize("scoring", ["poly", "bi"])
def test_the_model_owns_the_in_batch_loss(scoring):
    # one loss owner: forward(loss_type="batch_candidates") is the training loss with in-batch negatives, the other
    # copies of a row's gold entity masked out (row 0's gold entity 7 is also a candidate of row 2)
    from modeling_mel.zemel_training import zemel_loss

    model = tester.model(scoring=scoring)
    x = tester.inputs()
    labels = torch.tensor([0, 1, 2, 0])
    entity_index = torch.tensor([[7, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    with torch.no_grad():
        out = model(**x, labels=labels, candidate_entity_index=entity_index, loss_type="batch_candidates")
        assert out.scores.shape == (tester.batch_size, tester.batch_size * tester.num_candidates)
        torch.testing.assert_close(out.loss, _reference_in_batch_loss(model, x, labels, entity_index))
        loss, _ = zemel_loss(model, {**x, "labels": labels, "candidate_entity_index": entity_index})
        torch.testing.assert_close(loss, out.loss)
        # without in-batch negatives: each row against its own candidates only
        own, _ = zemel_loss(model, {**x, "labels": labels, "candidate_entity_index": entity_index}, in_batch_negatives=False)
        torch.testing.assert_close(own, model(**x, labels=labels).loss)
        assert not torch.allclose(own, out.loss)
