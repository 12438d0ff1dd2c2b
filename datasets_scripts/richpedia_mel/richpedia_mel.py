"""The ``richpedia_mel`` corpus builder, as a dataset-folder script.

The builder lives in the package (:mod:`modeling_mel.builders.richpedia_mel`, installed with it); this file re-exports it so
that the dataset folder (this script beside its card, ``README.md``) can be copied to a dataset repository, or the
class used from here::

    from modeling_mel.corpus import load_mel_corpus
    dd = load_mel_corpus("richpedia_mel", "path/to/data")          # the usual way
    from richpedia_mel import RichpediaMel                                 # this file on sys.path
    builder = RichpediaMel(config_name="mentions", data_dir="path/to/data"); builder.download_and_prepare()
"""

from modeling_mel.builders.richpedia_mel import *  # noqa: F401,F403
from modeling_mel.builders.richpedia_mel import RichpediaMel

__all__ = ["RichpediaMel"]
