"""Tiny models of both families, a tiny KB with images, and saving helpers for the inference tests."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

FEATURE_DIM = 16

KB_ROWS = [
    {"entity_id": "taylorswift13", "name": "Taylor Swift", "screen_name": "taylorswift13", "location": "Nashville",
     "description": "singer and songwriter", "images": ["img/red.png"],
     "timeline": [{"tweet_id": "3", "text": "new album out", "image": "img/red.png"}]},
    {"entity_id": "taylorlautner", "name": "Taylor Lautner", "screen_name": "taylorlautner", "location": "LA",
     "description": "actor", "images": ["img/blue.png"], "timeline": []},
    {"entity_id": "jtimberlake", "name": "Justin Timberlake", "screen_name": "jtimberlake",
     "description": "singer, actor", "images": [], "timeline": [{"tweet_id": "9", "text": "on tour"}]},
    {"entity_id": "justinbieber", "name": "Justin Bieber", "description": "pop singer", "images": ["img/green.png"]},
    {"entity_id": "nasa", "name": "NASA", "description": "space agency of the United States"},
    {"entity_id": "newyorkcity", "name": "New York City", "description": "largest city of the United States"},
    {"entity_id": "andrewyng", "name": "Andrew Ng", "screen_name": "AndrewYNg", "location": "Palo Alto",
     "description": "co-founder of Coursera", "images": ["img/missing.png"]},
    {"entity_id": "swiftlang", "name": "Swift Language", "description": "programming language by Apple"},
]

MENTIONS = [
    {"text": "hand hearts taylor's version, love the new album", "mention": "taylor", "image": "img/red.png"},
    {"text": "Justin on stage tonight", "mention": "Justin"},
    {"text": "launch day at NASA with friends", "mention_start": 14, "mention_end": 18, "image": "img/blue.png"},
    {"text": "I love new york city in winter", "mention": "new york city"},
    {"text": "learning swift today", "mention": "swift", "image": None},
]


def write_images(root: str) -> None:
    from PIL import Image

    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    for name, color in (("red", (220, 20, 20)), ("blue", (20, 20, 220)), ("green", (20, 200, 20))):
        Image.new("RGB", (40, 32), color).save(os.path.join(root, "img", f"{name}.png"))
    with open(os.path.join(root, "img", "corrupt.png"), "wb") as f:
        f.write(b"not a png at all")


def write_kb(root: str) -> str:
    """``root/kb.jsonl`` (relative image paths) plus ``root/img/*.png``; returns the kb path."""
    write_images(root)
    path = os.path.join(root, "kb.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for row in KB_ROWS:
            f.write(json.dumps(row) + "\n")
    return path


def mentions(root: str) -> list[dict]:
    out = []
    for m in MENTIONS:
        m = dict(m)
        if m.get("image"):
            m["image"] = os.path.join(root, m["image"])
        out.append(m)
    return out


def tiny_extractor():
    from modeling_mel.image_encoders import tiny_resnet_config
    from modeling_mel.image_features import ImageFeatureExtractor

    return ImageFeatureExtractor(config=tiny_resnet_config(FEATURE_DIM), image_size=32, batch_size=8)


def tiny_nsp(seed: int = 0):
    """A tiny BertForMultimodalNSP and its processor (MiniLM tokenizer with [IMG])."""
    from modeling_mel import BertForMultimodalNSP, MultimodalNSPConfig, MultimodalNSPProcessor
    from modeling_mel.backbones import load_tokenizer

    processor = MultimodalNSPProcessor(load_tokenizer("minilm"), max_length=64, image_feature_dim=FEATURE_DIM)
    config = MultimodalNSPConfig(
        vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=128, image_feature_dim=FEATURE_DIM, initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = BertForMultimodalNSP(config).eval()
    processor.configure_model(model)
    return model, processor


def tiny_zemel(seed: int = 0, **overrides):
    """A tiny ZemelPolyEncoder and its processor (MiniLM tokenizer with [M], [/M], [ENT])."""
    from modeling_mel.backbones import load_tokenizer
    from modeling_mel.configuration_zemel import ZemelConfig
    from modeling_mel.modeling_zemel import ZemelPolyEncoder
    from modeling_mel.processing_zemel import ZemelProcessor

    processor = ZemelProcessor(load_tokenizer("minilm"), max_regions=3, feature_dim=FEATURE_DIM)
    kw = dict(
        text_config=dict(vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=128),
        v_feature_dim=FEATURE_DIM, v_hidden_size=24, v_num_attention_heads=4, v_intermediate_size=30,
        v_num_hidden_layers=1, bi_hidden_size=32, bi_num_attention_heads=4, poly_m=4, max_regions=3,
        initializer_range=0.2,
    )
    kw.update(overrides)
    torch.manual_seed(seed)
    model = ZemelPolyEncoder(ZemelConfig(**kw)).eval()
    processor.configure_model(model)
    return model, processor


def register_all() -> None:
    """Auto-class and pipeline registration (idempotent; importing modeling_mel already does it)."""
    from modeling_mel.registry import register_all as register

    register()


def assert_ranked(results, top_k: int) -> None:
    assert isinstance(results, list) and len(results) <= top_k
    for r in results:
        assert set(r) == {"entity_id", "name", "score"}
        assert isinstance(r["entity_id"], str) and isinstance(r["name"], str) and isinstance(r["score"], float)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def as_array(results) -> np.ndarray:
    return np.array([[r["score"] for r in row] for row in results], dtype=object)
