"""The OpenAI-compatible generation endpoints: /v1/completions and /v1/chat/completions, whole or streamed as
server-sent events."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from lmtune.errors import LmtuneError
from lmtune.generation import GenerationSettings, Job
from lmtune.serving import requests as bodies
from lmtune.serving.batcher import Item
from lmtune.serving.endpoint import batch_result, in_thread
from lmtune.serving.errors import ApiError, invalid
from lmtune.serving.jobs import generation_job
from lmtune.serving.served import ServedRun
from lmtune.serving.state import State
from lmtune.tasks import task_names_with


async def completions(request: Request, state: State) -> Response:
    body = bodies.completion_request(await bodies.read_json(request, state.limits), state.limits)
    return await _generate(request, state, body, chat=False)


async def chat(request: Request, state: State) -> Response:
    body = bodies.chat_request(await bodies.read_json(request, state.limits), state.limits)
    return await _generate(request, state, body, chat=True)


async def _generate(request: Request, state: State, body: bodies.GenerationRequest, chat: bool) -> Response:
    served = state.served(body.model)
    endpoint = "/v1/chat/completions" if chat else "/v1/completions"
    if not served.generates:
        raise invalid(f"model: {served.name!r} is a {served.loaded.task.name} run; {endpoint} needs a "
                      f"{task_names_with('generates')} run (use /v1/predict)", "model")
    settings = GenerationSettings(max_new_tokens=body.max_tokens, temperature=body.temperature,
                                  top_p=body.top_p if body.temperature > 0 else None, seed=body.seed)
    jobs = await in_thread(request, lambda: [
        generation_job(served, prompt, settings, body.stop, body.truncate, state.limits, i)
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
    item.future.add_done_callback(lambda _: count_generation(state, served, jobs))
    if body.stream:
        return StreamingResponse(_events(state, served, item, jobs, pieces, reply), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    finished = await batch_result(request, state, item)
    if isinstance(finished, Response):
        return finished
    return JSONResponse(reply.whole(jobs))


def count_generation(state: State, served: ServedRun, jobs: list[Job]) -> None:
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
