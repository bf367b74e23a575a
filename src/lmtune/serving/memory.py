"""Keeping a long-running server's memory flat.

Batches of ever-new shapes (every request mix has its own batch size and length) leave glibc's heap
fragmented: freed blocks stay with the process, and RSS creeps up by the hour (+11% in a 10-minute soak of
`benchmarks/serve_load.py` without this). After batches, at most once per ``every_s``, the model thread
hands the free pages back to the OS with ``malloc_trim``; it costs a few milliseconds.
"""

from __future__ import annotations

import time

from lmtune.heap import trim_heap


class HeapTrimmer:
    def __init__(self, every_s: float = 1.0):
        self.every_s = every_s
        self._last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            trim_heap()
