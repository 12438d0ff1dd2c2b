"""``mel serve``: a linking pipeline served over HTTP until SIGINT / SIGTERM (:mod:`modeling_mel.serving`)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from .cli_inference import add_pipeline_args, build_pipeline, pipeline_argument_error

def serve_main(argv: list[str]) -> int:
    """``mel serve``: load a pipeline and serve it over HTTP until SIGINT / SIGTERM (``modeling_mel.serving``)."""
    parser = argparse.ArgumentParser(
        prog="mel serve",
        description="Serve a linking model over HTTP: POST /link (one mention, a list, or {inputs, parameters}), "
                    "GET /health, GET /info. Concurrent requests are merged into shared forward passes (dynamic "
                    'batching). Needs the serve extra: pip install "modeling-mel[serve]".',
    )
    add_pipeline_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max_batch_size", type=int, default=32, help="most mentions merged into one forward pass")
    parser.add_argument("--max_wait_ms", type=float, default=10.0,
                        help="how long a batch waits for more requests after its first one, under concurrent load "
                             "(a lone client never waits)")
    parser.add_argument("--no_batching", action="store_true", help="run every request alone (dynamic batching off)")
    parser.add_argument("--max_body_bytes", type=int, default=1 << 20,
                        help="largest request body, counted as it arrives whatever the transfer encoding (chunked "
                             "too): 413 and the connection closes as soon as a body passes it")
    parser.add_argument("--max_list", type=int, default=64, help="most mentions in one request")
    parser.add_argument("--max_top_k", type=int, default=100, help="largest top_k a request may ask for")
    parser.add_argument("--read_timeout", type=float, default=30.0,
                        help="seconds a request body may pause (no bytes) before the server answers 408 and closes "
                             "the connection (default 30; 0: no limit)")
    parser.add_argument("--header_timeout", type=float, default=10.0,
                        help="seconds the request line and headers may take to arrive, from the connection (or the "
                             "first byte of a later request on it), before the server closes it (default 10; 0: no "
                             "limit)")
    parser.add_argument("--info_paths", action="store_true",
                        help="GET /info also shows the model's path on the server (default: only its name)")
    parser.add_argument("--graceful_timeout", type=float, default=30.0,
                        help="seconds shutdown waits for the requests in flight")
    parser.add_argument("--log_level", default="info", help="uvicorn log level")
    args = parser.parse_args(argv)
    problems = [f"--{name} must be >= 1, got {getattr(args, name)}"
                for name in ("max_batch_size", "max_body_bytes", "max_list", "max_top_k") if getattr(args, name) < 1]
    problems += [f"--{name} must be >= 0, got {getattr(args, name)}"
                 for name in ("max_wait_ms", "read_timeout", "header_timeout") if getattr(args, name) < 0]
    if not 0 <= args.port <= 65535:
        problems.append(f"--port must be in 0..65535, got {args.port}")
    if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("fastapi") is None:
        problems.append('needs FastAPI and uvicorn: pip install "modeling-mel[serve]"')
    problem = problems[0] if problems else pipeline_argument_error(args)  # the first problem, before any model loads
    if problem is not None:
        print(f"mel serve: {problem}", file=sys.stderr)
        return 2
    from .serving import ServeLimits, run_server

    pipe = build_pipeline(args)
    run_server(pipe, args.host, args.port, args.max_batch_size, args.max_wait_ms, not args.no_batching,
               ServeLimits(args.max_body_bytes, args.max_list, args.max_top_k, read_timeout=args.read_timeout,
                           header_timeout=args.header_timeout),
               args.graceful_timeout, args.log_level, info_paths=args.info_paths)
    return 0


__all__ = ["serve_main"]
