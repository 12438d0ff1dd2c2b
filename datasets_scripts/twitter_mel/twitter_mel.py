"""Dataset-folder script of ``twitter_mel``: re-exports :class:`modeling_mel.builders.twitter_mel.TwitterMel` (see README.md here;
load it with ``modeling_mel.corpus.load_mel_corpus("twitter_mel", data_dir)``)."""

from modeling_mel.builders.twitter_mel import *  # noqa: F401,F403
from modeling_mel.builders.twitter_mel import TwitterMel

__all__ = ["TwitterMel"]
