"""The HTTP API of `lmtune serve`: a Starlette app over the runs a server holds.

Every endpoint goes through `_endpoint`, which answers 503 until the runs are loaded (and while draining),
turns every refusal into an ``{"error": ...}`` body with its status, counts the request in /metrics and
keeps count of requests in flight for a graceful stop. No input reaches the model unchecked: bodies are
validated (`requests`), then tokenized and measured against the limits, before they join a batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lmtune.errors import LmtuneError
from lmtune.generation import GenerationSettings, Job, check_prompt, context_limit
from lmtune.serving import requests as bodies
from lmtune.serving.batcher import Batcher, Item
from lmtune.serving.errors import ApiError, invalid
from lmtune.serving.limits import Limits
from lmtune.serving.memory import HeapTrimmer
from lmtune.serving.metrics import Metrics
from lmtune.serving.served import ServedRun, explainable, load_runs, table_of
from lmtune.tasks import task_names_with

log = logging.getLogger("lmtune")


@dataclass
class State:
    specs: list[str]
    limits: Limits
    metrics: Metrics = field(default_factory=Metrics)
    runs: dict[str, ServedRun] = field(default_factory=dict)
    batchers: dict[tuple[str, str], Batcher] = field(default_factory=dict)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "lmtune-model",
                                                                                    initializer=_background))
    loaded: bool = False
    draining: bool = False
    failed: str | None = None
    in_flight: int = 0
    shared_bytes: int = 0
    loading: asyncio.Task | None = None
    """Bytes of weights stored once for several runs (e.g. the base model under several LoRA adapters)."""
    started: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining

    def run(self, name: str | None) -> ServedRun:
        if name is None:
            if len(self.runs) == 1:
                return next(iter(self.runs.values()))
            raise invalid(f"model: missing; this server has several runs: {', '.join(self.runs)}", "model")
        if name not in self.runs:
            raise ApiError(404, f"model: no run named {name!r}; this server has {', '.join(self.runs)}", "model")
        return self.runs[name]

    def batcher(self, served: ServedRun, kind: str) -> Batcher:
        return self.batchers[served.name, kind]


MODEL_NICENESS = 10


def _background() -> None:
    """The model thread (and the torch threads it starts) yield the CPU to the event loop: answering, refusing
    and streaming stay quick while a batch computes, and the model still gets every idle cycle."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MODEL_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: the same work at the same priority
        pass


def create_app(runs: list[str], limits: Limits | None = None) -> Starlette:
    """The ASGI app serving ``runs`` (run directories, or NAME=RUN); it loads them in the background at
    startup and answers /ready with 200 once every one is loaded."""
    state = State(list(runs), limits or Limits())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _start_loading(state)
        try:
            yield
        finally:
            if state.loading is not None:
                state.loading.cancel()
            for batcher in state.batchers.values():
                await batcher.stop()
            state.executor.shutdown(wait=False, cancel_futures=True)

    routes = [
        Route("/", _playground, methods=["GET"]),
        Route("/health", _endpoint("health", ready=False)(_health), methods=["GET"]),
        Route("/ready", _endpoint("ready", ready=False)(_ready), methods=["GET"]),
        Route("/info", _endpoint("info")(_info), methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/v1/models", _endpoint("models")(_models), methods=["GET"]),
        Route("/v1/predict", _endpoint("predict", kinds=("predict", "generate"))(_predict), methods=["POST"]),
        Route("/v1/explain", _endpoint("explain", kinds=("explain",))(_explain), methods=["POST"]),
        Route("/v1/completions", _endpoint("completions", kinds=("generate",))(_completions), methods=["POST"]),
        Route("/v1/chat/completions", _endpoint("chat", kinds=("generate",))(_chat), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _unexpected})
    app.state.lmtune = state
    return app


def _then(work: Callable[..., list], after: Callable[[], None]) -> Callable[..., list]:
    def run(*args: Any) -> list:
        try:
            return work(*args)
        finally:
            after()

    return run


def _start_loading(state: State) -> None:
    """Begin loading the runs (once): at startup, or at the first request where no lifespan ran (an app
    mounted inside another, whose lifespan Starlette does not run)."""
    if state.loading is None:
        state.loading = asyncio.get_running_loop().create_task(_load(state))


async def _load(state: State) -> None:
    loop = asyncio.get_running_loop()
    try:
        served, state.shared_bytes = await loop.run_in_executor(state.executor, load_runs, state.specs)
    except Exception as err:  # noqa: BLE001 - reported by /ready and by `lmtune serve`, which then exits
        state.failed = str(err) if isinstance(err, LmtuneError) else f"{type(err).__name__}: {err}"
        log.error("serve: %s", state.failed)
        return
    trim = HeapTrimmer()
    for run in served:
        state.runs[run.name] = run
        kinds = {"predict": lambda p, r=run: r.predict(p, state.limits.max_batch_size)}
        if run.generates:
            kinds["generate"] = run.generate
        if explainable(run):
            kinds["explain"] = run.explain
        for kind, work in kinds.items():
            batcher = Batcher(run.name, kind, _then(work, trim), state.limits, state.executor, state.metrics,
                              max_batch_size=1 if kind == "explain" else None, continuous=kind == "generate")
            batcher.start()
            state.batchers[run.name, kind] = batcher
    state.loaded = True
    state.metrics.ready.set(1)
    log.info("serve: ready (%s)", ", ".join(state.runs))


# ---- the request wrapper ---------------------------------------------------------------------------------

Handler = Callable[[Request, State], Awaitable[Response]]


def _endpoint(route: str, ready: bool = True,
              kinds: tuple[str, ...] = ()) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """``kinds``: the queues the route feeds; when every one of them is full the request is refused before its
    body is read, so that refusing costs an overloaded server next to nothing."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            state: State = request.app.state.lmtune
            _start_loading(state)
            started = time.monotonic()
            state.in_flight += 1
            state.metrics.in_flight.inc()
            streaming, response = False, Response(status_code=499)  # 499 until answered: cancelled (client gone)
            try:
                if ready and not state.ready:
                    raise _not_ready(state)
                if kinds:
                    _refuse_if_overloaded(state, kinds)
                response = await handler(request, state)
                streaming = isinstance(response, StreamingResponse)
            except ApiError as err:
                response = err.response()
            except ClientDisconnect:  # gone while sending its body: nobody reads an answer
                state.metrics.rejections.labels(reason="client_gone").inc()
                response = Response(status_code=499)
            except Exception as err:  # noqa: BLE001 - a bug must still answer JSON and leave the server up
                log.exception("serve: %s failed", route)
                response = ApiError(500, f"internal error: {type(err).__name__}: {err}").response()
            finally:
                if not streaming:
                    _done(state, route, response.status_code, started)
            state.metrics.requests.labels(route=route, status=str(response.status_code)).inc()
            if response.status_code >= 400:
                state.metrics.rejections.labels(reason=str(response.status_code)).inc()
            if streaming:  # counted in flight until the last event is sent (or the client leaves)
                response.body_iterator = _counted(response.body_iterator, state, route, response.status_code,
                                                  started)
            return response

        return endpoint

    return wrap


def _refuse_if_overloaded(state: State, kinds: tuple[str, ...]) -> None:
    queues = [b for (_, kind), b in state.batchers.items() if kind in kinds]
    if queues and all(b.full for b in queues):
        raise min(queues, key=lambda b: b.queued).refusal()


def _done(state: State, route: str, status: int, started: float) -> None:
    state.in_flight -= 1
    state.metrics.in_flight.dec()
    state.metrics.latency.labels(route=route, status=str(status)).observe(time.monotonic() - started)


async def _counted(events: AsyncIterator[str], state: State, route: str, status: int,
                   started: float) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield event
    finally:
        _done(state, route, status, started)


def _not_ready(state: State) -> ApiError:
    if state.failed:
        return ApiError(503, f"loading failed: {state.failed}")
    return ApiError(503, "draining: the server is stopping" if state.draining else "loading: the runs are not ready",
                    headers={"Retry-After": "1"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no endpoint {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    state: State = request.app.state.lmtune
    state.metrics.requests.labels(route="other", status=str(exc.status_code)).inc()
    return ApiError(exc.status_code, message.get(exc.status_code, exc.detail),
                    headers=dict(exc.headers or {})).response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("serve: unexpected error", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}").response()


# ---- service endpoints -----------------------------------------------------------------------------------

async def _health(request: Request, state: State) -> Response:
    return JSONResponse({"status": "ok"})


async def _ready(request: Request, state: State) -> Response:
    if not state.ready:
        raise _not_ready(state)
    return JSONResponse({"ready": True, "runs": list(state.runs)})


async def _info(request: Request, state: State) -> Response:
    import torch
    import transformers

    from lmtune.about import __version__

    return JSONResponse({
        "runs": [run.info() for run in state.runs.values()],
        "shared_weights_bytes": state.shared_bytes,
        "limits": state.limits.to_dict(),
        "versions": {"lmtune": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    })


async def _models(request: Request, state: State) -> Response:
    return JSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": int(state.started), "owned_by": "lmtune",
         "task": run.run.task.name} for name, run in state.runs.items()]})


async def _metrics(request: Request) -> Response:
    state: State = request.app.state.lmtune
    for batcher in state.batchers.values():
        state.metrics.queue_depth.labels(model=batcher.model, kind=batcher.kind).set(batcher.queued)
    return Response(state.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _playground(request: Request) -> Response:
    page = resources.files("lmtune.serving").joinpath("playground.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


# ---- waiting for a batch ---------------------------------------------------------------------------------

async def _result(request: Request, state: State, item: Item) -> Any:
    """The item's result; 504 past the request timeout; a client that leaves has its work dropped."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({item.future, gone}, timeout=state.limits.request_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if item.future in done:
        error = item.future.exception()
        if isinstance(error, LmtuneError):  # the work found the input wrong (e.g. an unknown explain target)
            raise invalid(str(error).removeprefix("--"))
        return item.future.result()
    item.cancelled.set()
    if gone in done:
        state.metrics.rejections.labels(reason="client_gone").inc()
        return Response(status_code=499)  # nobody reads it
    raise ApiError(504, f"the request took over {state.limits.request_timeout:g} s (--request-timeout)")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


INLINE_BYTES = 16384
"""Bodies up to this size are tokenized on the event loop (well under a millisecond: cheaper than a thread
handoff); larger ones in a thread, so that a 1 MB body never stalls the loop."""


async def _in_thread(request: Request, work: Callable[[], Any]) -> Any:
    """Tokenizing and checking: off the event loop for large bodies, never on the model's thread."""
    try:
        if int(request.headers.get("content-length") or INLINE_BYTES + 1) <= INLINE_BYTES:
            return work()
        return await asyncio.to_thread(work)
    except LmtuneError as err:  # the task's own validation of an input (DataError), or a prompt too long
        raise invalid(str(err), "inputs") from None


# ---- /v1/predict -----------------------------------------------------------------------------------------

async def _predict(request: Request, state: State) -> Response:
    raw = await bodies.read_json(request, state.limits)
    served = state.run(bodies.Body(raw, ("model", "inputs", "truncate")).string("model"))
    body = bodies.predict_request(raw, tuple(served.run.task.accepted_fields(served.run.config.data)), state.limits)
    if served.generates:  # language models answer /v1/predict as `lmtune predict` does: greedy continuations
        rows, jobs = await _in_thread(request, lambda: _prompt_jobs(served, body.inputs, body.truncate, state.limits))
        cancelled = threading.Event()
        for job in jobs:
            job.cancelled = cancelled
        item = state.batcher(served, "generate").submit(jobs, len(jobs), max(len(j.prompt_ids) for j in jobs),
                                                        cancelled)
        item.future.add_done_callback(lambda _: _count_generation(state, served, jobs))
        finished = await _result(request, state, item)
        if isinstance(finished, Response):
            return finished
        predictions = [{"generated": job.text} for job in finished]
    else:
        rows, examples = await _in_thread(request, lambda: _encode(served, body.inputs, body.truncate, state.limits))
        longest = max(len(example["input_ids"]) for example in examples)
        state.metrics.tokens.labels(model=served.name, kind="input").inc(sum(len(e["input_ids"]) for e in examples))
        item = state.batcher(served, "predict").submit((examples, len(rows)), len(rows), longest)
        predictions = await _result(request, state, item)
        if isinstance(predictions, Response):
            return predictions
    text = served.run.config.data.text
    return JSONResponse({"model": served.name, "predictions": [
        {"text": row.get(text), **prediction} for row, prediction in zip(rows, predictions, strict=True)]})


def _encode(served: ServedRun, inputs: list[dict[str, str]], truncate: bool, limits: Limits) -> tuple[list, list]:
    run = served.run
    rows = []
    for i, fields in enumerate(inputs):
        fields = _within_limit(run.tokenizer, fields, run.task.input_fields, limits.max_input_tokens, truncate, i)
        rows.append(run.task.input_row(fields, run.config.data))
    return rows, run.encode_inputs(table_of(rows))


def _within_limit(tokenizer: Any, fields: dict[str, str], order: tuple[str, ...], limit: int, truncate: bool,
                  index: int) -> dict[str, str]:
    """The input's fields, checked against ``limit`` tokens (special tokens included), or cut to it (the last
    field first: a QA context or a pair's second text before the question or first text)."""
    names = [name for name in order if name in fields]
    encoded = {name: tokenizer(fields[name], add_special_tokens=False, return_offsets_mapping=True)
               for name in names}
    specials = tokenizer.num_special_tokens_to_add(pair=len(names) > 1)
    total = specials + sum(len(e["input_ids"]) for e in encoded.values())
    if total <= limit:
        return fields
    if not truncate:
        raise invalid(f"inputs[{index}]: {total} tokens, over the limit of {limit} (--max-input-tokens); "
                      "send \"truncate\": true to cut it", "inputs")
    fields = dict(fields)
    for name in reversed(names):
        excess = total - limit
        if excess <= 0:
            break
        offsets = encoded[name]["offset_mapping"]
        keep = max(1, len(offsets) - excess) if name == names[0] else max(0, len(offsets) - excess)
        fields[name] = fields[name][: offsets[keep - 1][1]] if keep else ""
        total -= len(offsets) - keep
    return fields


def _prompt_jobs(served: ServedRun, inputs: list[dict[str, str]], truncate: bool,
                 limits: Limits) -> tuple[list, list[Job]]:
    run = served.run
    rows = [run.task.input_row(fields, run.config.data) for fields in inputs]
    prompts = run.task.prompts(table_of(rows), run.config.data)
    settings = GenerationSettings()
    jobs = [_job(served, prompt, settings, (), truncate, limits, i) for i, prompt in enumerate(prompts)]
    return rows, jobs


def _job(served: ServedRun, prompt: Any, settings: GenerationSettings, stop: tuple[str, ...], truncate: bool,
         limits: Limits, index: int) -> Job:
    run = served.run
    ids = run.task.prompt_ids(prompt, run.tokenizer)
    if len(ids) > limits.max_input_tokens:
        if not truncate:
            raise invalid(f"prompt {index}: {len(ids)} tokens, over the limit of {limits.max_input_tokens} "
                          "(--max-input-tokens); send \"truncate\": true to keep its end", "prompt")
        ids = ids[-limits.max_input_tokens:]
    check_prompt(run.model, len(ids))
    limit = context_limit(run.model)
    room = limit - len(ids) if limit else settings.max_new_tokens
    return Job(ids, GenerationSettings(max_new_tokens=min(settings.max_new_tokens, room),
                                       temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed),
               stop)


# ---- /v1/explain -----------------------------------------------------------------------------------------

async def _explain(request: Request, state: State) -> Response:
    from lmtune.explanation.attribution import METHODS

    raw = await bodies.read_json(request, state.limits)
    body = bodies.explain_request(raw, METHODS)
    served = state.run(body.model)
    if not explainable(served):
        raise invalid(f"model: {served.name!r} is a {served.run.task.name} run; explain supports "
                      f"{task_names_with('explains')} runs", "model")
    fields = {name: value for name, value in zip(served.run.task.input_fields, (body.text, body.text_pair),
                                                 strict=False) if value is not None}
    run = served.run

    def check() -> None:  # the fields this run takes (a pair only for pair runs), within the token limit
        run.task.input_row(fields, run.config.data)
        _within_limit(run.tokenizer, fields, run.task.input_fields, state.limits.max_input_tokens, False, 0)

    await _in_thread(request, check)
    item = state.batcher(served, "explain").submit(body, 1, 1)
    result = await _result(request, state, item)
    return result if isinstance(result, Response) else JSONResponse(result)


# ---- OpenAI-compatible generation ------------------------------------------------------------------------

async def _completions(request: Request, state: State) -> Response:
    body = bodies.completion_request(await bodies.read_json(request, state.limits), state.limits)
    return await _generate(request, state, body, chat=False)


async def _chat(request: Request, state: State) -> Response:
    body = bodies.chat_request(await bodies.read_json(request, state.limits), state.limits)
    return await _generate(request, state, body, chat=True)


async def _generate(request: Request, state: State, body: bodies.GenerationRequest, chat: bool) -> Response:
    served = state.run(body.model)
    endpoint = "/v1/chat/completions" if chat else "/v1/completions"
    if not served.generates:
        raise invalid(f"model: {served.name!r} is a {served.run.task.name} run; {endpoint} needs a "
                      f"{task_names_with('generates')} run (use /v1/predict)", "model")
    settings = GenerationSettings(max_new_tokens=body.max_tokens, temperature=body.temperature,
                                  top_p=body.top_p if body.temperature > 0 else None, seed=body.seed)
    jobs = await _in_thread(request, lambda: [_job(served, prompt, settings, body.stop, body.truncate, state.limits, i)
                                            for i, prompt in enumerate(body.prompts)])
    cancelled = threading.Event()
    for job in jobs:
        job.cancelled = cancelled
    reply = _Reply(served.name, chat, body.include_usage)
    if body.stream:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        for i, job in enumerate(jobs):
            job.on_text = lambda text, i=i: loop.call_soon_threadsafe(pieces.put_nowait, (i, text))
    item = state.batcher(served, "generate").submit(jobs, len(jobs), max(len(j.prompt_ids) for j in jobs),
                                                    cancelled)
    item.future.add_done_callback(lambda _: _count_generation(state, served, jobs))
    if body.stream:
        return StreamingResponse(_events(state, served, item, jobs, pieces, reply), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    finished = await _result(request, state, item)
    if isinstance(finished, Response):
        return finished
    return JSONResponse(reply.whole(jobs))


def _count_generation(state: State, served: ServedRun, jobs: list[Job]) -> None:
    state.metrics.tokens.labels(model=served.name, kind="generated").inc(sum(j.completion_tokens for j in jobs))
    stopped = sum(job.finish_reason == "cancelled" for job in jobs)
    if stopped:
        state.metrics.rejections.labels(reason="generation_stopped").inc(stopped)


async def _events(state: State, served: ServedRun, item: Item, jobs: list[Job], pieces: asyncio.Queue,
                  reply: _Reply) -> AsyncIterator[str]:
    """Server-sent events: the role (chat), each piece of text as it is decoded, the finish reasons, the usage
    when asked, then ``[DONE]``. A client that leaves cancels the generation (the ``finally``)."""
    deadline = asyncio.get_running_loop().time() + state.limits.request_timeout
    try:
        if reply.chat:
            yield _sse(reply.chunk(0, {"role": "assistant", "content": ""}, None))
        while not item.future.done() or not pieces.empty():
            getter = asyncio.ensure_future(pieces.get())
            left = deadline - asyncio.get_running_loop().time()
            done, _ = await asyncio.wait({getter, item.future}, timeout=max(left, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                for index, text in _coalesced(getter.result(), pieces):
                    yield _sse(reply.chunk(index, {"content": text} if reply.chat else text, None))
                continue
            getter.cancel()
            if not done:  # past the request timeout: stop generating and say so
                item.cancelled.set()
                yield _sse(ApiError(504, f"the request took over {state.limits.request_timeout:g} s "
                                         "(--request-timeout)").body())
                break
        if item.future.done() and item.future.exception() is not None:
            error = item.future.exception()
            message = str(error) if isinstance(error, LmtuneError) else f"internal error: {type(error).__name__}"
            yield _sse(ApiError(500, message).body())
        elif item.future.done():
            for i, job in enumerate(jobs):
                yield _sse(reply.chunk(i, {} if reply.chat else "", _reason(job)))
            if reply.include_usage:
                yield _sse(reply.usage_chunk(jobs))
        yield "data: [DONE]\n\n"
    finally:
        item.cancelled.set()  # no-op when finished; stops the decoding when the client went away


def _coalesced(first: tuple[int, str], pieces: asyncio.Queue) -> list[tuple[int, str]]:
    """``first`` and the pieces already waiting, merged per choice: under load one event carries several
    tokens instead of one event per token (fewer writes for the server and fewer parses for the client)."""
    merged: dict[int, str] = {first[0]: first[1]}
    while not pieces.empty():
        index, text = pieces.get_nowait()
        merged[index] = merged.get(index, "") + text
    return list(merged.items())


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _reason(job: Job) -> str:
    return "length" if job.finish_reason == "length" else "stop"


class _Reply:
    """OpenAI's response objects for completions and chat completions, whole or as stream chunks."""

    def __init__(self, model: str, chat: bool, include_usage: bool):
        self.model, self.chat, self.include_usage = model, chat, include_usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _head(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, jobs: list[Job]) -> dict[str, Any]:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": job.text},
                        "finish_reason": _reason(job), "logprobs": None} for i, job in enumerate(jobs)]
        else:
            choices = [{"index": i, "text": job.text, "finish_reason": _reason(job), "logprobs": None}
                       for i, job in enumerate(jobs)]
        return {**self._head(False), "choices": choices, "usage": _usage(jobs)}

    def chunk(self, index: int, content: Any, finish: str | None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": index, "delta": content, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": index, "text": content, "finish_reason": finish, "logprobs": None}
        return {**self._head(True), "choices": [choice]}

    def usage_chunk(self, jobs: list[Job]) -> dict[str, Any]:
        return {**self._head(True), "choices": [], "usage": _usage(jobs)}


def _usage(jobs: list[Job]) -> dict[str, int]:
    prompt = sum(len(job.prompt_ids) for job in jobs)
    completion = sum(job.completion_tokens for job in jobs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
