"""A third model family plugs in with one registration call (issue 14): a toy bi-encoder over a tiny BERT, defined
here, declares ``linking_method = "dense"`` and runs through ``pipeline()``, ``EntityIndex`` and ``mel index`` /
``mel link`` with no edit to those modules."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest
import torch
from transformers import BertConfig, BertModel, PretrainedConfig, PreTrainedModel, ProcessorMixin, pipeline
from transformers.utils import ModelOutput

from inference_fixtures import write_kb
from modeling_mel.backbones import load_tokenizer
from modeling_mel.cli import main
from modeling_mel.entity_index import EntityIndex
from modeling_mel.pipeline_entity_linking import TASK
from modeling_mel.registry import register_family


class ToyBiConfig(PretrainedConfig):
    model_type = "toy_bi_encoder"

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.scoring = "bi"  # read by the dense path: search with the pooled vector


@dataclass
class ToyContext(ModelOutput):
    pooled_output: torch.Tensor | None = None
    poly_codes: torch.Tensor | None = None


class ToyBiEncoder(PreTrainedModel):
    """Mean-pooled tiny BERT for both sides; the score is a dot product."""

    config_class = ToyBiConfig
    linking_method = "dense"

    def __init__(self, config: ToyBiConfig):
        super().__init__(config)
        self.bert = BertModel(BertConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                                         num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                                         max_position_embeddings=128), add_pooling_layer=False)
        self.post_init()

    def _pool(self, input_ids, attention_mask=None):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        hidden = self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask[..., None].to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def encode_context(self, input_ids, attention_mask=None, **unused) -> ToyContext:
        return ToyContext(pooled_output=self._pool(input_ids, attention_mask))

    def encode_candidates(self, input_ids, attention_mask=None, **unused) -> torch.Tensor:
        return self._pool(input_ids, attention_mask)

    def score(self, context: ToyContext, cache: torch.Tensor) -> torch.Tensor:
        q = context.pooled_output
        return q @ cache.T if cache.dim() == 2 else torch.einsum("bh,bkh->bk", q, cache)

    def forward(self, input_ids, attention_mask=None):
        return self._pool(input_ids, attention_mask)


class ToyProcessor(ProcessorMixin):
    """``"<mention> : <text>"`` contexts and ``"<name> : <description>"`` candidates over a tokenizer."""

    def __init__(self, tokenizer=None, **kwargs):
        super().__init__(tokenizer, **kwargs)

    def _encode(self, texts, max_length):
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                                   return_tensors="pt"))

    def encode_contexts(self, texts, spans, regions=None, max_length: int = 64):
        mentions = [s if isinstance(s, str) else t[s[0]:s[1]] for t, s in zip(texts, spans)]
        enc = self._encode([f"{m} : {t}" for m, t in zip(mentions, texts)], max_length)
        enc.pop("token_type_ids", None)
        return enc

    def encode_candidates(self, names, descriptions, images_features=None, max_length: int = 64):
        enc = self._encode([f"{n} : {d or ''}" for n, d in zip(names, descriptions)], max_length)
        enc.pop("token_type_ids", None)
        return enc


register_family(ToyBiConfig, ToyBiEncoder, ToyProcessor)  # the one registration call


def _toy(tmp_path):
    tokenizer = load_tokenizer("minilm")
    torch.manual_seed(0)
    model = ToyBiEncoder(ToyBiConfig(vocab_size=len(tokenizer))).eval()
    processor = ToyProcessor(tokenizer)
    model.save_pretrained(tmp_path / "toy")
    processor.save_pretrained(tmp_path / "toy")
    return model, processor


QUERIES = [{"text": "launch day at NASA with friends", "mention": "NASA"},
           {"text": "Justin on stage tonight", "mention": "Justin"}]


def test_toy_family_through_pipeline_and_entity_index(tmp_path):
    model, processor = _toy(tmp_path)
    kb = write_kb(str(tmp_path))
    index = EntityIndex.build(model, processor, kb, batch_size=4, progress=False)
    index.save(str(tmp_path / "index"))
    from_kb = pipeline(TASK, model=model, processor=processor, kb=kb, use_images=False)
    from_index = pipeline(TASK, model=model, processor=processor, kb=str(tmp_path / "index"), use_images=False)
    a = from_kb(QUERIES, top_k=3, candidates="dense")
    b = from_index(QUERIES, top_k=3, candidates="dense")
    assert [[r["entity_id"] for r in row] for row in a] == [[r["entity_id"] for r in row] for row in b]
    # the scores are the toy model's own dot products
    with torch.no_grad():
        enc = processor.encode_contexts([q["text"] for q in QUERIES], [q["mention"] for q in QUERIES])
        query = model.encode_context(**enc).pooled_output
        positions = [index.entity_ids.index(row[0]["entity_id"]) for row in a]
        expected = [float(query[i] @ torch.from_numpy(index.vectors[p])) for i, p in enumerate(positions)]
    assert [row[0]["score"] for row in a] == pytest.approx(expected, abs=1e-4)


def test_toy_family_through_mel_index_and_mel_link(tmp_path, capsys):
    model, processor = _toy(tmp_path)
    kb = write_kb(str(tmp_path))
    assert main(["index", "--model", str(tmp_path / "toy"), "--kb", kb, "--out", str(tmp_path / "index"),
                 "--no_images", "--fp32"]) == 0
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    output = tmp_path / "out.jsonl"
    assert main(["link", "--model", str(tmp_path / "toy"), "--index", str(tmp_path / "index"), "--input", str(inputs),
                 "--output", str(output), "--no_images", "--fp32", "--top_k", "3", "--candidates", "dense"]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    pipe = pipeline(TASK, model=model, processor=processor, kb=str(tmp_path / "index"), use_images=False)
    expected = pipe(QUERIES, top_k=3, candidates="dense")
    assert [[p["entity_id"] for p in r["predictions"]] for r in records] == [[e["entity_id"] for e in row] for row in expected]
    assert os.path.isfile(tmp_path / "index" / "index_config.json")
