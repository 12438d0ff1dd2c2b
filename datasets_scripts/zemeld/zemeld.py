"""Dataset-folder script of ``zemeld``: re-exports :class:`modeling_mel.builders.zemeld.Zemeld` (see README.md here;
load it with ``modeling_mel.corpus.load_mel_corpus("zemeld", data_dir)``)."""

from modeling_mel.builders.zemeld import *  # noqa: F401,F403
from modeling_mel.builders.zemeld import Zemeld

__all__ = ["Zemeld"]
