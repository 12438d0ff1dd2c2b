"""The alignment that loses no mention across the stack, on the WikiMEL cases (tests/test_wikimel.py holds the
fixture): the corpus offsets, both processors and the pipeline; metrics over every gold mention (PFMEL and ZEMEL
evaluation, the metric modules, benchmarks/quality.py)."""

from __future__ import annotations

import json
import os

import pytest

from inference_fixtures import register_all, tiny_nsp, tiny_zemel
from pfmel_fixtures import tiny_backbone  # noqa: F401  (session fixture)
from modeling_mel.corpus import load_mel_corpus, resolve_offsets
from modeling_mel.processing_multimodal_nsp import mention_prompt
from modeling_mel.mention_spans import align_mention
from test_wikimel import CASES, KB, write_wikimel

register_all()


@pytest.mark.parametrize("text, mention, expected, status", CASES)
def test_align_mention_cases(text, mention, expected, status):
    found = align_mention(text, mention)
    start, end, got = resolve_offsets(text, mention, None, None)
    assert got == status
    if expected is None:
        assert found is None and (start, end) == (None, None)
    else:
        assert found == (start, end, status) and text[start:end] == expected  # offsets into the ORIGINAL text
        assert resolve_offsets(text, mention, start, end)[2] == "ok"  # an aligned span, given back, holds


@pytest.fixture(scope="module")
def wikimel_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("wikimel"))
    write_wikimel(d)
    return d


# -- both processors and the pipeline -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zemel():
    return tiny_zemel()


@pytest.fixture(scope="module")
def nsp():
    return tiny_nsp()


def _tokens(processor, ids) -> list[str]:
    return processor.tokenizer.convert_ids_to_tokens([int(i) for i in ids if int(i) != processor.tokenizer.pad_token_id])


@pytest.mark.parametrize("text, mention, expected, status", CASES)
def test_zemel_processor_marks_the_aligned_span(zemel, text, mention, expected, status):
    _, proc = zemel
    toks = _tokens(proc, proc.encode_contexts([text], [mention])["input_ids"][0])
    marked = toks[toks.index("[M]") + 1 : toks.index("[/M]")]
    if expected is None:  # aligns nowhere: [CLS] [M] mention [/M] text [SEP]
        assert toks[:2] == ["[CLS]", "[M]"] and marked == proc.tokenizer.tokenize(mention)
        assert toks[toks.index("[/M]") + 1 : -1] == proc.tokenizer.tokenize(text)
    else:
        assert marked == proc.tokenizer.tokenize(expected)
    # a corpus row without a span (mention_start None) is encoded the same way
    row = proc.encode_contexts([text], [{"mention": mention, "mention_start": None, "mention_end": None}])
    assert _tokens(proc, row["input_ids"][0]) == toks


@pytest.mark.parametrize("text, mention, expected, status", CASES)
def test_pfmel_processor_needs_no_span(nsp, text, mention, expected, status):
    _, proc = nsp
    prompt = mention_prompt(text, mention)
    assert prompt == f"{text.strip()}. {mention} is"
    enc = proc([prompt], ["the entity context"])
    assert enc["input_ids"].shape[0] == 1 and int(enc["attention_mask"].sum()) > len(proc.tokenizer.tokenize(mention))


def _kb_rows():
    return [{"entity_id": q, "name": n, "description": a} for q, (n, a) in KB.items()]


@pytest.mark.parametrize("family_name", ["nsp", "zemel"])
def test_pipeline_links_every_case(family_name, nsp, zemel):
    from transformers import pipeline

    model, processor = nsp if family_name == "nsp" else zemel
    pipe = pipeline("multimodal-entity-linking", model=model, processor=processor, kb=_kb_rows(), use_images=False)
    items = [{"text": t, "mention": m} for t, m, _, _ in CASES]
    out = pipe(items, top_k=3)
    assert len(out) == len(CASES) and all(isinstance(row, list) for row in out)
    checked = [pipe._check_input(item) for item in items]
    for (text, _, expected, _), ex in zip(CASES, checked):
        got = None if ex["mention_start"] is None else text[ex["mention_start"] : ex["mention_end"]]
        assert got == expected
    if family_name == "zemel":
        assert all(len(row) == 3 for row in out)  # dense candidates: every mention is linked
        # the pipeline marks the same span as an explicit one (the same alignment function)
        text, mention, expected, _ = CASES[0]
        start = text.index(expected)
        by_span = pipe({"text": text, "mention": mention, "mention_start": start, "mention_end": start + len(expected)},
                       top_k=3, candidates="dense")
        assert [r["entity_id"] for r in by_span] == [r["entity_id"] for r in pipe(items[0], top_k=3, candidates="dense")]
    else:  # PFMEL's candidates: the entities whose name contains the mention; none is an empty ranking, no error
        assert out[2] == [] and out[5] == [] and out[3][0]["entity_id"] == "Q4"
    with pytest.raises(ValueError, match="is not at"):
        pipe({"text": "hello world", "mention": "world", "mention_start": 0, "mention_end": 5})


# -- every gold mention in the denominator ---------------------------------------------------------------------


def test_pfmel_metrics_count_every_gold_mention(wikimel_dir, tmp_path, tiny_backbone):
    from modeling_mel.pfmel_data import PFMELCorpus
    from modeling_mel.pfmel_training import PFMELModelArguments, evaluate_splits, load_model_and_processor

    mentions = load_mel_corpus("wikimel", wikimel_dir, cache_dir=str(tmp_path / "c"))
    kb = load_mel_corpus("wikimel", wikimel_dir, config="kb", cache_dir=str(tmp_path / "c"))
    corpus = PFMELCorpus(mentions, kb, image_features="none")
    model, processor = load_model_and_processor(PFMELModelArguments(backbone=tiny_backbone, max_length=64), corpus.table.dim)
    results, preds = evaluate_splits(model, processor, corpus, ["dev"])
    dev = results["dev"]
    # dev: Hartmann and Noel Harrison (one candidate each: right), Kératry (no name contains "Emile Keratry") and
    # Xyzzy (aligns nowhere; no candidate), Powers (gold Q99 outside the KB): 2 right of 5 gold mentions
    assert dev["n"] == len(mentions["dev"]) == 5
    assert (dev["n_gold_not_in_kb"], dev["n_no_candidates"], dev["n_unusable"]) == (1, 2, 3)
    assert sum(p.predicted == p.gold for p in preds["dev"]) == 2 and dev["accuracy"] == pytest.approx(2 / 5)
    assert corpus.linking_data("dev").training_pairs()  # the gold outside the KB gives no pair, no error
    assert len(corpus.sentences("dev")) == 4


def test_zemel_metrics_count_every_gold_mention(wikimel_dir, tmp_path, zemel):
    from modeling_mel.zemel_evaluation import evaluate_split, load_zemel_data

    data = load_zemel_data("wikimel", wikimel_dir, cache_dir=str(tmp_path / "c"))
    rows = data.split("dev")
    assert len(rows) == 5 and sum(r["mention_start"] is None for r in rows) == 1
    model, processor = zemel
    res = evaluate_split(model, processor, rows, data.kb_for("dev"), ns=(2, 5), vt_kg=False, return_predictions=True)
    assert res["n"] == 5 and res["n_gold_not_in_kb"] == 1 and res["n_unaligned"] == 1
    assert res["n_unusable"] == res["n_gold_not_in_kb"] + sum(
        not c for c, r in zip(res["_predictions"]["candidates"], rows) if r["entity_id"] in data.full_kb
    )
    for n in (2, 5):
        correct = sum(p == r["entity_id"] for p, r in zip(res["_predictions"]["predicted"][n], rows))
        assert res[f"r@1/{n}"] == pytest.approx(correct / 5)  # every gold mention is in the denominator
        assert res[f"candidate_recall@{n}"] <= 4 / 5  # the gold outside the KB is never a candidate


def test_denominator_rule_of_the_metric_modules():
    from modeling_mel.metrics import load_metric
    from modeling_mel.zemel_metrics import linking_metrics

    m = load_metric("linking").compute(predictions=[["a"], [], ["b", "c"], []], references=["a", "x", "c", "y"])
    assert m["n"] == 4 and m["accuracy"] == 0.25 and m["candidate_recall"] == 0.5
    z = linking_metrics(["a", None, "b", None], ["a", "x", "c", "y"], 5)
    assert z["r@1/5"] == 0.25 and z["precision/5"] == 0.5



def test_quality_benchmark_counts_every_gold_mention(wikimel_dir, tmp_path):
    """benchmarks/quality.py on a release-layout fixture: the candidate stage and the untrained ZEMEL through
    ``mel index`` + ``mel link``; the denominator is every released dev mention (the one whose gold is outside the
    KB counts as wrong)."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, "benchmarks", "quality.py"), "--data_dir", wikimel_dir, "--stages",
         "candidates,zemel_zero_shot", "--work_dir", str(tmp_path / "work"), "--out_dir", str(tmp_path), "--name", "q"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.load(open(tmp_path / "q.json"))
    assert result["n"] == 5 and result["kb_size"] == len(KB)  # dev: 103, 104, 105 and the two mentions of 200
    cands = result["stages"]["candidates"]
    assert cands["bm25_rules"]["n"] == 5 and cands["bm25_rules"]["H@100"] <= 4 / 5  # Q99 is not in the KB
    zs = result["stages"]["zemel_zero_shot"]
    assert zs["n"] == 5 and zs["errors"] == 0 and 0.0 <= zs["H@1"] <= zs["H@10"] <= 4 / 5
    links = [json.loads(line) for line in open(tmp_path / "work" / "zemel_zero_shot_links.jsonl")]
    assert len(links) == 5 and all(r["predictions"] for r in links)
    assert "| ZEMEL untrained (bi)" in (tmp_path / "q.md").read_text()

    # --transfer_from: another run's ZEMEL links this split untrained on it; given the same model, the same ranking
    import shutil

    other = tmp_path / "other_run"
    shutil.copytree(tmp_path / "work" / "zemel_zero_shot", other / "zemel")
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, "benchmarks", "quality.py"), "--data_dir", wikimel_dir, "--stages", "",
         "--transfer_from", str(other), "--work_dir", str(tmp_path / "work2"), "--out_dir", str(tmp_path), "--name", "t"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no reranker in" in proc.stdout  # the missing reranker is said, not skipped silently
    transfer = json.load(open(tmp_path / "t.json"))["stages"]["transfer"]
    assert "rerank" not in transfer and transfer["zemel"]["model"] == str(other / "zemel")
    assert {k: transfer["zemel"][k] for k in ("H@1", "H@10", "MRR", "n")} == {k: zs[k] for k in ("H@1", "H@10", "MRR", "n")}
    moved = [json.loads(line)["predictions"] for line in open(tmp_path / "work2" / "transfer_zemel_links.jsonl")]
    assert moved == [r["predictions"] for r in links]
    assert "(transfer, no training here)" in (tmp_path / "t.md").read_text()
    bad = subprocess.run([sys.executable, os.path.join(repo, "benchmarks", "quality.py"), "--data_dir", wikimel_dir,
                          "--stages", "transfer"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "--transfer_from" in bad.stderr

    # --mixing: the model's text streams remixed with the backbone (the untrained model is the backbone, so any
    # alpha gives it back: the same ranking), recorded in the saved config
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, "benchmarks", "quality.py"), "--data_dir", wikimel_dir, "--stages", "",
         "--zemel_model", str(other / "zemel"), "--mixing", "0.5", "--work_dir", str(tmp_path / "work3"),
         "--out_dir", str(tmp_path), "--name", "m"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    mixing = json.load(open(tmp_path / "m.json"))["stages"]["mixing"]["alphas"]
    assert {k: mixing["0.5"][k] for k in ("H@1", "H@10", "MRR", "n")} == {k: zs[k] for k in ("H@1", "H@10", "MRR", "n")}
    assert json.load(open(tmp_path / "work3" / "zemel_mixed0.5" / "config.json"))["backbone_mixing"] == 0.5
    assert "remixed to `--backbone_mixing 0.5`" in (tmp_path / "m.md").read_text()
    bad = subprocess.run([sys.executable, os.path.join(repo, "benchmarks", "quality.py"), "--data_dir", wikimel_dir,
                          "--mixing", "1.5"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "--mixing" in bad.stderr and "1.5" in bad.stderr
