"""Tasks: one module per task, registered by name (``task:`` in the config)."""

from lmtune.tasks import classification, language_model, masked_lm, preference, qa, sft, summarization  # noqa: F401  (registers the tasks)
from lmtune.tasks.base import TASKS, DecidingMetric, Task, deciding_metric, task_names_with

__all__ = ["TASKS", "DecidingMetric", "Task", "deciding_metric", "task_names_with"]
