"""The KB as modeling_mel.knowledge_base reads and checks it: JSONL errors naming file and line, one normal form of a
row from every source (kb.jsonl, an index folder, a list), the checks of its fields, entity images, the linking method
a model declares, and the refusal of an index built by another model."""

from __future__ import annotations

import json
import types

import pytest

from modeling_mel.knowledge_base import (
    check_index_compatible,
    entity_images,
    kb_records,
    linking_method,
    read_jsonl_numbered,
)


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_jsonl_lines_are_numbered_and_bad_lines_named(tmp_path):
    path = _write(tmp_path / "kb.jsonl", [{"entity_id": "a", "name": "A"}, "", {"entity_id": "b", "name": "B"}])
    assert [n for n, _ in read_jsonl_numbered(path)] == [1, 3]  # a blank line is skipped, not renumbered
    bad = _write(tmp_path / "bad.jsonl", [{"entity_id": "a", "name": "A"}, "{oops"])
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2 is not valid JSON"):
        kb_records(bad)
    array = _write(tmp_path / "array.jsonl", ['["a", "b"]'])
    with pytest.raises(ValueError, match=r"array\.jsonl line 1 is a list, expected a JSON object"):
        read_jsonl_numbered(array)


def test_one_normal_form_from_a_file_a_folder_and_a_list(tmp_path):
    rows = [{"entity_id": "alice_w", "name": "", "screen_name": "@alice_w", "images": "img/a.png",
             "timeline": ["hello", {"text": "pic", "image": "img/t.png"}]},
            {"entity_id": "Q2", "name": "Paris", "images": ["/abs/p.png"]}]
    path = _write(tmp_path / "kb.jsonl", rows)
    from_file = kb_records(path)
    assert kb_records(str(tmp_path)) == from_file  # a folder holding kb.jsonl
    alice, paris = from_file
    assert alice["name"] == "@alice_w"  # no name: the screen name
    assert alice["images"] == [str(tmp_path / "img" / "a.png")]  # relative to the kb.jsonl folder
    assert alice["timeline"] == [{"text": "hello"}, {"text": "pic", "image": str(tmp_path / "img" / "t.png")}]
    assert paris["images"] == ["/abs/p.png"] and paris["timeline"] == []
    assert kb_records(rows)[1] == paris  # a list: same rows (nothing to resolve against)
    (tmp_path / "index").mkdir()
    _write(tmp_path / "index" / "entities.jsonl", rows[1:])
    assert kb_records(str(tmp_path / "index")) == [dict(paris)]  # an entity index folder reads its entities.jsonl


def test_kb_rows_of_a_list_name_the_row_and_field():
    with pytest.raises(ValueError, match=r"KB row 1 \(entity_id 'b'\): location must be a string, got a list"):
        kb_records([{"entity_id": "a", "name": "A"}, {"entity_id": "b", "name": "B", "location": ["x"]}])
    with pytest.raises(ValueError, match=r"timeline\[0\]\.text must be a string"):
        kb_records([{"entity_id": "a", "name": "A", "timeline": [{"text": {"x": 1}}]}])
    # numbers are text too
    assert kb_records([{"entity_id": 7, "name": 1984, "description": 3.5}])[0] == {
        "entity_id": "7", "name": "1984", "description": "3.5", "images": [], "timeline": []}


def test_bad_kbs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"KB row 0 has no entity_id"):
        kb_records([{"name": "A"}])
    with pytest.raises(ValueError, match=r"KB row 0 \(.*kb\.jsonl line 1\) \(entity_id 'x'\) has no name"):
        kb_records(_write(tmp_path / "kb.jsonl", [{"entity_id": "x", "name": " "}]))
    with pytest.raises(ValueError, match="does not exist"):
        kb_records(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds neither entities.jsonl"):
        kb_records(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="kb is a single mapping"):
        kb_records({"entity_id": "a", "name": "A"})


def test_entity_images_fall_back_to_the_timeline():
    assert entity_images({"images": ["a.png"], "timeline": [{"image": "t.png"}]}) == ["a.png"]
    assert entity_images({"images": [], "timeline": [{"image": "t.png"}, {"text": "no image"}]}) == ["t.png"]
    assert entity_images({}) == []


class _Dense:
    def encode_context(self): ...
    def encode_candidates(self): ...
    def score(self): ...


def test_linking_method_is_declared_or_recognised():
    assert linking_method(types.SimpleNamespace(linking_method="cross")) == "cross"
    assert linking_method(_Dense()) == "dense"  # undeclared: recognised by its methods
    assert linking_method(types.SimpleNamespace(link_scores=len)) == "cross"
    with pytest.raises(ValueError, match=r"linking_method is 'sparse'; expected one of \('dense', 'cross'\)"):
        linking_method(types.SimpleNamespace(linking_method="sparse"))
    with pytest.raises(ValueError, match="is not a linking model"):
        linking_method(object())


def test_an_index_of_another_model_is_refused():
    model = types.SimpleNamespace(config=types.SimpleNamespace(config_hash=lambda: "h1"))
    check_index_compatible({"config_hash": "h1"}, model)  # same architecture, no fingerprint recorded
    check_index_compatible({"kind": "bm25", "config_hash": "other"}, model)  # a BM25 index holds no vectors
    with pytest.raises(ValueError, match=r"entity index was built by a model with config hash h0, but this model has "
                                         r"config hash h1; rebuild it with `mel index"):
        check_index_compatible({"config_hash": "h0"}, model)
