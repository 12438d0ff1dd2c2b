"""``mel serve``: the linking pipeline as a batched HTTP JSON service (FastAPI + uvicorn, the ``[serve]`` extra).

    pip install "modeling-mel[serve]"
    mel serve --model M --index I --host 127.0.0.1 --port 8000
    curl -s localhost:8000/link -d '{"text": "launch day at NASA", "mention": "NASA"}'

Endpoints:

- ``POST /link``: the body is one mention (the pipeline's input dict), a list of mentions, or
  ``{"inputs": <mention or list>, "parameters": {"top_k", "candidates", "num_candidates", "nil_threshold"}}``. The
  answer is the pipeline's output for it: a list of predictions for one mention, a list of such lists for a list
  (NIL first when the calibrated threshold says "not in the KB").
- ``GET /health``: ``{"status": "ok"}`` once the model and KB are loaded.
- ``GET /info``: model, linking method, KB size, index type, NIL threshold, batching settings, limits, counters.

Dynamic batching (:class:`DynamicBatcher`): one worker thread runs the model; requests that arrive while it runs, or
while it waits for more (``max_wait_ms``, default 10, only under concurrent load: a lone client never waits), are
merged into one pipeline call of up to ``max_batch_size`` mentions (requests with different parameters are never
merged). When a merged call fails, each request of it is run alone, so
a bad request gets its own error and never another request's results.

Errors: a body over ``max_body_bytes`` gets 413; a body that is not JSON gets 400; a bad mention or parameter
(the pipeline's ``ValueError`` message, list longer than ``max_list``, ``top_k`` above ``max_top_k``) gets 422
with ``{"error": message}``. Shutdown (SIGINT / SIGTERM) stops accepting connections, finishes the requests in
flight, then stops the worker.
"""

import asyncio
import collections
import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

#: The per-request parameters a client may set (the pipeline's call parameters that are safe to expose).
REQUEST_PARAMETERS = ("top_k", "candidates", "num_candidates", "nil_threshold")


class RequestError(ValueError):
    """A bad request: ``status`` (400, 413 or 422) and a message naming the problem and the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)


@dataclass
class ServeLimits:
    """Request limits of the service."""

    max_body_bytes: int = 1 << 20
    max_list: int = 64
    max_top_k: int = 100
    max_num_candidates: int = 1000


@dataclass
class _Job:
    items: list[dict]
    params: dict
    key: str
    done: Callable[[Any, BaseException | None], None]
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.items)


class DynamicBatcher:
    """Runs ``link(items, params) -> [predictions per item]`` on one worker thread, merging concurrent jobs.

    Args:
        link: the linking function (the pipeline called on a list).
        max_batch_size: most mentions merged into one call (a single larger request still runs whole).
        max_wait_ms: how long the worker waits for more requests after the first one of a batch, when the previous
            batch merged several requests (under concurrent load); a lone client never waits.
        enabled: ``False`` runs every request alone, in arrival order (dynamic batching off).
    """

    def __init__(
        self, link: Callable[[list[dict], dict], list], max_batch_size: int = 32, max_wait_ms: float = 10.0,
        enabled: bool = True,
    ):
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size!r}")
        if float(max_wait_ms) < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self.link = link
        self.max_batch_size = int(max_batch_size)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.enabled = bool(enabled)
        self.stats = {"requests": 0, "mentions": 0, "batches": 0, "errors": 0}
        self._queue: "queue.Queue[_Job | None]" = queue.Queue()
        self._held: collections.deque[_Job] = collections.deque()  # taken from the queue, not merged yet
        self._thread: threading.Thread | None = None
        self._concurrent = False  # whether the last batch merged several requests

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="mel-serve-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 60.0) -> None:
        """Finish every job already submitted, then stop the worker."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    # -- submission -----------------------------------------------------------------------------------------------
    def submit(self, items: list[dict], params: Mapping[str, Any], done: Callable[[Any, BaseException | None], None]) -> None:
        """Queue a job; ``done(result, error)`` is called on the worker thread with one prediction list per item."""
        key = json.dumps(dict(params), sort_keys=True, default=str)
        self._queue.put(_Job(list(items), dict(params), key, done))

    async def link_async(self, items: list[dict], params: Mapping[str, Any]) -> list:
        """Await the predictions of ``items`` (from the event loop of a request)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            def settle() -> None:
                if future.cancelled():
                    return
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

            loop.call_soon_threadsafe(settle)

        self.submit(items, params, done)
        return await future

    # -- worker ---------------------------------------------------------------------------------------------------
    def _next(self, timeout: float | None) -> _Job | None | bool:
        """The next job (held ones first); ``False`` when none came within ``timeout``; ``None`` = stop."""
        if self._held:
            return self._held.popleft()
        try:
            return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return False

    def _run(self) -> None:
        stopping = False
        while True:
            first = self._next(None if not stopping else 0)
            if first is None:
                stopping = True
                continue
            if first is False:  # stopping and nothing left
                return
            batch, size = [first], first.size
            if self.enabled:
                # wait for more requests only under concurrent load (the previous batch merged several requests):
                # a lone client never waits; otherwise the queue fills while the model runs
                deadline = time.monotonic() + (self.max_wait if self._concurrent else 0.0)
                skipped: list[_Job] = []
                while size < self.max_batch_size:
                    job = self._next(max(0.0, deadline - time.monotonic()))
                    if job is False:
                        break
                    if job is None:
                        stopping = True
                        break
                    if job.key != first.key or size + job.size > self.max_batch_size:
                        skipped.append(job)  # other parameters or too big: a later batch
                        if job.key == first.key:
                            break
                        continue
                    batch.append(job)
                    size += job.size
                self._held.extendleft(reversed(skipped))
                self._concurrent = len(batch) > 1
            self._execute(batch)

    def _execute(self, batch: list[_Job]) -> None:
        items = [item for job in batch for item in job.items]
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["mentions"] += len(items)
        try:
            outputs = self.link(items, batch[0].params)
            if len(outputs) != len(items):
                raise RuntimeError(f"the linker returned {len(outputs)} results for {len(items)} mentions")
        except Exception as err:  # noqa: BLE001 - isolate the failing request below
            if len(batch) == 1:
                self.stats["errors"] += 1
                batch[0].done(None, err)
                return
            for job in batch:  # run each request alone: only the bad one fails
                self.stats["batches"] += 1
                try:
                    result = self.link(job.items, job.params)
                except Exception as job_err:  # noqa: BLE001
                    self.stats["errors"] += 1
                    job.done(None, job_err)
                else:
                    job.done(result, None)
            return
        start = 0
        for job in batch:
            job.done(outputs[start : start + job.size], None)
            start += job.size


# ----------------------------------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------------------------------


def parse_link_request(body: bytes, limits: ServeLimits) -> tuple[list[Any], bool, dict]:
    """``(mentions, single, parameters)`` of a ``POST /link`` body; :class:`RequestError` naming the problem."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body of {len(body)} bytes is over the limit of {limits.max_body_bytes}; "
                                "send fewer mentions per request")
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise RequestError(400, f"the request body is not UTF-8 JSON ({err}); send a mention object, a list of them, "
                                "or {\"inputs\": ..., \"parameters\": {...}}") from None
    params: Any = {}
    if isinstance(payload, dict) and "inputs" in payload:
        unknown = sorted(set(payload) - {"inputs", "parameters"})
        if unknown:
            raise RequestError(422, f"unknown top-level key(s) {unknown}; a request with 'inputs' takes only 'inputs' "
                                    "and 'parameters'")
        params = payload.get("parameters") or {}
        payload = payload["inputs"]
    if not isinstance(params, dict):
        raise RequestError(422, f"'parameters' must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(REQUEST_PARAMETERS))
    if unknown:
        raise RequestError(422, f"unknown parameter(s) {unknown}; known: {list(REQUEST_PARAMETERS)}")
    top_k = params.get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > limits.max_top_k:
        raise RequestError(422, f"top_k {top_k} is over the limit of {limits.max_top_k}")
    num = params.get("num_candidates")
    if isinstance(num, int) and not isinstance(num, bool) and num > limits.max_num_candidates:
        raise RequestError(422, f"num_candidates {num} is over the limit of {limits.max_num_candidates}")
    if isinstance(payload, dict):
        return [payload], True, dict(params)
    if isinstance(payload, list):
        if len(payload) > limits.max_list:
            raise RequestError(422, f"{len(payload)} mentions in one request is over the limit of {limits.max_list}; "
                                    "split the list")
        return payload, False, dict(params)
    raise RequestError(422, f"the request is a JSON {type(payload).__name__}; send a mention object "
                            "({\"text\": ..., \"mention\": ...}), a list of them, or {\"inputs\": ..., \"parameters\": ...}")


def check_request(pipe: Any, mentions: Sequence[Any], params: Mapping[str, Any]) -> None:
    """The pipeline's own checks of every mention and parameter (:class:`RequestError` 422 with its message)."""
    try:
        pipe._sanitize_parameters(**params)
        for i, item in enumerate(mentions):
            pipe._check_input(item, i if len(mentions) > 1 else None)
    except (ValueError, TypeError) as err:
        raise RequestError(422, " ".join(str(err).split())) from None


def service_info(pipe: Any, batcher: DynamicBatcher, limits: ServeLimits) -> dict:
    """What ``GET /info`` answers."""
    kb = pipe.kb
    searcher = getattr(kb, "searcher", None)
    index_config = getattr(searcher, "config", None) or {}
    if index_config.get("index_type"):
        index_type = index_config["index_type"]
    elif getattr(kb, "vectors", None) is not None:
        index_type = "exact"
    else:
        index_type = "none"
    config = pipe.model.config
    return {
        "model": str(getattr(pipe.model, "name_or_path", "") or ""),
        "model_type": getattr(config, "model_type", None),
        "linking_method": pipe.family,
        "kb_size": len(kb),
        "index_type": index_type,
        "retriever": None if pipe.retriever is None else (pipe.retriever if isinstance(pipe.retriever, str) else "dense index"),
        "nil_threshold": pipe._postprocess_params.get("nil_threshold"),
        "bf16": bool(pipe.bf16),
        "device": str(getattr(pipe, "device", "cpu")),
        "batching": {"enabled": batcher.enabled, "max_batch_size": batcher.max_batch_size,
                     "max_wait_ms": batcher.max_wait * 1000.0},
        "limits": vars(limits).copy(),
        "stats": dict(batcher.stats),
    }


def create_app(pipe: Any, batcher: DynamicBatcher, limits: ServeLimits | None = None) -> Any:
    """The FastAPI application of ``mel serve`` around a pipeline and its batcher (started and stopped with the app)."""
    try:
        from contextlib import asynccontextmanager

        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
    except ImportError as err:  # pragma: no cover - the [serve] extra is missing
        raise ImportError('mel serve needs FastAPI and uvicorn: pip install "modeling-mel[serve]"') from err
    limits = limits or ServeLimits()

    @asynccontextmanager
    async def lifespan(app: Any):
        batcher.start()
        logger.info("mel serve: ready (%s)", json.dumps(service_info(pipe, batcher, limits)))
        try:
            yield
        finally:
            # uvicorn has finished the requests in flight; the worker finishes whatever is still queued
            batcher.stop()
            logger.info("mel serve: stopped after %s", json.dumps(batcher.stats))

    app = FastAPI(title="modeling-mel linking service", lifespan=lifespan)

    def error(status: int, message: str) -> Any:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict:
        return service_info(pipe, batcher, limits)

    @app.post("/link")
    async def link(request: Request) -> Any:  # a runtime annotation (no __future__ import here): FastAPI reads it
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            return error(413, f"request body of {declared} bytes is over the limit of {limits.max_body_bytes}; "
                              "send fewer mentions per request")
        try:
            mentions, single, params = parse_link_request(await request.body(), limits)
            check_request(pipe, mentions, params)
        except RequestError as err:
            return error(err.status, str(err))
        if not mentions:
            return []
        try:
            outputs = await batcher.link_async(mentions, params)
        except (ValueError, TypeError, KeyError) as err:  # the pipeline's message for a bad mention (e.g. an image)
            return error(422, " ".join(str(err).split()) or type(err).__name__)
        except Exception as err:  # noqa: BLE001 - a server fault, reported without a traceback to the client
            logger.exception("mel serve: linking failed")
            return error(500, f"internal error while linking ({type(err).__name__}); see the server log")
        return outputs[0] if single else outputs

    return app


# ----------------------------------------------------------------------------------------------------------------------
# The server (`mel serve` in cli_inference parses the command line and calls run_server)
# ----------------------------------------------------------------------------------------------------------------------


def run_server(
    pipe: Any, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 32, max_wait_ms: float = 10.0,
    batching: bool = True, limits: ServeLimits | None = None, graceful_timeout: float = 30.0, log_level: str = "info",
) -> None:
    """Serve ``pipe`` with uvicorn until SIGINT / SIGTERM (then finish the requests in flight and return)."""
    try:
        import uvicorn
    except ImportError as err:  # pragma: no cover - the [serve] extra is missing
        raise ImportError('mel serve needs FastAPI and uvicorn: pip install "modeling-mel[serve]"') from err

    def link(items: list[dict], params: dict) -> list:
        return pipe(items, batch_size=int(max_batch_size), **params)

    batcher = DynamicBatcher(link, max_batch_size, max_wait_ms, enabled=batching)
    app = create_app(pipe, batcher, limits)
    config = uvicorn.Config(app, host=host, port=int(port), log_level=log_level,
                            timeout_graceful_shutdown=graceful_timeout, access_log=False)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # SIGINT / SIGTERM is how `mel serve` is meant to stop: after the graceful shutdown, return (exit 0)
            # instead of uvicorn re-raising the signal
            getattr(self, "_captured_signals", []).clear()

    Server(config).run()


__all__ = [
    "DynamicBatcher", "RequestError", "ServeLimits", "REQUEST_PARAMETERS", "parse_link_request", "check_request",
    "service_info", "create_app", "run_server",
]
