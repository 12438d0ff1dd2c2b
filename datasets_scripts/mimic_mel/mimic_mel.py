"""Dataset-folder script of ``mimic_mel``: re-exports :class:`modeling_mel.builders.mimic_mel.MimicMel` (see README.md
here; load it with ``modeling_mel.corpus.load_mel_corpus("mimic_mel", data_dir)``)."""

from modeling_mel.builders.mimic_mel import *  # noqa: F401,F403
from modeling_mel.builders.mimic_mel import MimicMel

__all__ = ["MimicMel"]
