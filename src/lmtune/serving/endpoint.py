"""The wrapper every route goes through, and waiting for a request's batch.

`endpoint` answers 503 until the runs are loaded (and while draining), turns every refusal into an
``{"error": ...}`` body with its status, counts the request in /metrics and keeps count of requests in flight
for a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from lmtune.errors import LmtuneError
from lmtune.serving.batcher import Item
from lmtune.serving.errors import ApiError, invalid
from lmtune.serving.state import State, start_loading

log = logging.getLogger("lmtune")

Handler = Callable[[Request, State], Awaitable[Response]]


def endpoint(route: str, ready: bool = True,
              kinds: tuple[str, ...] = ()) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """``kinds``: the queues the route feeds; when every one of them is full the request is refused before its
    body is read, so that refusing costs an overloaded server next to nothing."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            state: State = request.app.state.lmtune
            start_loading(state)
            started = time.monotonic()
            state.in_flight += 1
            state.metrics.in_flight.inc()
            streaming, response = False, Response(status_code=499)  # 499 until answered: cancelled (client gone)
            try:
                if ready and not state.ready:
                    raise not_ready(state)
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


def not_ready(state: State) -> ApiError:
    if state.failed:
        return ApiError(503, f"loading failed: {state.failed}")
    return ApiError(503, "draining: the server is stopping" if state.draining else "loading: the runs are not ready",
                    headers={"Retry-After": "1"})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no endpoint {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    state: State = request.app.state.lmtune
    state.metrics.requests.labels(route="other", status=str(exc.status_code)).inc()
    return ApiError(exc.status_code, message.get(exc.status_code, exc.detail),
                    headers=dict(exc.headers or {})).response()


async def unexpected(request: Request, exc: Exception) -> Response:
    log.exception("serve: unexpected error", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}").response()


# ---- waiting for a batch ---------------------------------------------------------------------------------

async def batch_result(request: Request, state: State, item: Item) -> Any:
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


async def in_thread(request: Request, work: Callable[[], Any]) -> Any:
    """Tokenizing and checking: off the event loop for large bodies, never on the model's thread."""
    try:
        if int(request.headers.get("content-length") or INLINE_BYTES + 1) <= INLINE_BYTES:
            return work()
        return await asyncio.to_thread(work)
    except LmtuneError as err:  # the task's own validation of an input (DataError), or a prompt too long
        raise invalid(str(err), "inputs") from None
