"""The HTTP API of `lmtune serve`: a Starlette app over the runs a server holds.

The parts: `state` (the runs, their queues and compute lanes, loading), `endpoint` (the wrapper every route goes
through: readiness, errors as JSON, counting; waiting for a batch), `jobs` (the request side: checking and
tokenizing inputs before they join a queue), `handlers` (service endpoints, /v1/predict, /v1/explain) and
`openai` (the OpenAI-compatible completions and chat completions, streamed or whole).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from lmtune.serving import handlers, openai
from lmtune.serving.endpoint import endpoint, http_error, unexpected
from lmtune.serving.limits import Limits
from lmtune.serving.state import State, start_loading


def create_app(runs: list[str], limits: Limits | None = None, backend: str = "torch") -> Starlette:
    """The ASGI app serving ``runs`` (run directories, or NAME=RUN) on ``backend`` (torch; onnx or onnx-int8:
    the graphs `lmtune export RUN --format onnx` wrote, on onnxruntime); it loads them in the background at
    startup and answers /ready with 200 once every one is loaded."""
    state = State(list(runs), limits or Limits(), backend)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        start_loading(state)
        try:
            yield
        finally:
            if state.loading is not None:
                state.loading.cancel()
            for batcher in state.batchers.values():
                await batcher.stop()
            state.executor.shutdown(wait=False, cancel_futures=True)
            state.explain_executor.shutdown(wait=False, cancel_futures=True)

    routes = [
        Route("/", handlers.playground, methods=["GET"]),
        Route("/health", endpoint("health", ready=False)(handlers.health), methods=["GET"]),
        Route("/ready", endpoint("ready", ready=False)(handlers.ready), methods=["GET"]),
        Route("/info", endpoint("info")(handlers.info), methods=["GET"]),
        Route("/metrics", handlers.metrics, methods=["GET"]),
        Route("/v1/models", endpoint("models")(handlers.models), methods=["GET"]),
        Route("/v1/predict", endpoint("predict", kinds=("predict", "generate"))(handlers.predict), methods=["POST"]),
        Route("/v1/explain", endpoint("explain", kinds=("explain",))(handlers.explain), methods=["POST"]),
        Route("/v1/completions", endpoint("completions", kinds=("generate",))(openai.completions), methods=["POST"]),
        Route("/v1/chat/completions", endpoint("chat", kinds=("generate",))(openai.chat), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: unexpected})
    app.state.lmtune = state
    return app
