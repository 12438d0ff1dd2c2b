"""Dataset-folder script of ``wikimel``: re-exports :class:`modeling_mel.builders.wikimel.WikiMel` (see README.md here;
load it with ``modeling_mel.corpus.load_mel_corpus("wikimel", data_dir)``)."""

from modeling_mel.builders.wikimel import *  # noqa: F401,F403
from modeling_mel.builders.wikimel import WikiMel

__all__ = ["WikiMel"]
