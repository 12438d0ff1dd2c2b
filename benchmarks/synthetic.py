"""Synthetic inputs shared by the ZEMEL benchmarks: captions with a mention, region features, KB entities, and
ZEMEL / cross-encoder models of a given size (the embedded MiniLM, BERT-base-size random weights, or tiny)."""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

WORDS = (
    "the a of and in to for on with at from by about after before during over under between new old first last "
    "great small big public national city river mountain island state country team club band album film series "
    "season game player coach singer actor writer president minister company school university station museum "
    "church bridge road park airport festival election war battle treaty law court party army navy king queen "
    "prince bishop saint north south east west central upper lower early late golden silver red blue green black "
    "white famous local international annual official historic modern ancient popular known founded born died "
    "located based released played won lost built opened served elected named formed became became known"
).split()
NAMES = ("Paris Lincoln Jordan Washington Victoria Georgia Madison Phoenix Austin Florence Sydney Chelsea Aurora "
         "Hudson Brooklyn Dakota Savannah Charlotte Orlando Lyon").split()


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def captions(n: int, seed: int = 0, lo: int = 20, hi: int = 30) -> list[tuple[str, str]]:
    """``n`` captions of ``lo``..``hi`` words, each holding a two-word mention: ``(caption, mention)``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        mention = f"{rng.choice(NAMES)} {rng.choice(NAMES)}"
        left, right = sentence(rng, lo // 2, hi // 2 - 2), sentence(rng, lo // 2 - 2, hi // 2 - 2)
        out.append((f"{left} {mention} {right}", mention))
    return out


def entities(n: int, seed: int = 0, lo: int = 8, hi: int = 40) -> list[dict[str, str]]:
    """``n`` KB entities ``{"entity_id", "name", "description"}`` with descriptions of ``lo``..``hi`` words."""
    rng = random.Random(seed)
    return [{"entity_id": f"Q{i}", "name": f"{rng.choice(NAMES)} {rng.choice(NAMES)} {i}",
             "description": sentence(rng, lo, hi)} for i in range(n)]


def regions(n_boxes: int = 2, dim: int = 2048, seed: int = 0) -> dict[str, torch.Tensor]:
    """Whole image + ``n_boxes`` boxes of precomputed (ResNet-like: non-negative) features."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(1 + n_boxes, dim, generator=g)
    spatial = [[0.0, 0.0, 1.0, 1.0, 1.0]] + [[0.1 * i, 0.1, 0.5 + 0.1 * i, 0.8, 0.28] for i in range(n_boxes)]
    return {"features": feats, "spatial": torch.tensor(spatial)}


BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TINY_VISUAL = dict(v_hidden_size=32, v_num_attention_heads=4, v_intermediate_size=32, bi_hidden_size=32,
                   bi_num_attention_heads=4, poly_m=4)


def text_config(size: str) -> dict[str, Any]:
    """BERT config dict of a size: ``minilm`` (the embedded checkpoint's), ``bert-base`` or ``tiny``."""
    from modeling_mel.backbones import load_backbone_config

    base = load_backbone_config("minilm").to_dict()
    if size == "bert-base":
        base.update(BERT_BASE)
    elif size == "tiny":
        base.update(TINY)
    base.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    for key in ("architectures", "model_type", "transformers_version", "auto_map", "dtype", "torch_dtype"):
        base.pop(key, None)
    return base


def zemel_model(size: str, processor, scoring: str = "poly"):
    """A ZEMEL model of ``size`` in eval mode, resized for ``processor``: ``minilm`` loads the embedded weights into
    both text streams; ``bert-base`` and ``tiny`` are random (timing does not depend on the weights)."""
    from modeling_mel import ZemelConfig, ZemelPolyEncoder

    torch.manual_seed(0)
    dropout = dict(v_hidden_dropout_prob=0.0, v_attention_probs_dropout_prob=0.0)
    if size == "minilm":
        model = ZemelPolyEncoder.from_text_backbone("minilm", scoring=scoring, **dropout)
    else:
        extra = TINY_VISUAL if size == "tiny" else {}
        model = ZemelPolyEncoder(ZemelConfig(text_config=text_config(size), scoring=scoring, **dropout, **extra))
    processor.configure_model(model)
    return model.eval()


def timeit_many(fns: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, measured interleaved (a, b, c, a, b, c, ...) like ``common.timeit_pair``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def clustered_unit_vectors(n: int, dim: int, rng: np.random.Generator, n_centres: int = 1000,
                           spread: float = 1.0, chunk: int = 200_000) -> np.ndarray:
    """Unit vectors around ``n_centres`` random centres (closer to real entity embeddings than uniform ones)."""
    centres = np.random.default_rng(12345).standard_normal((n_centres, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, n_centres, m)] + spread * rng.standard_normal((m, dim), dtype=np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out
