"""Fixtures of the PFMEL tests: a toy in-memory corpus, a tiny BERT backbone dir, tiny image features, a tiny ResNet
dir and the base arguments of the PFMEL scripts on the sample corpus."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

FIRST = ["john", "anna", "mark", "lisa"]
LAST = ["smith", "baker", "jones"]
TOPICS = ["football", "cooking", "music", "science", "travel", "movies", "politics", "fashion", "gaming", "art", "cars", "books"]


def make_toy_corpus(root: str, n_mentions: int = 48, seed: int = 0, with_images: bool = True):
    """A corpus of ``len(FIRST) * len(LAST)`` Twitter users whose first or last names are shared (ambiguous
    mentions); each user has a colour signature in its images. Returns ``(mentions DatasetDict, kb Dataset)``."""
    from datasets import Dataset, DatasetDict, Features, Image, List, Value
    from PIL import Image as PILImage

    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)

    def image(name: str, colour) -> str | None:
        if not with_images:
            return None
        path = os.path.join(root, "images", name + ".png")
        arr = np.clip(np.array(colour, np.float32)[None, None] + np.random.RandomState(len(name)).randn(16, 16, 3) * 10, 0, 255)
        PILImage.fromarray(arr.astype(np.uint8)).save(path)
        return path

    kb_rows = []
    k = 0
    for f in FIRST:
        for last in LAST:
            eid = f"{f}{last}"
            colour = [(37 * k) % 256, (91 * k) % 256, (157 * k) % 256]
            topic = TOPICS[k % len(TOPICS)]
            timeline = [
                {"tweet_id": str(1000 + 10 * k + t), "text": f"more about {topic} today {t}", "image": image(f"{eid}_tl{t}", colour)}
                for t in range(2)
            ]
            kb_rows.append(
                {
                    "entity_id": eid,
                    "name": f"{f.title()} {last.title()}",
                    "screen_name": eid,
                    "location": "Paris" if k % 2 else "",
                    "description": f"I love {topic}",
                    "images": [],
                    "timeline": timeline,
                }
            )
            k += 1
    kb_features = Features(
        {
            "entity_id": Value("string"),
            "name": Value("string"),
            "screen_name": Value("string"),
            "location": Value("string"),
            "description": Value("string"),
            "images": List(Image()),
            "timeline": List({"tweet_id": Value("string"), "text": Value("string"), "image": Image()}),
        }
    )
    kb = Dataset.from_list(kb_rows, features=kb_features)
    rows = []
    for i in range(n_mentions):
        e = rng.randrange(len(kb_rows))
        ent = kb_rows[e]
        mention = ent["name"].split()[rng.randrange(2)].lower()
        topic = ent["description"].split()[-1]
        text = f"watching {topic} with {mention} tonight"
        colour = [(37 * e) % 256, (91 * e) % 256, (157 * e) % 256]
        start = text.index(mention)
        rows.append(
            {
                "id": f"t{i}",
                "text": text,
                "mention": mention,
                "mention_start": start,
                "mention_end": start + len(mention),
                "image": image(f"m{i}", colour),
                "entity_id": ent["entity_id"],
            }
        )
    m_features = Features(
        {
            "id": Value("string"),
            "text": Value("string"),
            "mention": Value("string"),
            "mention_start": Value("int32"),
            "mention_end": Value("int32"),
            "image": Image(),
            "entity_id": Value("string"),
        }
    )
    n = len(rows)
    cut = [0, n // 2, 3 * n // 4, n]
    splits = {
        "train": rows[cut[0] : cut[1]],
        "train07": rows[cut[0] : cut[1]][: int(0.7 * (cut[1] - cut[0]))],
        "train05": rows[cut[0] : cut[1]][: (cut[1] - cut[0]) // 2],
        "dev": rows[cut[1] : cut[2]],
        "test": rows[cut[2] : cut[3]],
    }
    mentions = DatasetDict({s: Dataset.from_list(r, features=m_features) for s, r in splits.items()})
    return mentions, kb


def tiny_extractor():
    """A tiny random ResNet with 2048-d output, 32-px inputs, in-memory cache."""
    from modeling_mel.image_encoders import tiny_resnet_config
    from modeling_mel.image_features import ImageFeatureExtractor

    return ImageFeatureExtractor(config=tiny_resnet_config(), image_size=32)


def make_tiny_backbone(path: str, dropout: float = 0.1) -> str:
    """Save a tiny random BERT (hidden 32, 2 layers, 4 heads) with the MiniLM tokenizer into ``path``."""
    from transformers import BertConfig, BertModel

    from modeling_mel.backbones import load_tokenizer

    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    tok = load_tokenizer("minilm")
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=512,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory):
    return make_toy_corpus(str(tmp_path_factory.mktemp("toy_corpus")))


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    return make_tiny_backbone(str(tmp_path_factory.mktemp("tiny_bert")), dropout=0.0)


@pytest.fixture(scope="session")
def pfmel_corpus(toy_corpus):
    from modeling_mel.pfmel_data import PFMELCorpus

    mentions, kb = toy_corpus
    return PFMELCorpus(mentions, kb, image_features="resnet50", extractor=tiny_extractor())


@pytest.fixture(scope="module")
def tiny_resnet_dir(tmp_path_factory) -> str:
    """A saved tiny random ResNet (transformers folder) as --image_model."""
    import torch
    from transformers import ResNetModel

    from modeling_mel.image_encoders import tiny_resnet_config

    path = str(tmp_path_factory.mktemp("tiny_resnet"))
    torch.manual_seed(0)
    ResNetModel(tiny_resnet_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base_argv(sample_dir, tiny_backbone, tiny_resnet_dir, tmp_path_factory) -> list[str]:  # noqa: F811
    """The data and image arguments of the PFMEL scripts on the sample corpus (``sample_dir``: conftest.py)."""
    return [
        "--dataset", "twitter_mel", "--data_dir", sample_dir, "--image_model", tiny_resnet_dir, "--image_size", "32",
        "--image_cache_dir", str(tmp_path_factory.mktemp("img_cache")), "--max_length", "96",
        "--max_train_samples", "12", "--max_eval_samples", "10",
    ]
