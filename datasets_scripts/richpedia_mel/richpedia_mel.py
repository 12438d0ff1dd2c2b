"""Dataset-folder script of ``richpedia_mel``: re-exports :class:`modeling_mel.builders.richpedia_mel.RichpediaMel` (see README.md here;
load it with ``modeling_mel.corpus.load_mel_corpus("richpedia_mel", data_dir)``)."""

from modeling_mel.builders.richpedia_mel import *  # noqa: F401,F403
from modeling_mel.builders.richpedia_mel import RichpediaMel

__all__ = ["RichpediaMel"]
