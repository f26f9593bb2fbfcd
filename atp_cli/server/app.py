"""`atp serve`: the OpenAI chat-completions API over a pool of Pipelines (FastAPI + uvicorn, SSE streaming).

Requests are admitted up to workers + queue; beyond that the answer is 429 with Retry-After. An admitted request
waits for a free worker (preferring one whose caches hold its conversation), runs in that worker's thread, and
streams its text back through an asyncio queue. A client that goes away sets a flag the worker checks between
tokens: generation stops and the turn is rolled back. Errors are OpenAI error objects with 4xx codes for what the
request got wrong (checked before any model work where possible) and 500 for the rest; nothing is written to disk.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from atp_cli.errors import AtpError, ContextLengthError, InputError
from atp_cli.server.images import PayloadTooLarge
from atp_cli.server.jobs import Job, ServeDefaults, read_job
from atp_cli.server.schema import (AssistantMessage, AtpReport, ChatCompletion, ChatCompletionChunk, ChatRequest,
                                   Choice, ChunkChoice, Delta, ErrorBody, ErrorResponse, ModelCard, ModelList, Usage)
from atp_cli.server.worker import Outcome, Worker

log = logging.getLogger(__name__)
POLL_S = 0.25  # how often a non-streaming request checks whether its client is still there


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.code, self.headers = status, kind, code, headers or {}


def error_body(e: "ApiError") -> ErrorResponse:
    return ErrorResponse(error=ErrorBody(message=str(e), type=e.kind, code=e.code))


def error_response(e: Exception) -> JSONResponse:
    """The OpenAI error object (and status, headers) of any failure."""
    err = api_error(e)
    return JSONResponse(error_body(err).model_dump(), status_code=err.status, headers=err.headers)


def api_error(e: Exception) -> ApiError:
    """The HTTP error a failure maps to: what the request got wrong is a 4xx, anything else a 500."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, PayloadTooLarge):
        return ApiError(413, str(e), code="payload_too_large")
    if isinstance(e, ContextLengthError):
        return ApiError(400, str(e), code="context_length_exceeded")
    if isinstance(e, InputError):
        return ApiError(400, str(e))
    if isinstance(e, ValidationError):
        return ApiError(400, _validation_message(e))
    log.exception("request failed", exc_info=e)
    kind = type(e).__name__ if isinstance(e, AtpError) else "internal error"
    return ApiError(500, f"the server failed to answer ({kind}): {e}", kind="server_error")


def _validation_message(e: ValidationError) -> str:
    """The most specific of pydantic's errors, located in the request's own terms: of `str | list[part]` the
    list branch's complaint about a part, not the str branch's 'input should be a valid string'."""
    def path(err: dict) -> list[str]:
        return [str(x) for x in err.get("loc", ()) if not (isinstance(x, str) and ("[" in x or x == "str"))]

    best = max(e.errors(), key=lambda err: len(err.get("loc", ())))
    where = ".".join(path(best))
    return f"{where + ': ' if where else ''}{best.get('msg', 'invalid request')}"


class WorkerPool:
    """Workers handed to admitted requests in turn; lives on the event loop's thread."""

    def __init__(self, workers: list[Worker], queue_size: int) -> None:
        self.workers = workers
        self.free = list(workers)
        self.waiting: deque[tuple[asyncio.Future, Job]] = deque()
        self.capacity = len(workers) + queue_size
        self.admitted = 0
        self.seconds = deque(maxlen=32)  # recent request durations, for Retry-After

    def admit(self) -> None:
        if self.admitted >= self.capacity:
            typical = sorted(self.seconds)[len(self.seconds) // 2] if self.seconds else 1.0
            wait = max(1, math.ceil(typical * (self.admitted - len(self.workers) + 1) / len(self.workers)))
            raise ApiError(429, f"the server is busy ({self.admitted} requests admitted); retry later",
                           kind="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
        self.admitted += 1

    def leave(self, seconds: float) -> None:
        self.admitted -= 1
        self.seconds.append(seconds)

    async def acquire(self, job: Job) -> Worker:
        if self.free:
            worker = next((w for w in self.free if w.holds(job)), self.free[0])
            self.free.remove(worker)
            return worker
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((future, job))
        return await future

    def release(self, worker: Worker) -> None:
        while self.waiting:
            future, job = self.waiting.popleft()
            if not future.done():  # a waiter whose client left has a cancelled future
                future.set_result(worker)
                return
        self.free.append(worker)


@dataclass
class Served:
    """What the app serves: its model id, workers and defaults."""

    model_id: str
    workers: list[Worker]
    defaults: ServeDefaults
    queue_size: int = 8
    max_body_bytes: int = 32 * 2**20


def create_app(served: Served) -> FastAPI:
    app = FastAPI(title="atp", summary="OpenAI-compatible chat completions with visual-token pruning")
    pool = WorkerPool(served.workers, served.queue_size)
    executor = ThreadPoolExecutor(max_workers=len(served.workers), thread_name_prefix="atp-worker")
    created = int(time.time())
    app.state.pool = pool

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(ApiError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "workers": len(pool.workers), "busy": len(pool.workers) - len(pool.free),
                "queued": len(pool.waiting), "admitted": pool.admitted, "capacity": pool.capacity,
                "answered": sum(w.answered for w in pool.workers), "cancelled": sum(w.cancelled for w in pool.workers)}

    @app.get("/v1/models")
    async def models() -> dict:
        return ModelList(data=[ModelCard(id=served.model_id, created=created)]).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            req = ChatRequest.model_validate_json(await _body(request, served.max_body_bytes))
            if req.model != served.model_id:
                raise ApiError(404, f"model {req.model!r} is not served here; this server serves "
                                    f"{served.model_id!r} (GET /v1/models)", code="model_not_found")
            job = await asyncio.get_running_loop().run_in_executor(None, read_job, req, served.defaults)
            pool.admit()
        except Exception as e:  # noqa: BLE001 - every failure becomes an OpenAI error object
            return error_response(e)
        run = _Run(pool, executor, job, served.model_id)
        try:
            first = await run.start()
        except Exception as e:  # noqa: BLE001
            run.cancel()
            return error_response(e)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventSourceResponse(run.events(first, include_usage), sep="\n", ping=15)
        return await run.complete(first, request)

    return app


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    return bytes(data)


class _Run:
    """One admitted request: a worker thread producing (kind, value) events, an async consumer."""

    def __init__(self, pool: WorkerPool, executor: ThreadPoolExecutor, job: Job, model_id: str) -> None:
        self.pool, self.executor, self.job, self.model_id = pool, executor, job, model_id
        self.events_q: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.t0 = time.perf_counter()
        self.worker: Worker | None = None
        self.left = False

    async def start(self) -> tuple[str, object]:
        """Wait for a worker, start the job, and return its first event (text, the outcome, or an exception)."""
        loop = asyncio.get_running_loop()
        try:
            self.worker = await self.pool.acquire(self.job)
        except BaseException:
            self._leave()
            raise
        loop.run_in_executor(self.executor, self._produce, loop, self.worker)
        kind, value = await self.events_q.get()
        if kind == "error":
            raise value
        return kind, value

    def _produce(self, loop: asyncio.AbstractEventLoop, worker: Worker) -> None:
        put = lambda kind, value: loop.call_soon_threadsafe(self.events_q.put_nowait, (kind, value))  # noqa: E731
        try:
            outcome = worker.run(self.job, self.cancelled, lambda text: put("text", text))
            put("done", outcome)
        except BaseException as e:  # noqa: BLE001 - handed to the request's coroutine
            put("error", e)
        finally:
            loop.call_soon_threadsafe(self._finish, worker)

    def _finish(self, worker: Worker) -> None:
        self.pool.release(worker)
        self._leave()

    def _leave(self) -> None:
        if not self.left:
            self.left = True
            self.pool.leave(time.perf_counter() - self.t0)

    def cancel(self) -> None:
        self.cancelled.set()

    async def complete(self, first: tuple[str, object], request: Request) -> JSONResponse:
        """The whole answer as one chat.completion (generation stops if the client disconnects meanwhile)."""
        kind, value = first
        while kind == "text":
            try:
                kind, value = await asyncio.wait_for(self.events_q.get(), POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.cancel()
                continue
        if kind == "error":
            return error_response(value)
        out: Outcome = value
        body = ChatCompletion(id=self.id, created=self.created, model=self.model_id,
                              choices=[Choice(message=AssistantMessage(content=out.text),
                                              finish_reason=out.finish_reason)],
                              usage=_usage(out), atp=_report(out))
        return JSONResponse(body.model_dump())

    async def events(self, first: tuple[str, object], include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format, ending with [DONE]."""
        try:
            yield self._chunk(Delta(role="assistant", content=""))
            kind, value = first
            while kind == "text":
                yield self._chunk(Delta(content=value))
                kind, value = await self.events_q.get()
            if kind == "error":  # after the first chunk the status is sent: the error goes in the stream
                yield error_body(api_error(value)).model_dump_json()
            else:
                out: Outcome = value
                yield self._chunk(Delta(), out.finish_reason, report=_report(out))
                if include_usage:
                    yield ChatCompletionChunk(id=self.id, created=self.created, model=self.model_id, choices=[],
                                              usage=_usage(out)).model_dump_json(exclude_none=True)
            yield "[DONE]"
        finally:
            self.cancel()  # the client went away (or the stream ended): a worker still generating stops

    def _chunk(self, delta: Delta, finish: str | None = None, report: AtpReport | None = None) -> str:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model_id,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish)], atp=report)
        return chunk.model_dump_json(exclude_none=True)


def _usage(out: Outcome) -> Usage:
    return Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                 total_tokens=out.prompt_tokens + out.completion_tokens)


def _report(out: Outcome) -> AtpReport:
    return AtpReport(strategy=out.pruning.strategy, budget=out.pruning.budget, visual_tokens_in=out.visual_tokens_in,
                     visual_tokens_avg=round(out.visual_tokens_avg, 2), encode_seconds=round(out.encode_seconds, 4),
                     prefill_seconds=round(out.prefill_seconds, 4),
                     first_token_seconds=round(out.first_token_seconds, 4), kv_bytes=out.kv_bytes,
                     prefill_reused=out.prefill_reused)
