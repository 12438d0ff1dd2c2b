"""Weight interpolation of a trained ZEMEL with its backbone (modeling_mel.backbone_interpolation)."""

import copy

import pytest
import torch

from modeling_mel.backbone_interpolation import backbone_state, interpolate_with_backbone, remix_with_backbone
from modeling_mel.modeling_zemel import ZemelPolyEncoder
from modeling_mel.processing_zemel import ZemelProcessor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone():
    return backbone_state("minilm")


@pytest.fixture()
def trained():
    """A MiniLM ZEMEL as built for training, then moved away from its start (a stand-in for training)."""
    torch.manual_seed(0)
    processor = ZemelProcessor.from_backbone("minilm", context_template="mention_first")
    model = ZemelPolyEncoder.from_text_backbone("minilm", scoring="poly")
    model.resize_for_processor(processor)
    start = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model, processor, start, copy.deepcopy(model.state_dict())


def _text_keys(model):
    return [f"{enc}.{k}" for enc in ("context_encoder", "candidate_encoder")
            for k in getattr(model, enc).state_dict() if k.split(".")[0] in ("embeddings", "encoder", "pooler")
            and not k.endswith("position_ids")]


def test_alpha_zero_gives_the_start_back_and_keeps_the_rest(trained, backbone):
    model, processor, start, moved = trained
    n = interpolate_with_backbone(model, 0.0, processor=processor, state=backbone)
    keys = _text_keys(model)
    assert n == len(keys) and n > 100
    now = model.state_dict()
    for key in keys:  # the text streams as they started, added-token rows ([M] [/M] [ENT]) included
        assert torch.equal(now[key], start[key]), key
    others = [k for k in now if k not in keys and now[k].is_floating_point()]
    assert any("poly" in k for k in others)
    for key in others:  # poly codes, co-attention, heads: trained values kept
        assert torch.equal(now[key], moved[key]), key


def test_alpha_half_is_the_midpoint_and_alpha_one_changes_nothing(trained, backbone):
    model, processor, start, moved = trained
    interpolate_with_backbone(model, 1.0, processor=processor, state=backbone)
    assert all(torch.equal(v, moved[k]) for k, v in model.state_dict().items())
    interpolate_with_backbone(model, 0.5, processor=processor, state=backbone)
    now = model.state_dict()
    word = "context_encoder.embeddings.word_embeddings.weight"
    assert now[word].shape[0] == processor.tokenizer.vocab_size + 3  # the added rows are mixed too
    for key in _text_keys(model):
        torch.testing.assert_close(now[key], (moved[key] + start[key]) / 2, rtol=0, atol=1e-6)


def test_remix_brings_a_mixed_model_to_another_alpha(trained, backbone):
    """A model saved mixed at 0.75 remixed to 0.5 is the trained model mixed at 0.5; remixed to 1, the trained
    model back (what benchmarks/quality.py --mixing does with a saved ZEMEL)."""
    model, processor, start, moved = trained
    keys = _text_keys(model)
    interpolate_with_backbone(model, 0.75, processor=processor, state=backbone)
    model.config.backbone_mixing = 0.75  # as run_zemel_training records it
    assert remix_with_backbone(model, 0.5, processor=processor, state=backbone) == len(keys)
    assert model.config.backbone_mixing == 0.5
    now = model.state_dict()
    for key in keys:
        torch.testing.assert_close(now[key], 0.5 * moved[key] + 0.5 * start[key], rtol=0, atol=1e-5)
    others = [k for k in now if k not in keys and now[k].is_floating_point()]
    assert all(torch.equal(now[k], moved[k]) for k in others)
    remix_with_backbone(model, 1.0, processor=processor, state=backbone)
    now = model.state_dict()
    for key in keys:
        torch.testing.assert_close(now[key], moved[key], rtol=0, atol=1e-5)
    del model.config.backbone_mixing  # a plain model (no record) is at 1: remix is plain mixing
    remix_with_backbone(model, 0.25, processor=processor, state=backbone)
    for key in keys:
        torch.testing.assert_close(model.state_dict()[key], 0.25 * moved[key] + 0.75 * start[key], rtol=0, atol=1e-5)
    model.config.backbone_mixing = 0.0
    with pytest.raises(ValueError, match="cannot be recovered"):
        remix_with_backbone(model, 0.5, processor=processor, state=backbone)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\].*2\.0"):
        remix_with_backbone(model, 2.0, processor=processor, state=backbone)


def test_bad_alpha_and_wrong_backbone_are_named(trained, backbone):
    model, processor, _, before = trained
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\].*1\.5"):
        interpolate_with_backbone(model, 1.5, processor=processor, state=backbone)
    wrong = dict(backbone)
    key = "encoder.layer.0.attention.self.query.weight"
    wrong[key] = torch.zeros(8, 8)
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.attention\.self\.query\.weight.*backbone"):
        interpolate_with_backbone(model, 0.5, processor=processor, state=wrong)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-mixed
    with pytest.raises(ValueError, match="no text-stream tensor"):
        interpolate_with_backbone(model, 0.5, processor=processor, state={"other": torch.zeros(1)})


def test_training_argument_is_checked():
    from modeling_mel.zemel_training import ZemelModelArguments

    assert ZemelModelArguments().backbone_mixing == 0.65  # the default that holds on WikiMEL and RichpediaMEL
    with pytest.raises(ValueError, match="--backbone_mixing must be in"):
        ZemelModelArguments(backbone_mixing=-0.1)
