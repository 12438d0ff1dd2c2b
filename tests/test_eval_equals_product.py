"""Evaluation equals the product (issue 14): for the same model and KB, the PFMEL evaluation code
(``pfmel_evaluation.evaluate_splits``, what ``evaluate_linking.py`` runs) and ``pipeline()`` rank the same candidates
with the same scores on the sample's test split."""

from __future__ import annotations

import pytest
from transformers import pipeline

from inference_fixtures import register_all, tiny_nsp
from modeling_mel.pfmel_data import PFMELCorpus
from modeling_mel.pfmel_training import evaluate_splits
from modeling_mel.pipeline_entity_linking import TASK

register_all()


def _kb_rows(corpus: PFMELCorpus) -> list[dict]:
    """The corpus KB as plain rows (text fields; the linkers below are text only)."""
    keep = ("entity_id", "name", "screen_name", "location", "description")
    return [{**{k: row.get(k) for k in keep},
             "timeline": [{"tweet_id": t.get("tweet_id"), "text": t.get("text")} for t in row.get("timeline") or []]}
            for row in corpus.kb]


def test_pfmel_evaluation_ranks_as_the_pipeline(sample_dir, tmp_path):
    corpus = PFMELCorpus.load("twitter_mel", sample_dir, cache_dir=str(tmp_path / "cache"), image_features="none")
    model, processor = tiny_nsp()
    _, predictions = evaluate_splits(model, processor, corpus, ["test"])
    preds = predictions["test"]
    ds = corpus.split("test")
    inputs = [{"text": t, "mention": m} for t, m in zip(ds["text"], ds["mention"])]
    pipe = pipeline(TASK, model=model, processor=processor, kb=_kb_rows(corpus), use_images=False)
    outputs = pipe(inputs, top_k=1000)
    assert len(preds) == len(outputs) == len(ds) > 10
    compared = 0
    for pred, out in zip(preds, outputs):
        assert [e for e, _ in pred.ranked] == [r["entity_id"] for r in out], pred.mention_id
        assert [s for _, s in pred.ranked] == pytest.approx([r["score"] for r in out], abs=1e-4)
        compared += len(out)
    assert compared > len(preds)  # mentions with several candidates were ranked


def test_zemel_evaluation_ranks_as_the_pipeline(zemeld_raw, tmp_path):
    # text only: evaluate_split's BM25 + rules top 5 over the evaluation KB, scored by the model, against
    # pipeline(candidates="bm25", num_candidates=5) over the same KB
    from inference_fixtures import tiny_zemel
    from modeling_mel.zemel_evaluation import evaluate_split, load_zemel_data

    data = load_zemel_data("zemeld", zemeld_raw, cache_dir=str(tmp_path / "cache"))
    rows, kb = data.split("test"), data.kb_for("test")
    model, processor = tiny_zemel()
    result = evaluate_split(model, processor, rows, kb, ns=[5], vt_kg=False, return_predictions=True)
    lists, scores = result["_predictions"]["candidates"], result["_predictions"]["scores"]
    kb_rows = [{"entity_id": e, "name": v.get("name"), "description": v.get("description")} for e, v in kb.items()]
    pipe = pipeline(TASK, model=model, processor=processor, kb=kb_rows, use_images=False)
    inputs = [{"text": r["text"], "mention": r["mention"], "mention_start": r.get("mention_start"),
               "mention_end": r.get("mention_end")} for r in rows]
    outputs = pipe(inputs, top_k=5, candidates="bm25", num_candidates=5)
    assert len(outputs) == len(rows) > 10
    for cands, sc, out in zip(lists, scores, outputs):
        expected = sorted(zip(cands, sc), key=lambda p: -p[1])
        assert [r["entity_id"] for r in out] == [e for e, _ in expected]
        assert [r["score"] for r in out] == pytest.approx([s for _, s in expected], abs=1e-4)


def test_zemel_evaluation_whole_kb_ranking_is_the_pipelines(zemeld_raw, tmp_path):
    # issue 26: `mel evaluate-zemel --predictions_top_k` ranks the whole evaluation KB with the dense linker of the
    # product: the same ids in the same order, the same scores, as pipeline(candidates="dense") over that KB
    from inference_fixtures import tiny_zemel
    from modeling_mel.zemel_evaluation import evaluate_split, load_zemel_data

    data = load_zemel_data("zemeld", zemeld_raw, cache_dir=str(tmp_path / "cache"))
    rows, kb = data.split("test"), data.kb_for("test")
    model, processor = tiny_zemel()
    result = evaluate_split(model, processor, rows, kb, ns=[5], vt_kg=False, return_predictions=True, kb_top=7)
    ranked = result["_predictions"]["kb_ranked"]
    kb_rows = [{"entity_id": e, "name": v.get("name"), "description": v.get("description")} for e, v in kb.items()]
    pipe = pipeline(TASK, model=model, processor=processor, kb=kb_rows, use_images=False)
    inputs = [{k: r.get(k) for k in ("text", "mention", "mention_start", "mention_end")} for r in rows]
    outputs = pipe(inputs, top_k=7, candidates="dense", num_candidates=7)
    assert len(ranked) == len(outputs) == len(rows) > 10 and len(kb) > 7
    for mine, out in zip(ranked, outputs):
        assert [e for e, _ in mine] == [r["entity_id"] for r in out]
        assert [s for _, s in mine] == pytest.approx([r["score"] for r in out], abs=1e-5)
    # the field's gold ranks agree with the rankings where the gold is in the top 7
    from modeling_mel.zemel_evaluation import link_rows, encode_kb

    ranks = link_rows(model, processor, rows, encode_kb(model, processor, kb), kb_ranking=True)["ranks"]
    for row, mine, rank in zip(rows, ranked, ranks):
        ids = [e for e, _ in mine]
        assert (row["entity_id"] in ids) == (rank is not None and rank <= 7)
        if row["entity_id"] in ids:
            assert ids.index(row["entity_id"]) + 1 == rank


def test_saved_pfmel_model_is_evaluated_at_its_own_pair_length(sample_dir, tmp_path):
    # issue 26: `mel evaluate` (run_evaluation) loads a saved model with the pair length of its processor (here 64),
    # not the paper's 300: its rankings of long pairs equal pipeline()'s over the same saved folder
    import json

    from modeling_mel.pfmel_training import PFMELDataArguments, run_evaluation

    from modeling_mel import BertForMultimodalNSP, MultimodalNSPConfig, MultimodalNSPProcessor
    from modeling_mel.backbones import load_tokenizer

    # text only: a corpus read with image_features="none" has 2048-d (empty) image features
    processor = MultimodalNSPProcessor(load_tokenizer("minilm"), max_length=64, image_feature_dim=2048)
    model = BertForMultimodalNSP(MultimodalNSPConfig(
        vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=128, image_feature_dim=2048, initializer_range=0.2)).eval()
    processor.configure_model(model)
    model.save_pretrained(tmp_path / "nsp")
    processor.save_pretrained(tmp_path / "nsp")
    data_args = PFMELDataArguments(dataset="twitter_mel", data_dir=sample_dir, image_features="none",
                                   dataset_cache_dir=str(tmp_path / "cache"))
    preds_path = tmp_path / "preds.jsonl"
    run_evaluation(str(tmp_path / "nsp"), data_args, ["test"], output_file=str(tmp_path / "res.json"),
                   predictions_file=str(preds_path))
    preds = [json.loads(line) for line in open(preds_path)]
    corpus = PFMELCorpus.load("twitter_mel", sample_dir, cache_dir=str(tmp_path / "cache2"), image_features="none")
    ds = corpus.split("test")
    pipe = pipeline(TASK, model=str(tmp_path / "nsp"), kb=_kb_rows(corpus), use_images=False)
    outputs = pipe([{"text": t, "mention": m} for t, m in zip(ds["text"], ds["mention"])], top_k=1000)
    assert len(preds) == len(outputs) == len(ds)
    for pred, out in zip(preds, outputs):
        assert [e for e, _ in pred["ranked"]] == [r["entity_id"] for r in out]
        assert [s for _, s in pred["ranked"]] == pytest.approx([r["score"] for r in out], abs=1e-4)
