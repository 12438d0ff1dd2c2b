"""Dataset-folder script of ``mel_jsonl``: re-exports :class:`modeling_mel.builders.mel_jsonl.MelJsonl` (see README.md here;
load it with ``modeling_mel.corpus.load_mel_corpus("mel_jsonl", data_dir)``)."""

from modeling_mel.builders.mel_jsonl import *  # noqa: F401,F403
from modeling_mel.builders.mel_jsonl import MelJsonl

__all__ = ["MelJsonl"]
