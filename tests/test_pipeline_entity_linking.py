"""pipeline("multimodal-entity-linking") on tiny models of both families: outputs, batching, remote code, bad input."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from transformers import pipeline

from inference_fixtures import (
    KB_ROWS,
    assert_ranked,
    mentions,
    register_all,
    tiny_extractor,
    tiny_nsp,
    tiny_zemel,
    write_kb,
)
from modeling_mel.pipeline_entity_linking import TASK, MultimodalEntityLinkingPipeline

register_all()


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("kb"))
    write_kb(root)
    return root


@pytest.fixture(scope="module")
def extractor():
    return tiny_extractor()


@pytest.fixture(scope="module")
def nsp():
    return tiny_nsp()


@pytest.fixture(scope="module")
def zemel():
    return tiny_zemel()


def make_pipe(family, kb, extractor=None, **kw):
    model, processor = family
    if extractor is not None:
        kw["image_extractor"] = extractor
    return pipeline(TASK, model=model, processor=processor, kb=kb, **kw)


def close(a, b, atol=1e-4) -> bool:
    return [[r["entity_id"] for r in x] for x in a] == [[r["entity_id"] for r in x] for x in b] and all(
        abs(r["score"] - s["score"]) <= atol for x, y in zip(a, b) for r, s in zip(x, y)
    )


# -- outputs ---------------------------------------------------------------------------------------------------------


def test_pfmel_outputs_follow_the_name_rule(nsp, kb_dir, extractor):
    pipe = make_pipe(nsp, os.path.join(kb_dir, "kb.jsonl"), extractor)
    assert isinstance(pipe, MultimodalEntityLinkingPipeline)
    out = pipe(mentions(kb_dir), top_k=3)
    assert len(out) == len(mentions(kb_dir))
    for row in out:
        assert_ranked(row, 3)
    # PFMEL candidates: entities whose name contains the mention.
    assert {r["entity_id"] for r in out[0]} == {"taylorswift13", "taylorlautner"}
    assert {r["entity_id"] for r in out[1]} == {"jtimberlake", "justinbieber"}
    assert [r["entity_id"] for r in out[2]] == ["nasa"]  # mention given by offsets
    assert out[3][0]["entity_id"] == "newyorkcity"
    single = pipe(mentions(kb_dir)[0], top_k=1)
    assert isinstance(single, list) and len(single) == 1 and single[0] == out[0][0]


@pytest.mark.parametrize("mode", ["dense", "bm25", "all", "rule"])
def test_zemel_outputs_for_each_candidate_source(zemel, kb_dir, extractor, mode):
    pipe = make_pipe(zemel, os.path.join(kb_dir, "kb.jsonl"), extractor)
    out = pipe(mentions(kb_dir), top_k=4, candidates=mode)
    for row in out:
        assert_ranked(row, 4)
    if mode == "dense":
        assert all(len(row) == 4 for row in out)
    if mode in ("bm25", "rule"):
        assert {r["entity_id"] for r in out[1]} == {"jtimberlake", "justinbieber"}
    # the poly score of a candidate does not depend on the candidate source
    dense = {r["entity_id"]: r["score"] for r in pipe(mentions(kb_dir)[1], top_k=100, candidates="dense")}
    for r in out[1]:
        assert abs(dense[r["entity_id"]] - r["score"]) < 1e-4


@pytest.mark.parametrize("family_name", ["nsp", "zemel"])
def test_batch_equals_one_by_one(family_name, nsp, zemel, kb_dir, extractor):
    family = nsp if family_name == "nsp" else zemel
    pipe = make_pipe(family, os.path.join(kb_dir, "kb.jsonl"), extractor)
    items = mentions(kb_dir)
    one_by_one = [pipe(item, top_k=5) for item in items]
    for batch_size in (2, 5):
        assert close(pipe(items, top_k=5, batch_size=batch_size), one_by_one)


def test_kb_as_dataset_and_list_match_jsonl(zemel, kb_dir):
    import datasets

    rows = [dict(r, images=[], timeline=[dict(t, image=None) for t in r.get("timeline", [])]) for r in KB_ROWS]
    from_list = make_pipe(zemel, rows, use_images=False)
    ds = datasets.Dataset.from_list([{k: r.get(k) for k in ("entity_id", "name", "description")} for r in KB_ROWS])
    from_ds = make_pipe(zemel, ds, use_images=False)
    from_file = make_pipe(zemel, os.path.join(kb_dir, "kb.jsonl"), use_images=False)
    item = {"text": "Justin on stage tonight", "mention": "Justin"}
    a, b, c = (p(item, top_k=8, candidates="dense") for p in (from_list, from_ds, from_file))
    assert close([a], [b]) and close([a], [c])
    assert len(a) == len(KB_ROWS)


def test_pfmel_with_bm25_retriever(nsp, kb_dir):
    pipe = make_pipe(nsp, os.path.join(kb_dir, "kb.jsonl"), use_images=False, retriever="bm25")
    out = pipe({"text": "the swift programming language", "mention": "swift"}, top_k=10)
    assert {"swiftlang", "taylorswift13"} <= {r["entity_id"] for r in out}
    with pytest.raises(ValueError, match="unknown retriever 'dense'"):
        make_pipe(nsp, os.path.join(kb_dir, "kb.jsonl"), retriever="dense")


def test_pfmel_with_zemel_index_retriever(nsp, zemel, kb_dir, tmp_path):
    from modeling_mel.entity_index import EntityIndex

    z_model, z_proc = zemel
    EntityIndex.build(z_model, z_proc, os.path.join(kb_dir, "kb.jsonl"), progress=False).save(tmp_path / "index")
    index = EntityIndex.load(tmp_path / "index", model=z_model, processor=z_proc)
    pipe = make_pipe(nsp, os.path.join(kb_dir, "kb.jsonl"), use_images=False, retriever=index)
    out = pipe({"text": "launch day at NASA", "mention": "NASA"}, top_k=20, num_candidates=3)
    ids = [r["entity_id"] for r in out]
    retrieved = index.retrieve(["launch day at NASA"], ["NASA"], 3)[0]
    assert set(ids) == set(retrieved) | {"nasa"}  # name rule + retrieval stage, reranked by NSP


# -- remote code and saved folders -----------------------------------------------------------------------------------

REMOTE_SCRIPT = """
import json, sys
from transformers import pipeline
out = {{}}
for name, call in (("nsp", {{}}), ("zemel", {{"candidates": "dense"}})):
    pipe = pipeline("multimodal-entity-linking", model={root!r} + "/hub_" + name, trust_remote_code=True,
                    kb={kb!r}, use_images=False)
    assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
    assert type(pipe.model).__module__.startswith("transformers_modules"), type(pipe.model).__module__
    assert type(pipe.processor).__module__.startswith("transformers_modules"), type(pipe.processor).__module__
    out[name] = pipe({items!r}, top_k=3, **call)
    if name == "nsp":
        # nothing of the installed package is imported for a PFMEL folder
        assert not [m for m in sys.modules if m.startswith("modeling_mel")], sorted(sys.modules)
assert "modeling_mel.pipeline_entity_linking" not in sys.modules
json.dump(out, open({out!r}, "w"))
"""


def test_remote_code_pipeline_in_fresh_process(nsp, zemel, kb_dir, tmp_path):
    from modeling_mel.hub import save_for_hub

    items = [{"text": "hand hearts taylor's version", "mention": "taylor"}, {"text": "Justin on stage", "mention": "Justin"}]
    expected = {}
    import modeling_mel

    package = os.path.dirname(modeling_mel.__file__)
    for name, family in (("nsp", nsp), ("zemel", zemel)):
        save_for_hub(family[0], family[1], tmp_path / f"hub_{name}")
        # the helpers the pipeline file imports relatively ship beside it, as they are in the package
        for helper in ("linking_kb.py", "pipeline_inputs.py", "weight_checks.py", "knowledge_base.py"):
            shipped = (tmp_path / f"hub_{name}" / helper).read_text(encoding="utf-8")
            assert shipped == open(os.path.join(package, helper), encoding="utf-8").read(), helper
        pipe = make_pipe(family, os.path.join(kb_dir, "kb.jsonl"), use_images=False)
        expected[name] = pipe(items, top_k=3, **({"candidates": "dense"} if name == "zemel" else {}))
    script = REMOTE_SCRIPT.format(root=str(tmp_path), kb=os.path.join(kb_dir, "kb.jsonl"), items=items, out=str(tmp_path / "out.json"))
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path)
    got = json.loads((tmp_path / "out.json").read_text())
    for name in ("nsp", "zemel"):
        assert close(got[name], expected[name])


def test_saved_folder_with_installed_package(nsp, zemel, kb_dir, tmp_path):
    """A plain save loads by task name; a Hub folder (custom_pipelines) needs pipeline_class= without remote code."""
    from modeling_mel.hub import save_for_hub

    item = {"text": "Justin on stage", "mention": "Justin"}
    for name, family in (("nsp", nsp), ("zemel", zemel)):
        family[0].save_pretrained(tmp_path / name)
        family[1].save_pretrained(tmp_path / name)
        pipe = pipeline(TASK, model=str(tmp_path / name), kb=os.path.join(kb_dir, "kb.jsonl"), use_images=False)
        assert type(pipe) is MultimodalEntityLinkingPipeline and type(pipe.model) is type(family[0])
        expected = make_pipe(family, os.path.join(kb_dir, "kb.jsonl"), use_images=False)(item)
        assert close([pipe(item)], [expected])
        save_for_hub(family[0], family[1], tmp_path / f"hub_{name}")
        hub_pipe = pipeline(
            TASK, model=str(tmp_path / f"hub_{name}"), kb=os.path.join(kb_dir, "kb.jsonl"), use_images=False,
            pipeline_class=MultimodalEntityLinkingPipeline,
        )
        assert close([hub_pipe(item)], [expected])


# -- bad input -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nsp_pipe(nsp, kb_dir, extractor):
    return make_pipe(nsp, os.path.join(kb_dir, "kb.jsonl"), extractor)


@pytest.fixture(scope="module")
def zemel_pipe(zemel, kb_dir, extractor):
    return make_pipe(zemel, os.path.join(kb_dir, "kb.jsonl"), extractor)


@pytest.mark.parametrize("which", ["nsp_pipe", "zemel_pipe"])
def test_mention_not_in_text(which, request):
    pipe = request.getfixturevalue(which)
    # a mention that aligns nowhere is linked without a span (PFMEL: prompt only; ZEMEL: [M] obama [/M] first)
    assert isinstance(pipe({"text": "hello world", "mention": "obama"}), list)
    assert pipe._check_input({"text": "hello world", "mention": "obama"})["mention_start"] is None
    with pytest.raises(ValueError, match=r"mention span \(3, 40\) is not inside the text"):
        pipe({"text": "hello world", "mention_start": 3, "mention_end": 40})
    with pytest.raises(ValueError, match="mention 'world' is not at"):
        pipe({"text": "hello world", "mention": "world", "mention_start": 0, "mention_end": 5})


@pytest.mark.parametrize("family_name", ["nsp", "zemel"])
def test_empty_kb(family_name, nsp, zemel, tmp_path):
    family = nsp if family_name == "nsp" else zemel
    (tmp_path / "kb.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        make_pipe(family, str(tmp_path / "kb.jsonl"))
    with pytest.raises(ValueError, match="empty"):
        make_pipe(family, [])
    with pytest.raises(ValueError, match="no knowledge base"):
        make_pipe(family, None)
    with pytest.raises(ValueError, match="does not exist"):
        make_pipe(family, str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("which", ["nsp_pipe", "zemel_pipe"])
def test_unreadable_image_warns_then_strict_raises(which, request, kb_dir, caplog, nsp, zemel, extractor):
    pipe = request.getfixturevalue(which)
    text_only = {"text": "launch day at NASA", "mention": "NASA"}
    for bad in (os.path.join(kb_dir, "img", "corrupt.png"), os.path.join(kb_dir, "img", "absent.png")):
        with caplog.at_level(logging.WARNING, logger="modeling_mel.pipeline_entity_linking"):
            out = pipe(dict(text_only, image=bad), top_k=3)
        assert "unreadable image" in caplog.text and os.path.basename(bad) in caplog.text
        assert close([out], [pipe(text_only, top_k=3)])  # treated as "no image"
        caplog.clear()
    family = nsp if which == "nsp_pipe" else zemel
    strict = make_pipe(family, os.path.join(kb_dir, "kb.jsonl"), extractor, strict_images=True)
    with pytest.raises(ValueError, match="corrupt.png"):
        strict(dict(text_only, image=os.path.join(kb_dir, "img", "corrupt.png")))


def test_image_changes_scores(zemel_pipe, nsp_pipe, kb_dir):
    for pipe in (zemel_pipe, nsp_pipe):
        base = {"text": "hand hearts taylor's version", "mention": "taylor"}
        with_image = pipe(dict(base, image=os.path.join(kb_dir, "img", "red.png")), top_k=2, **({"candidates": "rule"} if pipe is zemel_pipe else {}))
        without = pipe(base, top_k=2, **({"candidates": "rule"} if pipe is zemel_pipe else {}))
        assert any(abs(a["score"] - b["score"]) > 1e-6 for a, b in zip(with_image, without))


def test_wrong_image_feature_size_names_the_fix(nsp, kb_dir):
    pipe = make_pipe(nsp, os.path.join(kb_dir, "kb.jsonl"))  # default extractor would give 2048-d
    with pytest.raises(ValueError, match="expects 16-d image features.*image_extractor="):
        pipe({"text": "launch day at NASA", "mention": "NASA", "image": os.path.join(kb_dir, "img", "red.png")})


@pytest.mark.parametrize("which", ["nsp_pipe", "zemel_pipe"])
def test_top_k_larger_than_kb_returns_all(which, request):
    pipe = request.getfixturevalue(which)
    kwargs = {"candidates": "dense"} if which == "zemel_pipe" else {}
    item = {"text": "Justin on stage", "mention": "Justin"}
    out = pipe(item, top_k=1000, **kwargs)
    expected = len(KB_ROWS) if which == "zemel_pipe" else 2
    assert len(out) == expected
    assert_ranked(out, 1000)


@pytest.mark.parametrize("which", ["nsp_pipe", "zemel_pipe"])
def test_mixed_dicts_and_strings(which, request):
    pipe = request.getfixturevalue(which)
    good = {"text": "Justin on stage", "mention": "Justin"}
    with pytest.raises(ValueError, match=r"input 1 is a string \('Justin on stage'\); every input must be a dict"):
        pipe([good, "Justin on stage"])
    with pytest.raises(ValueError, match="input is a string"):
        pipe("Justin on stage")
    with pytest.raises(ValueError, match="input 0 is a int"):
        pipe([3])
    assert pipe([]) == []


def test_bad_parameters(nsp_pipe, zemel_pipe):
    item = {"text": "Justin on stage", "mention": "Justin"}
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        nsp_pipe(item, top_k=0)
    with pytest.raises(ValueError, match="unknown candidates 'bm26'"):
        zemel_pipe(item, candidates="bm26")
    with pytest.raises(ValueError, match=r"\['kb'\] can only be set when the pipeline is built"):
        zemel_pipe(item, kb="x")
    with pytest.raises(ValueError, match=r"unknown pipeline parameter\(s\) \['topk'\]"):
        zemel_pipe(item, topk=3)


def test_not_a_linking_model(kb_dir):
    from transformers import BertConfig, BertModel

    from modeling_mel.backbones import load_tokenizer
    from modeling_mel.processing_multimodal_nsp import MultimodalNSPProcessor

    model = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37))
    with pytest.raises(ValueError, match="BertModel is not a linking model: declare linking_method"):
        pipeline(TASK, model=model, processor=MultimodalNSPProcessor(load_tokenizer("minilm")), kb=os.path.join(kb_dir, "kb.jsonl"))
    torch.manual_seed(0)


def test_inline_name_rule_equals_candidates_module(kb_dir):
    """The pipeline keeps its own copy of the PFMEL rule (shipped code); it must select the same entities."""
    from modeling_mel.candidates import NameRuleCandidates
    from modeling_mel.pipeline_entity_linking import LinkingKB, kb_records

    entities = kb_records(os.path.join(kb_dir, "kb.jsonl"))
    kb, rule = LinkingKB(entities), NameRuleCandidates(entities)
    for mention in ("taylor", "Justin", " swift ", "NASA", "new york", "ng", "x", "Taylor Swift"):
        assert sorted(kb.name_rule(mention)) == rule.indices(mention), mention


def test_pfmel_scores_as_many_name_rule_candidates_as_it_was_trained_with(kb_dir, extractor):
    # issue 30 point 6: training and evaluate_linking cap the name-rule candidates at --max_candidates (recorded in
    # the config by fine-tuning); the pipeline scores the same number unless asked for another
    model, processor = tiny_nsp()
    pipe = make_pipe((model, processor), os.path.join(kb_dir, "kb.jsonl"), extractor)
    both = pipe(mentions(kb_dir)[0], top_k=5)  # "taylor": two name-rule candidates, no cap recorded (100)
    assert len(both) == 2
    model.config.max_candidates = 1
    capped = pipe(mentions(kb_dir)[0], top_k=5)
    assert len(capped) == 1 and capped[0]["entity_id"] in {r["entity_id"] for r in both}
    assert len(pipe(mentions(kb_dir)[0], top_k=5, num_candidates=2)) == 2  # an explicit call parameter wins
