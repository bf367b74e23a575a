"""Every registered task satisfies the task contract, and no consumer probes a task for hooks."""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import pytest

from lmtune.tasks import TASKS
from lmtune.tasks.base import Capabilities, Metric, Task

SRC = Path(__file__).resolve().parents[2] / "src" / "lmtune"
NAMES = TASKS.names()


@pytest.mark.parametrize("name", NAMES)
def test_every_task_implements_the_whole_contract(name):
    cls = TASKS.get(name)
    assert issubclass(cls, Task) and cls.name == name
    assert not inspect.isabstract(cls), f"{name} leaves abstract: {sorted(cls.__abstractmethods__)}"
    task = cls()  # constructible with defaults, as `from_state` and `make_task` need
    assert isinstance(task.capabilities, Capabilities)
    assert task.state() == cls.from_state(task.state(), None).state()  # the saved state round-trips


@pytest.mark.parametrize("name", NAMES)
def test_every_task_declares_its_metrics(name):
    cls = TASKS.get(name)
    assert cls.metrics[0].name == "loss" and not cls.metrics[0].greater_is_better
    assert len(set(cls.metric_names)) == len(cls.metrics)
    assert cls.primary_metric in cls.metric_names
    for metric in cls.metrics:
        assert isinstance(metric, Metric) and metric.scale in ("fraction", "percent", "nats", "perplexity", "log_prob")
        assert 0 < metric.min_delta < (1 if metric.scale == "fraction" else math.inf)
        assert metric.unit == (100.0 if metric.scale == "percent" else 1.0)


def test_capabilities_that_need_hooks_have_them():
    for name in NAMES:
        cls = TASKS.get(name)
        if cls.capabilities.generates:
            assert cls.prompts is not Task.prompts and cls.prompt_ids is not Task.prompt_ids, name
        if cls.capabilities.remasked:
            assert cls.training_batches is not Task.training_batches, name
        if cls.capabilities.packed:
            assert cls.training_examples is not Task.training_examples, name
        if cls.capabilities.class_labels:
            assert cls.gold is not Task.gold and cls.label_names is not Task.label_names, name
        if cls.capabilities.pairs:  # two sequences per example: batched by the longer, collated as two rows
            assert cls.collate is not Task.collate and cls.example_length is not Task.example_length, name
        assert cls.capabilities.reference == (cls.attach_reference is not Task.attach_reference), name
        # explains if and only if it says what is explained
        assert cls.capabilities.explains == (cls.explanation_targets is not Task.explanation_targets), name


def test_task_knowledge_stays_in_tasks():
    """Outside tasks/, no code names a task to branch on it or lists tasks in a message: it reads declarations."""
    pattern = re.compile(r"""(==|!=|\bin)\s*\(?["'](%s)["']|["'](%s)["']\s*(==|!=)|(supports|needs) (a |an )?(%s)\b"""
                         % (("|".join(NAMES),) * 3))
    offenders = [f"{path.relative_to(SRC)}:{n}: {line.strip()}" for path in SRC.rglob("*.py")
                 if "tasks" not in path.relative_to(SRC).parts
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_messages_list_the_tasks_that_declare_a_capability():
    from lmtune.tasks import task_names_with

    assert task_names_with("generates") == "causal_lm, preference or sft"
    assert task_names_with("explains") == "causal_lm, classification or qa"
    assert task_names_with("rdrop") == "classification"


PROBE = re.compile(r"\b(hasattr|getattr)\(\s*(self\.)?(task|inputs\.task|c\.task|run\.task|data\.task)\b")


def test_no_consumer_probes_a_task():
    offenders = [f"{path.relative_to(SRC)}:{n}" for path in SRC.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if PROBE.search(line)]
    assert offenders == []


def test_reply_of_is_the_last_span_that_carries_loss():
    """Generated replies are compared with the last reply of an example (sft: the last assistant turn)."""
    from lmtune.data.collate import IGNORE_INDEX
    from lmtune.tasks import TASKS

    x = IGNORE_INDEX
    example = {"input_ids": [1, 5, 6, 7, 8, 9, 10, 11, 12], "labels": [x, x, 6, 7, x, x, 10, 11, 12]}
    takes = [name for name in TASKS.names() if TASKS.get(name).capabilities.replies]
    assert sorted(takes) == ["preference", "sft"]
    for name in takes:
        assert TASKS.get(name).reply_of(TASKS.get(name), example) == ([1, 5, 6, 7, 8, 9], [10, 11, 12])
        assert TASKS.get(name).reply_of(TASKS.get(name), {"input_ids": [1, 2], "labels": [x, x]}) is None
