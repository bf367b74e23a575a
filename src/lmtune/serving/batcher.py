"""Micro-batching: requests wait in a bounded queue and run together on the model.

A request is validated and tokenized before it joins the queue, so a batch holds only work that can run.
When a request arrives to an idle model it runs at once; when others are already waiting (the model is
busy, or requests arrive together) a batch waits up to ``max_wait_ms`` to fill, up to ``max_batch_size``
inputs and ``max_batch_tokens`` padded tokens. The model runs in one worker thread shared by every run of
the server, so the event loop keeps answering (health, 429s, streams) while a batch computes.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from lmtune.serving.errors import ApiError
from lmtune.serving.limits import Limits
from lmtune.serving.metrics import Metrics


@dataclass(eq=False)
class Item:
    """One request's work in a queue."""

    payload: Any
    size: int
    """Inputs (or prompts) in it."""
    tokens: int
    """Its longest input, in tokens (for the padded-token budget of a batch)."""
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)


class Feed:
    """What a continuous batch (generation) gets besides its first payloads: ``admit(room)`` takes queued
    payloads of at most ``room`` inputs in all, between decoding steps; ``done(payload, result)`` answers a
    request as soon as its work ends. Both are called from the worker thread."""

    def __init__(self, admit: Callable[[int], list[Any]], done: Callable[[Any, Any], None], room: int):
        self.admit, self.done, self.room = admit, done, room


class Batcher:
    """The queue of one run and one kind of work (predict, generate, explain), and the task that drains it.

    ``work`` is called in its compute lane with a batch's payloads and returns one result per payload (an
    exception instance for a payload that failed: it fails only its own request). With ``continuous`` it
    is called with the payloads and a `Feed`, keeps taking queued work while it runs, and answers each
    request through the feed as it ends.
    """

    def __init__(self, model: str, kind: str, work: Callable[..., list[Any]], limits: Limits,
                 executor: Executor, metrics: Metrics, max_batch_size: int | None = None, continuous: bool = False):
        self.model, self.kind, self.work, self.continuous = model, kind, work, continuous
        self._lock = threading.Lock()
        """Guards the queue: the event loop adds to it, and a continuous batch takes from it in the worker."""
        self._running: dict[int, Item] = {}
        self.limits, self.executor, self.metrics = limits, executor, metrics
        self.max_batch_size = max_batch_size or limits.max_batch_size
        self._queue: deque[Item] = deque()
        self._queued = 0
        """Inputs in ``_queue``."""
        self._arrived = asyncio.Event()
        self._seconds_per_input = 0.05
        """Running estimate of compute time per input, for Retry-After."""
        self._task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def full(self) -> bool:
        return self.queued >= self.limits.max_queue

    def refusal(self) -> ApiError:
        """429, with the time the queue needs to drain as Retry-After."""
        wait = max(1, math.ceil(self.queued * self._seconds_per_input))
        self.metrics.rejections.labels(reason="queue_full").inc()
        return ApiError(429, f"the queue of {self.model!r} is full ({self.queued} inputs waiting); retry in {wait} s",
                        headers={"Retry-After": str(wait)})

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain(), name=f"batcher {self.model}/{self.kind}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def submit(self, payload: Any, size: int, tokens: int, cancelled: threading.Event | None = None) -> Item:
        """Queue a request's work; its ``future`` gets the result. 429 when the queue is full."""
        if self._queue and self.queued + size > self.limits.max_queue:
            raise self.refusal()
        item = Item(payload, size, tokens, asyncio.get_running_loop().create_future(),
                    cancelled or threading.Event())
        with self._lock:
            self._queue.append(item)
            self._queued += size
        self._update_depth()
        self._arrived.set()
        return item

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            busy = len(self._queue) > 1  # others already waiting: worth a few ms to fill the batch
            batch = self._take([])
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while busy and self._room(batch) and not self._queue and (left := deadline - loop.time()) > 0:
                self._arrived.clear()  # (a queued item left over did not fit: the batch is full)
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
                batch = self._take(batch)
            self._update_depth()
            await self._run(loop, batch)

    def _room(self, batch: list[Item]) -> bool:
        return sum(item.size for item in batch) < self.max_batch_size

    def _fits(self, batch: list[Item], item: Item) -> bool:
        size = sum(i.size for i in batch) + item.size
        longest = max([i.tokens for i in batch] + [item.tokens])
        return size <= self.max_batch_size and size * longest <= self.limits.max_batch_tokens

    def _take(self, batch: list[Item]) -> list[Item]:
        """Move queued items into ``batch`` while they fit (the first one always does)."""
        with self._lock:
            while self._queue and (not batch or self._fits(batch, self._queue[0])):
                batch.append(self._queue.popleft())
                self._queued -= batch[-1].size
        return batch

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[Item]) -> None:
        live = [item for item in batch if not item.cancelled.is_set() and not item.future.done()]
        if len(live) < len(batch):
            self.metrics.rejections.labels(reason="client_gone").inc(len(batch) - len(live))
        if not live:
            return
        size = sum(item.size for item in live)
        self.metrics.batch_size.labels(model=self.model, kind=self.kind).observe(size)
        started = time.monotonic()
        try:
            if self.continuous:
                for item in live:
                    self._running[id(item.payload)] = item
                feed = Feed(self._admit, lambda payload, result: self._answer(loop, payload, result),
                            self.max_batch_size)
                results = await loop.run_in_executor(self.executor, self.work, [item.payload for item in live], feed)
            else:
                results = await loop.run_in_executor(self.executor, self.work, [item.payload for item in live])
        except Exception as err:  # noqa: BLE001 - `run` isolates payloads; this is a failure of the whole batch
            results = [err] * len(live)
            for item in list(self._running.values()):  # admitted while it ran: they fail with it
                self._running.pop(id(item.payload), None)
                if not item.future.done():
                    item.future.set_exception(err)
        self._update_depth()
        elapsed = time.monotonic() - started
        self._seconds_per_input = 0.8 * self._seconds_per_input + 0.2 * elapsed / size
        for item, result in zip(live, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _admit(self, room: int) -> list[Any]:
        """Queued work for a running continuous batch (worker thread): whole requests, in order, that fit."""
        taken = []
        with self._lock:
            while self._queue and self._queue[0].size <= room:
                item = self._queue.popleft()
                self._queued -= item.size
                if item.cancelled.is_set():
                    continue
                room -= item.size
                self._running[id(item.payload)] = item
                taken.append(item.payload)
        if taken:
            self.metrics.batch_size.labels(model=self.model, kind=self.kind).observe(len(taken))
        return taken

    def _answer(self, loop: asyncio.AbstractEventLoop, payload: Any, result: Any) -> None:
        item = self._running.pop(id(payload), None)
        if item is not None:
            loop.call_soon_threadsafe(_settle, item.future, result)

    def _update_depth(self) -> None:
        self.metrics.queue_depth.labels(model=self.model, kind=self.kind).set(self.queued)


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
