"""The corpus builders (``datasets.GeneratorBasedBuilder`` subclasses) and the sample-corpus generators.

One module per corpus, named as the corpus (a ``datasets`` builder takes its name from its module):
:mod:`.twitter_mel`, :mod:`.mel_jsonl`, :mod:`.zemeld`, :mod:`.wikimel`, :mod:`.richpedia_mel`, :mod:`.mimic_mel` (WikiMEL,
RichpediaMEL and WikiDiverse in MIMIC's layout). Load them by name with
:func:`modeling_mel.corpus.load_mel_corpus`. The seeded generators of small corpora: :mod:`.sample` (Twitter MEL
layouts and mel_jsonl) and :mod:`.zemeld_sample` (ZEMELD). Nothing here is imported until used.
"""
