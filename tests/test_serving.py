"""`mel serve` (issue 16 point 2): the HTTP service against the pipeline, under concurrent clients, with bad input,
and its graceful shutdown; the dynamic batcher on its own."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from transformers import pipeline

from inference_fixtures import KB_ROWS, register_all, tiny_zemel
from modeling_mel.pipeline_entity_linking import TASK
from modeling_mel.serving import DynamicBatcher, RequestError, ServeLimits, parse_link_request

register_all()

TEMPLATES = ["{} was in the news today", "a photo of {} last night", "we talked about {} for hours",
             "new post: {} again", "everyone loves {} here"]
EXTRA_ENTITIES = [("Ada Lovelace", "mathematician"), ("Alan Turing", "computer scientist"),
                  ("Marie Curie", "physicist and chemist"), ("Paris", "capital of France"),
                  ("Lake Geneva", "lake in Switzerland"), ("Grace Hopper", "computer scientist, admiral")]


def _kb_rows() -> list[dict]:
    rows = [{k: v for k, v in r.items() if k in ("entity_id", "name", "description")} for r in KB_ROWS]
    rows += [{"entity_id": f"x{i}", "name": n, "description": d} for i, (n, d) in enumerate(EXTRA_ENTITIES)]
    return rows


def _mention_pool() -> list[dict]:
    pool = []
    for row in _kb_rows():
        for t in TEMPLATES:
            name = row["name"]
            pool.append({"text": t.format(name), "mention": name})
            pool.append({"text": t.format(name), "mention_start": t.index("{}"), "mention_end": t.index("{}") + len(name)})
    return pool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A saved tiny ZEMEL + kb.jsonl, and the pipeline the server must agree with (fp32, text only)."""
    root = tmp_path_factory.mktemp("serve")
    model, processor = tiny_zemel()
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    kb = root / "kb.jsonl"
    with open(kb, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in _kb_rows())
    pipe = pipeline(TASK, model=str(root / "model"), kb=str(kb), use_images=False)
    return root, pipe


class Server:
    """`mel serve` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, root, *extra: str):
        self.port = _free_port()
        cmd = [sys.executable, "-c", "import sys; from modeling_mel.cli import main; sys.exit(main(sys.argv[1:]))",
               "serve", "--model", str(root / "model"), "--kb", str(root / "kb.jsonl"), "--no_images", "--fp32",
               "--port", str(self.port), "--log_level", "warning", *extra]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"mel serve exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                status, body = self.request("GET", "/health")
                if status == 200 and body == {"status": "ok"}:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("mel serve did not answer /health within 120 s")
            time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None, conn=None) -> tuple[int, object]:
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else None
        finally:
            if own:
                conn.close()

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, out


def _requests(n: int, seed: int = 0) -> list[dict]:
    """`n` request specs: ~45% single mentions, ~45% lists, ~10% bad (each with the status and a word of the error)."""
    rng = random.Random(seed)
    pool = _mention_pool()
    bad_kinds = [
        (b"{not json", 400, "not UTF-8 JSON"),
        (json.dumps({"text": "hello world", "mention": "Paris", "mention_start": 0, "mention_end": 5}).encode(), 422,
         "is not at (0, 5)"),
        (json.dumps({"text": "", "mention": "x"}).encode(), 422, "'text' must be a non-empty string"),
        (json.dumps({"inputs": pool[0], "parameters": {"top_k": 0}}).encode(), 422, "top_k must be >= 1"),
        (json.dumps({"inputs": pool[0], "parameters": {"beam": 3}}).encode(), 422, "unknown parameter"),
        (json.dumps({"inputs": pool[0], "parameters": {"top_k": 1000}}).encode(), 422, "over the limit of 50"),
        (json.dumps([pool[0]] * 20).encode(), 422, "over the limit of 16"),
        (json.dumps([pool[1], {"text": "no mention here"}]).encode(), 422, "input 1: give 'mention'"),
        (json.dumps({"inputs": 42}).encode(), 422, "JSON int"),
        (json.dumps({"inputs": pool[2], "extra": 1}).encode(), 422, "unknown top-level key"),
        (b"[" + b" " * 40000 + b"]", 413, "over the limit"),
        (json.dumps({"text": "Paris", "mention_start": 3, "mention_end": 99}).encode(), 422, "is not inside the text"),
    ]
    specs = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.1:
            body, status, word = bad_kinds[i % len(bad_kinds)]
            specs.append({"body": body, "status": status, "word": word})
            continue
        params = {}
        if rng.random() < 0.5:
            params["top_k"] = rng.randint(1, 6)
        if rng.random() < 0.15:
            params["nil_threshold"] = 0.0
        if roll < 0.55:
            inputs = rng.choice(pool)
        else:
            inputs = rng.sample(pool, rng.randint(2, 5))
        body = json.dumps({"inputs": inputs, "parameters": params} if params else inputs).encode()
        specs.append({"body": body, "status": 200, "inputs": inputs, "params": params})
    return specs


def test_server_agrees_with_the_pipeline_under_8_concurrent_clients(served):
    root, pipe = served
    specs = _requests(500)
    assert 30 <= sum(s["status"] != 200 for s in specs) <= 80
    server = Server(root, "--max_list", "16", "--max_top_k", "50", "--max_body_bytes", "30000", "--max_wait_ms", "5")
    results: dict[int, tuple[int, object]] = {}
    failures: list[str] = []

    def client(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            for i in range(worker, len(specs), 8):
                results[i] = server.request("POST", "/link", specs[i]["body"], conn=conn)
        except Exception as err:  # noqa: BLE001 - reported below
            failures.append(f"client {worker}: {err!r}")
        finally:
            conn.close()

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    elapsed = time.monotonic() - start
    try:
        assert not failures, failures
        assert len(results) == len(specs)
        status, info = server.request("GET", "/info")
        assert status == 200 and info["kb_size"] == len(_kb_rows()) and info["linking_method"] == "dense"
        assert info["batching"]["enabled"] and info["limits"]["max_list"] == 16
        # concurrent requests were merged: fewer forward passes than good requests
        good = sum(s["status"] == 200 for s in specs)
        assert info["stats"]["requests"] >= good, [results[i] for i in range(5)]
        assert info["stats"]["batches"] < info["stats"]["requests"]
    finally:
        code, log = server.stop()
    print(f"500 requests from 8 clients in {elapsed:.1f} s; batches {info['stats']}")
    assert code == 0, log
    assert "Traceback" not in log, log

    for i, spec in enumerate(specs):
        status, body = results[i]
        if spec["status"] != 200:
            assert status == spec["status"], (i, spec["body"][:80], status, body)
            assert spec["word"] in body["error"], (spec["word"], body)
            continue
        assert status == 200, (i, body)
        expected = pipe(spec["inputs"], **spec["params"])
        flat_expected = expected if isinstance(spec["inputs"], list) else [expected]
        flat_body = body if isinstance(spec["inputs"], list) else [body]
        assert len(flat_body) == len(flat_expected)
        for got, want in zip(flat_body, flat_expected):
            assert [r["entity_id"] for r in got] == [r["entity_id"] for r in want], i
            assert [r.get("nil", False) for r in got] == [r.get("nil", False) for r in want], i
            assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5), i


def test_graceful_shutdown_finishes_the_request_in_flight(served):
    root, pipe = served
    # a long batching wait: the request is still waiting in the batcher when SIGTERM arrives
    server = Server(root, "--max_wait_ms", "1500")
    mention = _mention_pool()[3]
    got: list = []

    def send() -> None:
        got.append(server.request("POST", "/link", json.dumps(mention).encode()))

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    sender.join(timeout=60)
    out, _ = server.proc.communicate(timeout=60)
    assert server.proc.returncode == 0, out
    assert got and got[0][0] == 200, got
    assert [r["entity_id"] for r in got[0][1]] == [r["entity_id"] for r in pipe(mention)]


def test_batcher_merges_isolates_failures_and_separates_parameters():
    calls: list[tuple[list, dict]] = []
    gate = threading.Event()

    def link(items: list, params: dict) -> list:
        gate.wait(5)
        calls.append((list(items), dict(params)))
        if any(item == "bad" for item in items):
            raise ValueError("item 'bad' is bad")
        return [[f"{item}:{params.get('top_k', 5)}"] for item in items]

    batcher = DynamicBatcher(link, max_batch_size=8, max_wait_ms=50)
    done: dict[str, tuple] = {}

    def collect(name: str):
        return lambda result, error: done.__setitem__(name, (result, error))

    batcher.submit(["a"], {}, collect("a"))
    batcher.submit(["b", "c"], {}, collect("bc"))
    batcher.submit(["d"], {"top_k": 2}, collect("d"))  # other parameters: its own call
    batcher.submit(["bad"], {}, collect("bad"))
    batcher.submit(["e"], {}, collect("e"))
    batcher.start()  # every job is queued before the worker looks
    gate.set()
    batcher.stop()
    assert done["a"] == ([["a:5"]], None) and done["bc"] == ([["b:5"], ["c:5"]], None)
    assert done["e"] == ([["e:5"]], None) and done["d"] == ([["d:2"]], None)
    assert done["bad"][0] is None and "is bad" in str(done["bad"][1])
    # the first call merged the jobs a, bc, bad, e (and failed); each job was then run alone; d ran with its own parameters
    assert calls[0] == (["a", "b", "c", "bad", "e"], {})
    assert (["d"], {"top_k": 2}) in calls and len(calls) == 1 + 4 + 1
    assert batcher.stats["errors"] == 1


def test_batcher_off_runs_each_request_alone():
    calls = []
    batcher = DynamicBatcher(lambda items, params: calls.append(items) or [[i] for i in items], enabled=False)
    batcher.start()
    for name in "abc":
        batcher.submit([name], {}, lambda r, e: None)
    batcher.stop()
    assert calls == [["a"], ["b"], ["c"]]


def test_request_parsing_limits():
    limits = ServeLimits(max_body_bytes=100, max_list=2, max_top_k=5)
    assert parse_link_request(b'{"text": "a b", "mention": "a"}', limits) == ([{"text": "a b", "mention": "a"}], True, {})
    assert parse_link_request(b'{"inputs": [], "parameters": {"top_k": 2}}', limits) == ([], False, {"top_k": 2})
    for body, status in ((b"x" * 101, 413), (b"\xff", 400), (b"[1, 2, 3]", 422), (b'"text"', 422),
                         (b'{"inputs": {}, "parameters": {"top_k": 6}}', 422), (b'{"inputs": {}, "parameters": 3}', 422)):
        with pytest.raises(RequestError) as err:
            parse_link_request(body, limits)
        assert err.value.status == status, body
