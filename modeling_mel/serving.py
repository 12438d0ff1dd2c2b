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
- ``GET /info``: model name, linking method, KB size, index type, NIL threshold, batching settings, limits,
  counters. The model is named by its folder (or hub id), never by a server path, unless the server runs with
  ``info_paths=True`` (``mel serve --info_paths``: adds ``model_path``).

Dynamic batching (:class:`DynamicBatcher`): one worker thread runs the model; requests that arrive while it runs, or
while it waits for more (``max_wait_ms``, default 10, only under concurrent load: a lone client never waits), are
merged into one pipeline call of up to ``max_batch_size`` mentions (requests with different parameters are never
merged). When a merged call fails, each request of it is run alone, so
a bad request gets its own error and never another request's results.

Errors: a body over ``max_body_bytes`` gets 413 as soon as its bytes pass the limit, whatever the transfer encoding
(a declared ``Content-Length`` over it before any byte is read; a chunked body counted as it arrives), and the
connection closes; a body that is not JSON, or JSON nested too deeply to decode, gets 400; a bad mention or parameter
(the pipeline's ``ValueError`` message, list longer than ``max_list``, ``top_k`` above ``max_top_k``) gets 422
with ``{"error": message}``. An image the server cannot use (``strict_images``) gets 422 naming the input and the
field only ("image not usable"): whether a path exists on the server, is a folder or is not an image goes to the
server log, never to the client.

Slow clients: the request line and headers must arrive within ``header_timeout`` seconds of the connection (or of
the first byte of a later request on a kept-alive connection), else the connection closes (408 when part of a
request came); while a body is read, each wait for more bytes is limited to ``read_timeout`` seconds, else 408 and
the connection closes. Idle kept-alive connections close after uvicorn's keep-alive timeout (5 s).

Shutdown (SIGINT / SIGTERM) stops accepting connections, finishes the requests in flight, then stops the worker.
"""

import asyncio
import collections
import json
import logging
import os
import queue
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
    read_timeout: float = 30.0  # seconds each wait for more body bytes may take (0: no limit)
    header_timeout: float = 10.0  # seconds the request line and headers may take to arrive (0: no limit)


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
    except RecursionError as err:  # e.g. 50,000 nested brackets: a bad body (mel link reports such a line as an error)
        raise RequestError(400, f"the request body is JSON nested too deeply to decode ({err}); send a mention object, "
                                "a list of them, or {\"inputs\": ..., \"parameters\": {...}}") from None
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


def model_name(name_or_path: Any) -> str:
    """How ``/info`` names a model: the folder name of a local model (never its server path), a hub id as it is."""
    name = str(name_or_path or "")
    if name and (os.path.isabs(name) or os.path.exists(name) or name.startswith(("~", "./", "../"))):
        return os.path.basename(os.path.normpath(os.path.expanduser(name)))
    return name


def service_info(pipe: Any, batcher: DynamicBatcher, limits: ServeLimits, paths: bool = False) -> dict:
    """What ``GET /info`` answers; ``paths``: also the model's path on the server (``model_path``)."""
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
    name_or_path = str(getattr(pipe.model, "name_or_path", "") or getattr(config, "_name_or_path", "") or "")
    info = {
        "model": model_name(name_or_path),
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
    if paths:
        local = name_or_path and os.path.exists(os.path.expanduser(name_or_path))
        info["model_path"] = os.path.abspath(os.path.expanduser(name_or_path)) if local else name_or_path
    return info


# ----------------------------------------------------------------------------------------------------------------------
# Slow and oversized request bodies, unusable images
# ----------------------------------------------------------------------------------------------------------------------


def _over_limit(received: int, limit: int, declared: bool = False) -> RequestError:
    what = f"request body of {received} bytes" if declared else f"request body (over {received} bytes received)"
    return RequestError(413, f"{what} is over the limit of {limit}; send fewer mentions per request")


class BodyGuard:
    """ASGI middleware bounding what reading a request body may cost, whatever its transfer encoding.

    The ``receive`` it hands on counts the body bytes as they arrive and raises :class:`RequestError` 413 as soon
    as the running total passes ``max_body_bytes`` (a declared ``Content-Length`` over it: at the first read, before
    any byte), and 408 when the client sends nothing for ``read_timeout`` seconds (0: no limit) before the body
    ends. The app turns either into a response with ``Connection: close``: the rest of the body is never read.
    """

    def __init__(self, app: Any, max_body_bytes: int, read_timeout: float = 0.0):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.read_timeout = float(read_timeout or 0.0)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        limit, timeout = self.max_body_bytes, self.read_timeout
        declared = next((value for name, value in scope.get("headers") or () if name == b"content-length"), None)
        declared_size = int(declared) if declared is not None and declared.strip().isdigit() else None
        state = {"received": 0, "done": False}

        async def guarded_receive() -> dict:
            if state["done"]:  # the body has ended: later reads only wait for a disconnect
                return await receive()
            if declared_size is not None and declared_size > limit:
                raise _over_limit(declared_size, limit, declared=True)
            try:
                message = await (asyncio.wait_for(receive(), timeout) if timeout > 0 else receive())
            except asyncio.TimeoutError:
                raise RequestError(408, f"the request body stalled: no bytes for {timeout:g} s (read timeout) after "
                                        f"{state['received']} bytes; send the whole body without pauses") from None
            if message.get("type") == "http.request":
                state["received"] += len(message.get("body") or b"")
                if state["received"] > limit:
                    raise _over_limit(state["received"], limit)
                state["done"] = not message.get("more_body", False)
            else:  # http.disconnect
                state["done"] = True
            return message

        await self.app(scope, guarded_receive, send)


class _HeaderTimeout:
    """Mixin for uvicorn's HTTP/1.1 protocol classes: closes a connection whose request line and headers are not
    complete ``header_timeout`` seconds after it opened, or after the first byte of a later request on a kept-alive
    connection (a 408 first when part of a request came). uvicorn itself only times out idle kept-alive connections,
    so a client sending half a header (or nothing) would hold its connection forever."""

    header_timeout: float = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._mel_cycle = getattr(self, "cycle", None)
        self._mel_timer: Any = None
        self._mel_partial = False  # bytes of a request whose headers are not complete came
        self._mel_arm()

    def _mel_arm(self) -> None:
        if self._mel_timer is None and self.header_timeout > 0:
            self._mel_timer = self.loop.call_later(self.header_timeout, self._mel_timed_out)  # type: ignore[attr-defined]

    def _mel_disarm(self) -> None:
        if self._mel_timer is not None:
            self._mel_timer.cancel()
            self._mel_timer = None

    def data_received(self, data: bytes) -> None:
        cycle = getattr(self, "cycle", None)
        if cycle is None or cycle.response_complete:  # between requests: these bytes begin the next one
            self._mel_arm()
            self._mel_partial = True
        super().data_received(data)  # type: ignore[misc]
        if getattr(self, "cycle", None) is not self._mel_cycle:  # the headers of a new request are complete
            self._mel_cycle = self.cycle  # type: ignore[attr-defined]
            self._mel_partial = False
            self._mel_disarm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._mel_disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _mel_timed_out(self) -> None:
        self._mel_timer = None
        transport = getattr(self, "transport", None)
        cycle = getattr(self, "cycle", None)
        if transport is None or transport.is_closing() or (cycle is not None and not cycle.response_complete):
            return
        client = getattr(self, "client", None)
        logger.info("mel serve: closing the connection of %s: request headers not complete within %g s (header "
                    "timeout)", f"{client[0]}:{client[1]}" if client else "a client", self.header_timeout)
        if self._mel_partial:
            body = json.dumps({"error": f"the request headers did not arrive within {self.header_timeout:g} s "
                                        "(header timeout)"}).encode()
            transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: "
                            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        transport.close()


def http_protocol(header_timeout: float) -> Any:
    """The uvicorn HTTP/1.1 protocol class of ``mel serve``: uvicorn's default (httptools, else h11) with the
    :class:`_HeaderTimeout` of ``header_timeout`` seconds (0: uvicorn's class as it is)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    if not header_timeout or header_timeout <= 0:
        return AutoHTTPProtocol
    return type("MelHTTPProtocol", (_HeaderTimeout, AutoHTTPProtocol), {"header_timeout": float(header_timeout)})


def _is_input_image_error(err: BaseException, message: str) -> bool:
    """Whether a pipeline error is an unusable mention image (strict_images): its text names a server path."""
    cause = err.__cause__
    return (type(err).__name__ == "ImageReadError" or "unreadable image" in message
            or ("image" in message and isinstance(cause, OSError)))


def _unusable_images(pipe: Any, mentions: Sequence[Any]) -> list[tuple[int, str]]:
    """``(position, detail)`` of each mention whose image the pipeline cannot open (the error path only)."""
    bad: list[tuple[int, str]] = []
    open_image = getattr(pipe, "_open_image", None)
    if open_image is None:
        return bad
    for i, item in enumerate(mentions):
        image = item.get("image") if isinstance(item, Mapping) else None
        if image is None:
            continue
        try:
            open_image(image, "image")
        except (ValueError, OSError) as err:  # strict mode: ValueError naming the file and the cause
            bad.append((i, " ".join(str(err).split())))
    return bad


async def _image_error(pipe: Any, mentions: Sequence[Any], single: bool, message: str) -> str:
    """The client's text for an unusable mention image: the input and the field, no server path or file detail
    (that goes to the server log)."""
    bad = await asyncio.to_thread(_unusable_images, pipe, mentions)
    if not bad:
        logger.warning("mel serve: a request failed on an image: %s", message)
        where = "input" if single else "one of the inputs"
        return f"{where}: image not usable (field 'image'); send an image file the server can read, or no image"
    parts = []
    for i, detail in bad:
        where = "input" if single else f"input {i}"
        logger.warning("mel serve: %s: %s", where, detail)
        parts.append(f"{where}: image not usable (field 'image')")
    return "; ".join(parts) + "; send an image file the server can read, or no image"


# ----------------------------------------------------------------------------------------------------------------------
# The application
# ----------------------------------------------------------------------------------------------------------------------


def create_app(pipe: Any, batcher: DynamicBatcher, limits: ServeLimits | None = None, info_paths: bool = False) -> Any:
    """The FastAPI application of ``mel serve`` around a pipeline and its batcher (started and stopped with the app);
    ``info_paths``: ``/info`` shows the model's server path too."""
    try:
        from contextlib import asynccontextmanager

        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
        from starlette.requests import ClientDisconnect
    except ImportError as err:  # pragma: no cover - the [serve] extra is missing
        raise ImportError('mel serve needs FastAPI and uvicorn: pip install "modeling-mel[serve]"') from err
    limits = limits or ServeLimits()

    @asynccontextmanager
    async def lifespan(app: Any):
        batcher.start()
        logger.info("mel serve: ready (%s)", json.dumps(service_info(pipe, batcher, limits, paths=True)))
        try:
            yield
        finally:
            # uvicorn has finished the requests in flight; the worker finishes whatever is still queued
            batcher.stop()
            logger.info("mel serve: stopped after %s", json.dumps(batcher.stats))

    app = FastAPI(title="modeling-mel linking service", lifespan=lifespan)
    app.add_middleware(BodyGuard, max_body_bytes=limits.max_body_bytes, read_timeout=limits.read_timeout)

    def error(status: int, message: str) -> Any:
        # 408 / 413: the rest of the body is never read, so the connection closes after the answer
        headers = {"connection": "close"} if status in (408, 413) else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def request_error(request: Any, exc: Exception) -> Any:  # a RequestError outside /link's own handling
        return error(getattr(exc, "status", 400), str(exc))

    app.add_exception_handler(RequestError, request_error)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict:
        return service_info(pipe, batcher, limits, paths=info_paths)

    @app.post("/link")
    async def link(request: Request) -> Any:  # a runtime annotation (no __future__ import here): FastAPI reads it
        try:
            mentions, single, params = parse_link_request(await request.body(), limits)  # BodyGuard: 413 / 408
            check_request(pipe, mentions, params)
        except RequestError as err:
            return error(err.status, str(err))
        except ClientDisconnect:  # the client went away mid-body: nobody to answer
            return error(400, "the client disconnected before the body ended")
        if not mentions:
            return []
        try:
            outputs = await batcher.link_async(mentions, params)
        except (ValueError, TypeError, KeyError) as err:  # the pipeline's message for a bad mention (e.g. an image)
            message = " ".join(str(err).split()) or type(err).__name__
            if message.startswith("image of entity"):  # strict_images and an unreadable KB image: the server's fault
                logger.error("mel serve: linking failed on a KB image: %s", message)
                return error(500, "internal error while linking (an image of the knowledge base is not usable); see "
                                  "the server log")
            if _is_input_image_error(err, message):
                return error(422, await _image_error(pipe, mentions, single, message))
            return error(422, message)
        except Exception as err:  # noqa: BLE001 - a server fault, reported without a traceback to the client
            logger.exception("mel serve: linking failed")
            return error(500, f"internal error while linking ({type(err).__name__}); see the server log")
        return outputs[0] if single else outputs

    return app


# ----------------------------------------------------------------------------------------------------------------------
# The server (`mel serve` in cli_serve parses the command line and calls run_server)
# ----------------------------------------------------------------------------------------------------------------------


def run_server(
    pipe: Any, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 32, max_wait_ms: float = 10.0,
    batching: bool = True, limits: ServeLimits | None = None, graceful_timeout: float = 30.0, log_level: str = "info",
    info_paths: bool = False,
) -> None:
    """Serve ``pipe`` with uvicorn until SIGINT / SIGTERM (then finish the requests in flight and return).
    ``limits`` carries the body limit and the header / body read timeouts; ``info_paths``: ``/info`` shows the
    model's server path."""
    try:
        import uvicorn
    except ImportError as err:  # pragma: no cover - the [serve] extra is missing
        raise ImportError('mel serve needs FastAPI and uvicorn: pip install "modeling-mel[serve]"') from err
    limits = limits or ServeLimits()

    def link(items: list[dict], params: dict) -> list:
        return pipe(items, batch_size=int(max_batch_size), **params)

    batcher = DynamicBatcher(link, max_batch_size, max_wait_ms, enabled=batching)
    app = create_app(pipe, batcher, limits, info_paths=info_paths)
    config = uvicorn.Config(app, host=host, port=int(port), log_level=log_level,
                            http=http_protocol(limits.header_timeout),  # closes connections stalled mid-header
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
    "model_name", "service_info", "BodyGuard", "http_protocol", "create_app", "run_server",
]
