"""`load_config`: a run config checked field by field (`lmtune.config`) and against the registered tasks and
strategies, with what it leaves unsaid made explicit (the strategy's learning rate, the task's column names).

This is the config check that needs more than the schema: does the task exist, does the strategy, does it take
this knob, does the task train a model from scratch. It sits above tasks and strategies so that `lmtune.config`
stays a leaf.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmtune import scratch
from lmtune.config import RunConfig, read_config, resolve_paths
from lmtune.errors import ConfigError
from lmtune.strategies import STRATEGIES, build_strategy, knobs_of
from lmtune.tasks import TASKS


def load_config(source: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a run config from a YAML file (or a dict) and apply ``key=value`` overrides.

    Args:
        source: path to a YAML file, or an already-parsed mapping.
        overrides: strings like ``train.lr=2e-5``; values are parsed as YAML scalars.

    Returns:
        The validated config; relative data/output paths are resolved against the current directory, and a
        missing learning rate or column name takes the strategy's or task's default.

    Raises:
        ConfigError: naming every invalid key and value.
    """
    parsed = read_config(source, overrides)
    problems = parsed.problems + registry_problems(parsed.config)
    if problems:
        raise ConfigError(problems, source=parsed.source)
    config = _resolve_columns(parsed.config, parsed.data_keys)
    return resolve_paths(_resolve_lr(config))


def registry_problems(config: RunConfig) -> list[str]:
    """What is wrong with ``config`` given the registered tasks and strategies (each problem names its key)."""
    problems = []
    task_problem = TASKS.check(config.task)
    if task_problem:
        problems.append(f"task: {task_problem}")
    strategy_problem = STRATEGIES.check(config.strategy.name)
    if strategy_problem:
        problems.append(f"strategy.name: {strategy_problem}")
    else:
        problems += _knob_problems(config)
        if config.train.fsdp and not STRATEGIES.get(config.strategy.name).shardable:
            whole = [name for name in STRATEGIES.names() if STRATEGIES.get(name).shardable]
            problems.append(f"train.fsdp: shards full fine-tuning (strategy {' or '.join(whole)}); strategy "
                            f"{config.strategy.name!r} trains few weights, which sharding saves nothing on: set "
                            "train.fsdp=false")
    if scratch.is_scratch(config.model):
        problems += _scratch_problems(config, None if task_problem else TASKS.get(config.task))
    if config.replies.samples and not task_problem and not TASKS.get(config.task).capabilities.replies:
        takes = [name for name in TASKS.names() if TASKS.get(name).capabilities.replies]
        problems.append(f"replies.samples: task {config.task!r} has no reference replies to score generated ones "
                        f"against; it applies to {' and '.join(takes)}")
    return problems


def _knob_problems(config: RunConfig) -> list[str]:
    """A knob set for a strategy that does not take it."""
    taken = knobs_of(config.strategy.name)
    problems = []
    for knob in config.strategy.knobs():
        if knob not in taken:
            owners = [name for name in STRATEGIES.names() if knob in knobs_of(name)]
            problems.append(f"strategy.{knob}: only used by strategy {' or '.join(owners)}, "
                            f"not {config.strategy.name!r}")
    return problems


def _scratch_problems(config: RunConfig, task: type | None) -> list[str]:
    problems = []
    if task is not None and not task.capabilities.from_scratch:
        starts = [name for name in TASKS.names() if TASKS.get(name).capabilities.from_scratch]
        problems.append(f"model: {config.model} (a new decoder) is for task {' or '.join(starts)}, not "
                        f"{config.task!r}; pretrain it first, then use its run directory as model:")
    if not STRATEGIES.check(config.strategy.name) and not STRATEGIES.get(config.strategy.name).saves_base:
        # a new decoder's weights exist only in the run being trained: a run that keeps adapters alone could
        # never be loaded again (its base would be drawn afresh)
        problems.append(f"strategy.name: {config.strategy.name!r} saves adapters only, and {config.model}'s random "
                        "starting weights are saved nowhere; pretrain it with strategy full, then tune that run "
                        "(model: RUN) with LoRA")
    size = config.model.removeprefix(scratch.PREFIX)
    if size not in scratch.SIZES:
        problems.append(f"model: unknown scratch size {size!r}; available: {', '.join(scratch.SIZES)}")
    return problems


def _resolve_lr(config: RunConfig) -> RunConfig:
    """No learning rate given: use the strategy's default (a scratch model's own), so that it is explicit in
    the saved config."""
    if config.train.lr is not None:
        return config
    # new weights learn from nothing: 10-100x the fine-tuning rates
    lr = scratch.SCRATCH_LR if scratch.is_scratch(config.model) else build_strategy(config.strategy).default_lr
    return dataclasses.replace(config, train=dataclasses.replace(config.train, lr=lr))


def _resolve_columns(config: RunConfig, given: frozenset[str]) -> RunConfig:
    """Columns the config does not name take the task's natural names (QA: question, context, answers)."""
    missing = {k: v for k, v in TASKS.get(config.task).default_columns.items() if k not in given}
    if not missing:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(config.data, **missing))

