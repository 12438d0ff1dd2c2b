"""An untrained text-only ZEMEL is its backbone: vectors equal sentence-transformers' `encode` of the checkpoint."""

import pytest
import torch

from modeling_mel.modeling_zemel import ZemelPolyEncoder, backbone_pooling
from modeling_mel.processing_zemel import ZemelProcessor

NAMES = ["Noel Harrison", "Oscar Robertson", "Hermann von Beckerath"]
DESCRIPTIONS = ["Sex: male. Occupation: actor, singer.", "Sex: male. Occupation: basketball player.", None]


@pytest.fixture(scope="module")
def st_model():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from modeling_mel.backbones import embedded_minilm_path

    return sentence_transformers.SentenceTransformer(embedded_minilm_path(), device="cpu")


@pytest.mark.parametrize("scoring", ["bi", "poly"])
def test_untrained_zemel_vectors_equal_sentence_transformers(st_model, scoring):
    processor = ZemelProcessor.from_backbone("minilm", context_template="mention_first")
    model = ZemelPolyEncoder.from_text_backbone("minilm", scoring=scoring)
    model.resize_for_processor(processor)
    model.eval()
    assert (model.config.pooling, model.config.normalize_embeddings) == ("mean", True)

    # Candidate side: `[CLS] name [ENT] description [SEP]` with [ENT] starting as "." reads "name . description".
    with torch.no_grad():
        vectors = model.encode_candidates(**processor.encode_candidates(NAMES, DESCRIPTIONS))
    reference = st_model.encode([f"{n} . {d or ''}".strip() for n, d in zip(NAMES, DESCRIPTIONS)], convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(vectors, reference.cpu())
    assert cosine.min() >= 0.999, cosine

    # Context side (bi): the pooled vector of `[CLS] m . ctx [M] m [/M] ctx [SEP]` is the backbone's embedding of
    # `m . ctx " m " ctx` ([M]/[/M] start as '"').
    text, mention = "Powers with Noel Harrison in The Girl from U.N.C.L.E.", "Noel Harrison"
    with torch.no_grad():
        context = model.encode_context(**processor.encode_contexts([text], [mention]))
    expected = st_model.encode([f'{mention} . Powers with " {mention} " in The Girl from U.N.C.L.E.'], convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(context.pooled_output, expected.cpu())
    assert cos.min() >= 0.999, cos
    if scoring == "poly":  # codes near zero attend almost uniformly: the poly score is near the cosine of bi
        scores = model.score(context, vectors)
        cosines = (expected.cpu() @ reference.cpu().T)
        assert torch.allclose(scores, cosines, atol=0.02), (scores, cosines)
        assert scores.argmax().item() == 0


def test_backbone_pooling_per_checkpoint(tmp_path):
    from modeling_mel.backbones import embedded_minilm_path

    assert backbone_pooling(embedded_minilm_path()) == {"pooling": "mean", "normalize_embeddings": True, "logit_scale": 20.0}
    assert backbone_pooling(str(tmp_path)) == {"pooling": "pooler"}  # a plain BERT folder: BERT's [CLS] pooler
