"""The ``mel_jsonl`` corpus builder, as a dataset-folder script.

The builder lives in the package (:mod:`modeling_mel.builders.mel_jsonl`, installed with it); this file re-exports it so
that the dataset folder (this script beside its card, ``README.md``) can be copied to a dataset repository, or the
class used from here::

    from modeling_mel.corpus import load_mel_corpus
    dd = load_mel_corpus("mel_jsonl", "path/to/data")          # the usual way
    from mel_jsonl import MelJsonl                                 # this file on sys.path
    builder = MelJsonl(config_name="mentions", data_dir="path/to/data"); builder.download_and_prepare()
"""

from modeling_mel.builders.mel_jsonl import *  # noqa: F401,F403
from modeling_mel.builders.mel_jsonl import MelJsonl

__all__ = ["MelJsonl"]
