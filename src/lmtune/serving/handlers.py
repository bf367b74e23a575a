"""The routes' handlers: service endpoints (health, ready, info, models, metrics, the playground),
/v1/predict and /v1/explain."""

from __future__ import annotations

import threading
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from lmtune.serving import requests as bodies
from lmtune.serving.endpoint import batch_result, in_thread, not_ready
from lmtune.serving.errors import invalid
from lmtune.serving.jobs import check_explain_input, encode_inputs, prompt_jobs
from lmtune.serving.openai import count_generation
from lmtune.serving.state import State
from lmtune.tasks import task_names_with


async def health(request: Request, state: State) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request, state: State) -> Response:
    if not state.ready:
        raise not_ready(state)
    return JSONResponse({"ready": True, "runs": list(state.runs)})


async def info(request: Request, state: State) -> Response:
    import torch
    import transformers

    from lmtune.about import __version__

    return JSONResponse({
        "runs": [run.info() for run in state.runs.values()],
        "shared_weights_bytes": state.shared_bytes,
        "limits": state.limits.to_dict(),
        "versions": {"lmtune": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    })


async def models(request: Request, state: State) -> Response:
    return JSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": int(state.started), "owned_by": "lmtune",
         "task": run.loaded.task.name} for name, run in state.runs.items()]})


async def metrics(request: Request) -> Response:
    state: State = request.app.state.lmtune
    for batcher in state.batchers.values():
        state.metrics.queue_depth.labels(model=batcher.model, kind=batcher.kind).set(batcher.queued)
    return Response(state.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def playground(request: Request) -> Response:
    page = resources.files("lmtune.serving").joinpath("playground.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


# ---- /v1/predict -----------------------------------------------------------------------------------------

async def predict(request: Request, state: State) -> Response:
    raw = await bodies.read_json(request, state.limits)
    served = state.served(bodies.Body(raw, ("model", "inputs", "truncate")).string("model"))
    fields = tuple(served.loaded.task.accepted_fields(served.loaded.config.data))
    body = bodies.predict_request(raw, fields, state.limits)
    if served.generates:  # language models answer /v1/predict as `lmtune predict` does: greedy continuations
        rows, jobs = await in_thread(request, lambda: prompt_jobs(served, body.inputs, body.truncate, state.limits))
        cancelled = threading.Event()
        for job in jobs:
            job.cancelled = cancelled
        item = state.batcher(served, "generate").submit(jobs, len(jobs), max(len(j.prompt_ids) for j in jobs),
                                                        cancelled)
        item.future.add_done_callback(lambda _: count_generation(state, served, jobs))
        finished = await batch_result(request, state, item)
        if isinstance(finished, Response):
            return finished
        predictions = [{"generated": job.text} for job in finished]
    else:
        rows, examples = await in_thread(request,
                                         lambda: encode_inputs(served, body.inputs, body.truncate, state.limits))
        longest = max(len(example["input_ids"]) for example in examples)
        state.metrics.tokens.labels(model=served.name, kind="input").inc(sum(len(e["input_ids"]) for e in examples))
        item = state.batcher(served, "predict").submit((served, examples, len(rows)), len(rows), longest)
        predictions = await batch_result(request, state, item)
        if isinstance(predictions, Response):
            return predictions
    text = served.loaded.config.data.text
    return JSONResponse({"model": served.name, "predictions": [
        {"text": row.get(text), **prediction} for row, prediction in zip(rows, predictions, strict=True)]})


# ---- /v1/explain -----------------------------------------------------------------------------------------

async def explain(request: Request, state: State) -> Response:
    from lmtune.explanation.attribution import METHODS

    raw = await bodies.read_json(request, state.limits)
    body = bodies.explain_request(raw, METHODS)
    served = state.served(body.model)
    if not served.explains:
        raise invalid(f"model: {served.name!r} is a {served.loaded.task.name} run; explain supports "
                      f"{task_names_with('explains')} runs", "model")
    fields = {name: value for name, value in zip(served.loaded.task.input_fields, (body.text, body.text_pair),
                                                 strict=False) if value is not None}
    await in_thread(request, lambda: check_explain_input(served, fields, state.limits))
    item = state.batcher(served, "explain").submit(body, 1, 1)
    result = await batch_result(request, state, item)
    return result if isinstance(result, Response) else JSONResponse(result)
