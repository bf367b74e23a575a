"""SIGTERM during training: finish the current optimizer step, write a checkpoint, and stop.

The command line installs the handler; the loop asks `stop_requested` after each optimizer step (all
processes agree on the step, so a torchrun job stops as one). A second SIGTERM exits at once: the
checkpoints already on disk are whole, so the run still resumes from the newest of them.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger("lmtune")

_received: list[int] = []


def install() -> None:
    """Handle SIGTERM as a request to stop at the next step (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handle)


def _handle(signum: int, frame: FrameType | None) -> None:
    if _received:
        raise SystemExit(128 + signum)
    _received.append(signum)
    log.info("received %s: stopping after this step with a checkpoint (send it again to exit at once)",
             signal.Signals(signum).name)


def stop_requested(accelerator: Any, step: int, every: int) -> int | None:
    """The signal number if any process was asked to stop (the same answer on every process), else None.

    With several processes the answer needs an all-reduce, so it is asked only every ``every`` steps (the
    log interval): a stop may come that many steps later, but the training step pays no extra collective.
    """
    import torch

    if accelerator.num_processes == 1:
        return _received[0] if _received else None
    if step % every:
        return None
    flag = torch.tensor([1.0 if _received else 0.0], device=accelerator.device)
    return signal.SIGTERM if accelerator.reduce(flag, reduction="sum").item() > 0 else None
