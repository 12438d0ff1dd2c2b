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


def train_script(name: str, prefix: str = "test_script"):
    """The run module behind ``train/<name>.py``: :mod:`modeling_mel.scripts.<name>` (``prefix`` is kept for the
    callers; the module is the package's own)."""
    import importlib

    return importlib.import_module(f"modeling_mel.scripts.{name}")


@pytest.fixture(scope="module")
def one_thread():
    """Two torch threads on a shared 2-core machine are many times slower than one for tiny matrices (opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> str:
    """The seeded synthetic Twitter MEL corpus (raw layout) in a temp folder."""
    from modeling_mel.builders import sample

    out = str(tmp_path_factory.mktemp("sample"))
    sample.generate_twitter_sample(out, seed=0)
    return out


@pytest.fixture(scope="module")
def zemeld_raw(tmp_path_factory) -> str:
    """The seeded synthetic ZEMELD corpus (raw layout: annotations, KB, images) in a temp folder."""
    from modeling_mel.builders import zemeld_sample

    out = tmp_path_factory.mktemp("zemeld") / "raw"
    zemeld_sample.generate(str(out), seed=0)
    return str(out)

