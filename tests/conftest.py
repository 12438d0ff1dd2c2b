"""Shared test set-up: offline, caches in a temp dir, small thread count."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="mel-test-hf-home-")
os.environ["HF_DATASETS_CACHE"] = os.path.join(os.environ["HF_HOME"], "datasets")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from modeling_mel.backbones import resolve_backbone

    return resolve_backbone("minilm")


@pytest.fixture()
def minilm_tokenizer():
    """A fresh tokenizer per test: processors register their special tokens on it."""
    from modeling_mel.backbones import load_tokenizer

    return load_tokenizer("minilm")
