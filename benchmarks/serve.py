"""`mel serve` under load: p50 / p99 latency and mentions/s at 1, 8 and 32 concurrent clients, dynamic batching on
against off, in one run on 127.0.0.1.

Two `mel serve` processes run side by side over the same entity index (ZEMEL MiniLM poly, text only, a synthetic KB
of ``--n_entities`` names + descriptions, built with ``EntityIndex.build`` as `mel index` does, bf16 where this
machine runs it fast (probed once, both servers get the same ``--bf16`` or ``--fp32``), the pipeline's default candidates: BM25 + rules and dense): one with dynamic batching
(``--max_batch_size 32 --max_wait_ms 10``, the defaults), one with ``--no_batching``. Each client is a thread with a keep-alive HTTP
connection that sends one mention per request (captions of 20-30 words) and waits for the answer. The levels are
measured interleaved (on, off, on, off ...) so that machine noise hits both servers alike; each answer's top entity
is compared between the two servers.

    python benchmarks/serve.py --quick
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import base_parser, markdown_table, setup_threads, write_results
from synthetic import captions, entities, zemel_model

from modeling_mel import ZemelProcessor
from modeling_mel.backbones import load_tokenizer
from modeling_mel.entity_index import EntityIndex
from modeling_mel.hardware import bf16_is_fast

TARGETS = {"batching_speedup_at_32_min": 3.0}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, index_dir: str, *extra: str) -> tuple[subprocess.Popen, int]:
    """`mel serve` on a free port; returns once ``/health`` answers."""
    port = _free_port()
    cmd = [sys.executable, "-c", "import sys; from modeling_mel.cli import main; sys.exit(main(sys.argv[1:]))", "serve",
           "--model", model_dir, "--index", index_dir, "--no_images", "--port", str(port), "--log_level", "warning",
           *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mel serve exited {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("mel serve did not start within 180 s")


def load(port: int, bodies: list[bytes], clients: int) -> dict:
    """Send ``bodies`` from ``clients`` threads (each its share, one request at a time); latencies and wall time."""
    latencies: list[float] = []
    tops: dict[int, str] = {}
    errors: list[str] = []

    def client(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for i in range(worker, len(bodies), clients):
                begin = time.perf_counter()
                conn.request("POST", "/link", body=bodies[i], headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                latencies.append(time.perf_counter() - begin)
                if response.status != 200:
                    errors.append(f"{response.status}: {data[:200]!r}")
                    continue
                tops[i] = json.loads(data)[0]["entity_id"]
        except OSError as err:
            errors.append(repr(err))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[:3]}")
    latencies.sort()
    return {"wall": wall, "n": len(bodies), "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "tops": tops}


def stats(port: int) -> dict:
    """The server's counters (``GET /info``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/info")
        return json.loads(conn.getresponse().read())["stats"]
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n_entities", type=int, default=None, help="KB size (default 18880, WikiMEL's)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per client level and server (default 32 x clients, at least 64; half with --quick)")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--max_batch_size", type=int, default=32, help="the batching server's --max_batch_size")
    parser.add_argument("--max_wait_ms", type=float, default=10.0, help="the batching server's --max_wait_ms")
    parser.add_argument("--tiny", action="store_true", help="200 entities, 1 and 4 clients, 16 requests (tests)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 where bf16_is_fast() says this machine runs it fast")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    levels = [1, 4] if args.tiny else [int(c) for c in args.clients.split(",") if c.strip()]
    n_kb = args.n_entities or (200 if args.tiny else 18_880)  # WikiMEL's size; --quick sends fewer requests
    repeats = args.repeats or (1 if args.tiny else 2 if args.quick else 3)  # best of the repeats (single runs of a level are noisy)

    processor = ZemelProcessor(load_tokenizer("minilm"))
    model = zemel_model("minilm", processor)
    bf16 = bf16_is_fast("cpu") if args.precision == "auto" else args.precision == "bf16"
    work = tempfile.mkdtemp(prefix="serve-bench-")
    model_dir, index_dir = os.path.join(work, "model"), os.path.join(work, "index")
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    EntityIndex.build(model, processor, entities(n_kb, seed=7), index_type="flat", progress=False, bf16=bf16).save(index_dir)
    del model

    precision = "--bf16" if bf16 else "--fp32"  # decided once here: both servers run the same precision
    servers = {
        "on": start_server(model_dir, index_dir, precision, "--max_batch_size", str(args.max_batch_size),
                           "--max_wait_ms", str(args.max_wait_ms)),
        "off": start_server(model_dir, index_dir, precision, "--no_batching"),
    }
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for clients in levels:
            n = args.requests or (16 if args.tiny else max(64, 32 * clients) // (2 if args.quick else 1))
            n = max(n, clients)
            bodies = [json.dumps({"text": t, "mention": m}).encode() for t, m in captions(n, seed=clients)]
            for mode in servers:  # warm-up: the first requests load lazy state (BM25, kernels)
                load(servers[mode][1], bodies[: min(len(bodies), 2 * clients)], clients)
            for _ in range(repeats):
                for mode in ("on", "off"):
                    before = stats(servers[mode][1])
                    run = load(servers[mode][1], bodies, clients)
                    after = stats(servers[mode][1])
                    run["mean_batch"] = (after["mentions"] - before["mentions"]) / max(1, after["batches"] - before["batches"])
                    results.setdefault((mode, clients), []).append(run)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            proc.communicate(timeout=60)

    rows, agree = [], {}
    for clients in levels:
        for mode in ("on", "off"):
            runs = results[(mode, clients)]
            best = min(runs, key=lambda r: r["wall"])
            rows.append({"clients": clients, "dynamic batching": mode, "requests": best["n"],
                         "mentions/s": best["n"] / best["wall"], "p50 ms": best["p50_ms"], "p99 ms": best["p99_ms"],
                         "mentions per forward": best["mean_batch"]})
        on, off = results[("on", clients)][0]["tops"], results[("off", clients)][0]["tops"]
        agree[clients] = sum(on[i] == off[i] for i in on) / len(on)
    speed = {r["clients"]: {} for r in rows}
    for r in rows:
        speed[r["clients"]][r["dynamic batching"]] = r["mentions/s"]
    ratios = {f"batching_speedup_at_{c}": v["on"] / v["off"] for c, v in speed.items()}
    top = max(levels)
    targets = [{"target": f"mentions/s at {top} clients with dynamic batching >= 3x without",
                "measured": ratios[f"batching_speedup_at_{top}"],
                "met": ratios[f"batching_speedup_at_{top}"] >= TARGETS["batching_speedup_at_32_min"]}]
    tables = {
        f"mel serve, ZEMEL MiniLM poly over {n_kb} entities (text only, BM25 + rules and dense candidates, bf16 where "
        f"fast: {bf16}), one mention per request, batching on = --max_batch_size {args.max_batch_size} --max_wait_ms "
        f"{args.max_wait_ms}": markdown_table(rows),
        "Speed-up of dynamic batching (mentions/s on / off) and top-1 agreement between the two servers":
            markdown_table([{"clients": c, "speed-up": ratios[f"batching_speedup_at_{c}"], "top-1 agreement": agree[c]}
                            for c in levels]),
        "Targets": markdown_table(targets),
    }
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    payload = {"rows": rows, "ratios": ratios, "agreement": {str(k): v for k, v in agree.items()}, "targets": TARGETS,
               "target_check": targets, "n_entities": n_kb, "bf16": bf16}
    path = write_results("serve" + ("_tiny" if args.tiny else ""), payload, tables, args.out_dir, args.quick)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
