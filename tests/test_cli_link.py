"""``mel link`` never loses work: one output line per input line whatever the line holds (bytes, spans, boxes),
output written through ``<output>.partial`` and renamed at the end, ``--resume`` after a kill, arguments checked
before any model is loaded."""

from __future__ import annotations

import json
import os

import pytest

from inference_fixtures import register_all, tiny_nsp, write_kb
from modeling_mel import cli_inference, cli_link
from modeling_mel.cli import main
from modeling_mel.pipeline_entity_linking import MultimodalEntityLinkingPipeline

register_all()


@pytest.fixture(scope="module")
def linker(tmp_path_factory) -> dict[str, str]:
    """A saved tiny PFMEL model and the tiny KB."""
    root = tmp_path_factory.mktemp("link")
    model, processor = tiny_nsp()
    model.save_pretrained(root / "nsp")
    processor.save_pretrained(root / "nsp")
    return {"model": str(root / "nsp"), "kb": write_kb(str(root))}


def _link(linker: dict[str, str], inputs, output, *extra: str) -> int:
    return main(["link", "--model", linker["model"], "--kb", linker["kb"], "--input", str(inputs),
                 "--output", str(output), "--no_images", "--top_k", "3", *extra])


def _line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


NASA = "launch day at NASA with friends"

ANY = object()  # linked or an error line, as the tokenizer decides: the line only must not be lost

# (raw input line, expected: None = linked, ANY, else a substring of its error)
MIXED = [
    (b"\xef\xbb\xbf" + _line({"id": "bom", "text": NASA, "mention": "NASA", "entity_id": "nasa"}), None),
    (_line({"id": "boxes-int", "text": NASA, "mention": "NASA", "boxes": 5}), "boxes must be a list"),
    (b'{"id": "latin-1", "text": "caf\xe9 at NASA", "mention": "NASA"}',
     "not valid UTF-8: byte 0xe9 at byte position 30"),
    (_line({"id": "u2028", "text": "Justin on stage\u2028tonight", "mention": "Justin"}), None),
    (_line({"id": "float-start", "text": NASA, "mention_start": 0.9, "mention_end": 4}),
     "mention_start must be an integer, got 0.9"),
    (_line({"id": "bool-start", "text": NASA, "mention_start": False, "mention_end": 4}),
     "mention_start must be an integer, got false"),
    (_line({"id": "bool-end", "text": NASA, "mention_start": 0, "mention_end": True}),
     "mention_end must be an integer, got true"),
    (_line({"id": "list-end", "text": NASA, "mention_start": 14, "mention_end": [18]}),
     "mention_end must be an integer"),
    (_line({"id": "integral-float", "text": NASA, "mention_start": 14.0, "mention_end": 18, "entity_id": "nasa"}),
     None),
    (b"", "empty line"),
    (_line({"id": "box-of-3", "text": NASA, "mention": "NASA", "boxes": [[1, 2, 3]]}), "boxes must be a list"),
    (_line({"id": "u2029", "text": "I love new york city\u2029in winter", "mention": "new york city"}), None),
    (_line({"id": "crlf", "text": "learning swift today", "mention": "swift"}) + b"\r", None),
    (_line({"id": "nyc", "text": "I love new york city in winter", "mention": "new york city",
            "entity_id": "newyorkcity"}), None),
    (b'{"id": "deep", "text": ' + b"[" * 100_000, "RecursionError"),  # not a JSONDecodeError
    (b'{"id": "surrogate", "text": "NASA \\ud800 launch", "mention": "NASA\\ud800"}', ANY),  # not UTF-8 encodable
    (b'{"id": "surrogate-text", "text": "NASA \\ud800 launch", "mention": "NASA"}', ANY),
]


def test_every_line_gets_one_output_line_in_order(linker, tmp_path, capsys):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    inputs.write_bytes(b"\n".join(raw for raw, _ in MIXED) + b"\n")
    assert _link(linker, inputs, output) == 0
    lines = output.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(MIXED)  # no extra line for the final newline
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["line"] for r in records] == list(range(1, len(MIXED) + 1))
    for (raw, expected), record in zip(MIXED, records):
        if expected is ANY:
            assert ("error" in record) != ("predictions" in record), (raw, record)
        elif expected is None:
            assert "error" not in record and 1 <= len(record["predictions"]) <= 3, (raw, record)
        else:
            assert "predictions" not in record and expected in record["error"], (raw, record)
    by_id = {r.get("id"): r for r in records}
    assert by_id["bom"]["predictions"][0]["entity_id"] == "nasa"  # the BOM line is linked, not lost
    assert by_id["integral-float"]["mention"] == "NASA"
    assert by_id["u2028"]["mention"] == "Justin"
    assert not os.path.exists(str(output) + cli_link.PARTIAL_SUFFIX)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["lines"] == len(MIXED) and summary["errors"] == sum("error" in r for r in records)
    assert summary["linked"] == sum(e is None for _, e in MIXED) + sum("predictions" in r for r in records[-2:])


@pytest.mark.parametrize(
    "data, lines",
    [
        (b"", []),
        (b"a", [b"a"]),
        (b"a\n", [b"a"]),
        (b"\n", [b""]),
        (b"a\n\nb\n", [b"a", b"", b"b"]),
        (b"\xef\xbb\xbfa\nb", [b"a", b"b"]),
        (b"a\r\nb\r\n", [b"a", b"b"]),
        ("a\u2028b\u0085c\x0cd\n".encode(), ["a\u2028b\u0085c\x0cd".encode()]),
    ],
)
def test_input_split_on_newline_bytes_only(data, lines):
    assert cli_link._split_input_lines(data) == lines


@pytest.fixture()
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cli_inference, "load_model_and_processor", refuse)


@pytest.mark.parametrize(
    "case, expected",
    [
        (["--top_k", "0"], "--top_k must be >= 1, got 0"),
        (["--top_k", "-2"], "--top_k must be >= 1, got -2"),
        (["--num_candidates", "0"], "--num_candidates must be >= 1, got 0"),
        (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
        ("input-is-dir", "is not a file"),
        ("output-is-input", "is the --input file"),
        ("output-links-to-input", "is the --input file"),
    ],
)
def test_bad_arguments_exit_2_before_loading_a_model(case, expected, tmp_path, capsys, no_model_loading):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    content = _line({"text": NASA, "mention": "NASA"}) + b"\n"
    inputs.write_bytes(content)
    extra: list[str] = []
    if case == "input-is-dir":
        inputs = tmp_path
    elif case == "output-is-input":
        output = inputs
    elif case == "output-links-to-input":
        output = tmp_path / "alias.jsonl"
        os.symlink(inputs, output)
    else:
        extra = case
    code = main(["link", "--model", str(tmp_path / "no-model"), "--kb", str(tmp_path / "kb.jsonl"),
                 "--input", str(inputs), "--output", str(output), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    if case not in ("output-is-input", "output-links-to-input"):
        assert not os.path.exists(output)
    assert (tmp_path / "mentions.jsonl").read_bytes() == content  # the input is never touched


class _Recorder:
    """Wraps the pipeline's __call__: records the text of every linked item; raises KeyboardInterrupt (a kill) on
    the call numbered ``kill_at``."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.texts: list[str] = []
        self.calls = 0
        self.kill_at = kill_at
        self.original = MultimodalEntityLinkingPipeline.__call__

    def install(self, monkeypatch) -> _Recorder:
        monkeypatch.setattr(MultimodalEntityLinkingPipeline, "__call__", lambda pipe, *a, **kw: self(pipe, *a, **kw))
        return self

    def __call__(self, pipe, inputs, *args, **kwargs):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        self.texts += [item["text"] for item in (inputs if isinstance(inputs, list) else [inputs])]
        return self.original(pipe, inputs, *args, **kwargs)


def _resume_input(path) -> list[str]:
    """20 lines with distinct texts (line 4 an error); returns the texts of the linkable lines, in order."""
    rows = [{"id": f"m{n}", "text": f"{NASA} number {n}", "mention": "NASA", "entity_id": "nasa"} for n in range(1, 21)]
    rows[3] = {"id": "m4", "text": f"{NASA} number 4", "mention_start": 0.5, "mention_end": 4}
    path.write_bytes(b"".join(_line(row) + b"\n" for row in rows))
    return [row["text"] for row in rows]


def test_kill_then_resume_links_each_line_once(linker, tmp_path, monkeypatch, capsys):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    partial = tmp_path / ("links.jsonl" + cli_link.PARTIAL_SUFFIX)
    texts = _resume_input(inputs)
    # batch_size 1: chunks of 8 linkable lines; the second chunk's call is the kill
    _Recorder(kill_at=2).install(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _link(linker, inputs, output, "--batch_size", "1")
    assert not output.exists()  # no half-written --output
    written = partial.read_bytes()
    done = [json.loads(line) for line in written.split(b"\n")[:-1]]
    assert [r["line"] for r in done] == list(range(1, 10))  # 8 linked lines + the error line, flushed
    assert "mention_start must be an integer, got 0.5" in done[3]["error"]
    partial.write_bytes(written + b'{"line": 10, "id": "m10", "mention": "NA')  # torn by the kill

    resumed = _Recorder().install(monkeypatch)
    capsys.readouterr()
    assert _link(linker, inputs, output, "--batch_size", "1", "--resume") == 0
    assert resumed.texts == texts[9:]  # only the lines after the complete ones are linked
    final = output.read_bytes()
    assert final.startswith(written)  # the kept lines, byte for byte
    records = [json.loads(line) for line in final.split(b"\n")[:-1]]
    assert [r["line"] for r in records] == list(range(1, 21))
    assert [r["id"] for r in records] == [f"m{n}" for n in range(1, 21)]
    assert all(r["predictions"][0]["entity_id"] == "nasa" for n, r in enumerate(records) if n != 3)
    assert not partial.exists()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["lines"] == 20 and summary["errors"] == 1 and summary["resumed"] == 9 and summary["correct@1"] == 19


def test_without_resume_a_partial_file_is_overwritten(linker, tmp_path, monkeypatch):
    inputs, output = tmp_path / "mentions.jsonl", tmp_path / "links.jsonl"
    partial = tmp_path / ("links.jsonl" + cli_link.PARTIAL_SUFFIX)
    texts = _resume_input(inputs)
    partial.write_bytes(_line({"line": 1, "id": "m1", "predictions": []}) + b"\n")
    recorder = _Recorder().install(monkeypatch)
    assert _link(linker, inputs, output, "--batch_size", "4") == 0
    assert recorder.texts == texts[:3] + texts[4:]  # every linkable line, none skipped
    records = [json.loads(line) for line in output.read_bytes().split(b"\n")[:-1]]
    assert [r["line"] for r in records] == list(range(1, 21)) and records[0]["predictions"]
    assert not partial.exists()


_INPUT = [_line({"id": f"m{n}", "text": NASA, "mention": "NASA"}) for n in (1, 2, 3)]


def _out(n: int, **extra) -> bytes:
    return _line({"line": n, "id": f"m{n}", "mention": "NASA", "predictions": [], **extra}) + b"\n"


@pytest.mark.parametrize(
    "partial, kept",
    [
        (_out(1) + _out(2), 2),
        (_out(1) + _out(2)[:-1], 1),  # the last line has no newline: torn
        (_out(1) + b"{not json\n" + _out(3), 1),
        (_out(1) + _out(3), 1),  # a line number skipped
        (_out(2) + _out(3), 0),  # not starting at 1
        (_line({"line": 1, "id": "other", "predictions": []}) + b"\n", 0),  # another input file's output
        (_line({"line": 1, "id": "m1"}) + b"\n", 0),  # no result
        (_line({"line": True, "id": "m1", "predictions": []}) + b"\n", 0),
        (_out(1) + _out(2) + _out(3) + _line({"line": 4, "id": None, "predictions": []}) + b"\n", 3),  # past the input
        (b"", 0),
    ],
)
def test_resumable_records_keep_only_complete_consecutive_lines(partial, kept, tmp_path):
    path = tmp_path / "links.jsonl.partial"
    path.write_bytes(partial)
    records, size = cli_link._resumable_records(str(path), _INPUT)
    assert [r["line"] for r in records] == list(range(1, kept + 1))
    assert partial[:size] == b"".join(_out(n) for n in range(1, kept + 1))
