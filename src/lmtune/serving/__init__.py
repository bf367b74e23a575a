"""`lmtune serve`: every run behind one HTTP API (predict, explain, OpenAI-compatible generation), micro-batched,
with limits, metrics, a graceful stop and a playground page."""

from lmtune.serving.app import create_app
from lmtune.serving.limits import Limits
from lmtune.serving.server import run_server

__all__ = ["Limits", "create_app", "run_server"]
