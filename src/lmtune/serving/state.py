"""What a server holds while it runs: its runs, their queues and the threads that compute.

Two lanes compute: the model thread runs every run's predictions and generations a batch at a time, and the
explain lane runs explanations (seconds each, on a private copy of the model, see `ServedRun`), so that an
explanation never holds up the predictions queued behind it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lmtune.errors import LmtuneError
from lmtune.serving.batcher import Batcher
from lmtune.serving.errors import ApiError, invalid
from lmtune.serving.limits import Limits
from lmtune.serving.memory import HeapTrimmer
from lmtune.serving.metrics import Metrics
from lmtune.serving.served import ServedRun, load_runs, predict

log = logging.getLogger("lmtune")


@dataclass
class State:
    specs: list[str]
    limits: Limits
    backend: str = "torch"
    """What computes every run: torch, or onnxruntime on the runs' exported graphs (onnx, onnx-int8)."""
    metrics: Metrics = field(default_factory=Metrics)
    runs: dict[str, ServedRun] = field(default_factory=dict)
    batchers: dict[tuple[str, str], Batcher] = field(default_factory=dict)
    executor: ThreadPoolExecutor = field(default_factory=lambda: _lane("lmtune-model", MODEL_NICENESS))
    """The model thread: every run's predictions and generations, a batch at a time."""
    explain_executor: ThreadPoolExecutor = field(default_factory=lambda: _lane("lmtune-explain", EXPLAIN_NICENESS))
    """The explain lane: explanations, one at a time, on each run's own copy of its model."""
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

    def served(self, name: str | None) -> ServedRun:
        if name is None:
            if len(self.runs) == 1:
                return next(iter(self.runs.values()))
            raise invalid(f"model: missing; this server has several runs: {', '.join(self.runs)}", "model")
        if name not in self.runs:
            raise ApiError(404, f"model: no run named {name!r}; this server has {', '.join(self.runs)}", "model")
        return self.runs[name]

    def batcher(self, served: ServedRun, kind: str) -> Batcher:
        return self.batchers[served.queue(kind), kind]


MODEL_NICENESS = 10
EXPLAIN_NICENESS = 15
"""Explanations (seconds each) yield the CPU to predictions and generations, which yield it to the event loop."""


def _lane(name: str, niceness: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, name, initializer=_background, initargs=(niceness,))


def _background(niceness: int) -> None:
    """A compute lane (and the torch threads it starts) yields the CPU to the event loop: answering, refusing
    and streaming stay quick while a batch computes, and the lane still gets every idle cycle."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):  # not Linux, or not permitted: the same work at the same priority
        pass


def _predict_work(run: ServedRun, batch_size: int) -> Callable[[list], list]:
    """A prediction queue's work: the run's model, or its adapter group's router (one base, mixed batches)."""
    if run.group is not None:
        group = run.group
        return lambda payloads: predict(payloads, group.router, batch_size, group.bf16_copies)
    return lambda payloads: predict(payloads, run.loaded.model, batch_size, run.loaded.bf16_copies)


def _then(work: Callable[..., list], after: Callable[[], None]) -> Callable[..., list]:
    def run(*args: Any) -> list:
        try:
            return work(*args)
        finally:
            after()

    return run


def start_loading(state: State) -> None:
    """Begin loading the runs (once): at startup, or at the first request where no lifespan ran (an app
    mounted inside another, whose lifespan Starlette does not run)."""
    if state.loading is None:
        state.loading = asyncio.get_running_loop().create_task(_load(state))


async def _load(state: State) -> None:
    loop = asyncio.get_running_loop()
    try:
        served, state.shared_bytes = await loop.run_in_executor(state.executor, load_runs, state.specs,
                                                                    state.backend)
    except Exception as err:  # noqa: BLE001 - reported by /ready and by `lmtune serve`, which then exits
        state.failed = str(err) if isinstance(err, LmtuneError) else f"{type(err).__name__}: {err}"
        log.error("serve: %s", state.failed)
        return
    trim = HeapTrimmer()
    for run in served:
        state.runs[run.name] = run
        run.model_lane = state.executor
        kinds = {"predict": _predict_work(run, state.limits.max_batch_size)}
        if run.generates:
            kinds["generate"] = run.generate
        if run.explains:
            kinds["explain"] = run.explain
        for kind, work in kinds.items():
            if (run.queue(kind), kind) in state.batchers:  # an adapter group's one prediction queue
                continue
            lane = state.explain_executor if kind == "explain" else state.executor
            batcher = Batcher(run.queue(kind), kind, _then(work, trim), state.limits, lane, state.metrics,
                              max_batch_size=1 if kind == "explain" else None, continuous=kind == "generate")
            batcher.start()
            state.batchers[run.queue(kind), kind] = batcher
    state.loaded = True
    state.metrics.ready.set(1)
    log.info("serve: ready (%s)", ", ".join(state.runs))
