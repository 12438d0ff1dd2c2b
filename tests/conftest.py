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
    """``train/<name>.py`` imported by path as a module (registered in ``sys.modules``: dataclasses look it up)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"{prefix}_{name}", os.path.join(REPO_ROOT, "train", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
    from modeling_mel.corpus import import_script

    out = str(tmp_path_factory.mktemp("sample"))
    import_script("sample", "generate_sample").generate_twitter_sample(out, seed=0)
    return out


@pytest.fixture(scope="module")
def zemeld_raw(tmp_path_factory) -> str:
    """The seeded synthetic ZEMELD corpus (raw layout: annotations, KB, images) in a temp folder."""
    from modeling_mel.corpus import import_script

    out = tmp_path_factory.mktemp("zemeld") / "raw"
    import_script("zemeld", "generate_zemeld_sample").generate(str(out), seed=0)
    return str(out)

