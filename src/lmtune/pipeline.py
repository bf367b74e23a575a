"""The training pipeline: the one place that wires config → data + model → strategy → loop → run directory.

It sits below the consumers of a run directory (diagnosis, report): what looks at the finished run is passed
in as ``review`` (`lmtune.review` gives `lmtune train`'s). Inference on a finished run is `lmtune.inference`;
exporting its model is `lmtune.exporting`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmtune import rundir
from lmtune.config import RunConfig
from lmtune.data import Table
from lmtune.data.splits import load_tables
from lmtune.errors import LmtuneError, Stopped
from lmtune.evaluation import evaluate_examples
from lmtune.heap import peak_resident
from lmtune.integrity import read_json_object
from lmtune.loader import load_config
from lmtune.models import load_tokenizer, resolve_model
from lmtune.replies import reply_scorer
from lmtune.runlock import RunLock
from lmtune.strategies import directory_size, trainable_parameters
from lmtune.strategies.trainable import trainable_model
from lmtune.tasks import TASKS, Task, deciding_metric, task_names_with
from lmtune.trackers import TrackingSession
from lmtune.training import numerics
from lmtune.training.checkpoint import latest_checkpoint
from lmtune.training.frozen_cache import attach_cache, detach_cache, remove_spill
from lmtune.training.precision import default_threads, resolve_precision

log = logging.getLogger("lmtune")

Review = Callable[[Path, bool], None]
"""(run directory, write the report for the trackers) → None: what looks at a finished run."""

TRAIN_SAMPLE = "train_sample.json"
"""Indices (into the training rows) of the fixed sample scored at each evaluation."""


def train(
    config: RunConfig | str | Path, overrides: list[str] | tuple[str, ...] = (),
    on_eval: Callable[[int, dict], None] | None = None, review: Review | None = None,
    tracking_parent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune (or resume fine-tuning) as the config says; return the final metrics.

    Everything that can be checked (config, data, labels, output directory) is checked before
    anything is written, so bad input leaves nothing behind.

    Args:
        config: a RunConfig or a YAML path.
        overrides: ``key=value`` strings applied to a YAML config.
        on_eval: called with (step, validation metrics) after each evaluation; raising stops training.
        review: called on the main process with (run directory, whether a tracker wants the report) once the
            model is saved and before the trackers close (`lmtune.review.review_run`: diagnosis and report).
        tracking_parent: the experiment-tracker records of the comparison this run is a trial of.
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    run_dir = rundir.check_output(cfg)
    # one writer per run directory; under torchrun the first process holds the lock for the whole job
    with RunLock(run_dir) if int(os.environ.get("RANK", "0")) == 0 else nullcontext():
        return _train_locked(cfg, on_eval, review, tracking_parent)


def _train_locked(cfg: RunConfig, on_eval: Callable[[int, dict], None] | None, review: Review | None,
                  tracking_parent: dict[str, Any] | None) -> dict[str, Any]:
    run_dir, finished, cfg = rundir.prepare_run_dir(cfg)
    if finished:
        log.info("%s already holds this finished run; nothing to do", run_dir)
        return read_json_object(run_dir / rundir.FINAL_METRICS, "the run's final metrics")
    rundir.remove_partial_model(run_dir)
    data = prepare_data(cfg, run_dir)
    main = int(os.environ.get("RANK", "0")) == 0
    trackers = TrackingSession(cfg, run_dir, tracking_parent).start() if main else None  # before any training
    accelerator = _accelerator(cfg)
    try:
        final = _fit_and_finish(accelerator, cfg, data, run_dir, on_eval, trackers)
    except BaseException as err:
        from optuna.exceptions import TrialPruned  # a comparison stopped this trial early, on purpose

        status = "KILLED" if isinstance(err, (Stopped, KeyboardInterrupt, TrialPruned)) else "FAILED"
        if main and (run_dir / rundir.CONFIG).is_file():  # `lmtune runs` tells failed from killed
            rundir.write_text_atomic(run_dir / rundir.STATUS, json.dumps(
                {"status": status.lower(), "message": str(err)[:500], "time": round(time.time(), 3)}))
        if trackers is not None:  # a SIGKILL leaves the tracker run RUNNING: the resumed run finishes it
            trackers.finish(status)
        raise
    finally:
        main_process = accelerator.is_main_process  # read before _release resets accelerate's state
        remove_spill(run_dir / ".frozen-cache")
        _release(accelerator)
    if main_process:
        (run_dir / rundir.STATUS).unlink(missing_ok=True)  # an earlier attempt's failure is over
        tracked = trackers is not None and trackers.active
        if review is not None:
            review(run_dir, tracked and cfg.tracking.log_artifacts == "final")
        if tracked:
            trackers.finish("FINISHED", final)
    return final


@dataclass
class Prepared:
    """A run's data, read, checked and encoded before any model loads."""

    task: Task
    tables: dict[str, Table]
    source: str
    """What ``from_pretrained`` loads (the resolved ``model:``)."""
    tokenizer: Any
    encoded: dict[str, list[dict]]
    train: list[dict]
    """What training iterates over (packed blocks for language models)."""
    batch_examples: Callable[[int, list[int]], list[dict]] | None
    """(epoch, indices) → a batch's training examples, when they change every epoch (augmentation, masking)."""


def prepare_data(cfg: RunConfig, run_dir: Path) -> Prepared:
    """Task, tables, tokenizer and encoded examples; every data error is raised here, before training."""
    task = make_task(cfg)
    tables = load_tables(cfg.data, task)
    source = _model_source(cfg, tables["train"], run_dir)
    tokenizer = load_tokenizer(source)
    encoded = {name: task.encode(table, tokenizer, cfg.data, cfg.train.max_length) for name, table in tables.items()}
    batch_examples = _batch_examples(cfg, task, tables["train"], encoded["train"], tokenizer)
    train_examples = task.training_examples(encoded["train"], cfg.train.max_length)
    return Prepared(task, tables, source, tokenizer, encoded, train_examples, batch_examples)


def make_task(cfg: RunConfig) -> Task:
    """The task object for a new run, with its settings from the config (checked against what it offers)."""
    task = TASKS.get(cfg.task)()
    task.configure(cfg)
    deciding_metric(task, cfg.early_stopping)  # a metric the task lacks is an error before any work
    if cfg.regularization.rdrop and not task.capabilities.rdrop:
        raise LmtuneError(f"regularization.rdrop: R-Drop compares two distributions over classes; task "
                          f"{cfg.task!r} has none (use {task_names_with('rdrop')}, or set regularization.rdrop=0)")
    return task


def train_sample_indices(n_train: int, size: int, seed: int) -> list[int]:
    """A seeded, sorted sample of training rows; the same one on every process and after resume."""
    return sorted(random.Random(seed).sample(range(n_train), min(size, n_train)))


def _model_source(cfg: RunConfig, train: Table, run_dir: Path) -> str:
    """What ``from_pretrained`` loads: the resolved ``model:``, or for ``scratch:SIZE`` the run's ``base``
    folder (config and a tokenizer trained on the training text, made once)."""
    from lmtune import scratch

    if not scratch.is_scratch(cfg.model):
        return resolve_model(cfg.model)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LmtuneError(f"output: cannot create {run_dir} ({err.strerror or err})") from None
    base = scratch.prepare_base(cfg.model, train.texts(cfg.data.text), cfg.lm.vocab_size, cfg.train.max_length,
                                run_dir / scratch.BASE)
    return str(base)


def _batch_examples(cfg: RunConfig, task: Task, table: Table, examples: list[dict], tokenizer: Any) -> Any:
    """The per-epoch batch builder when training inputs change every epoch (augmentation, masked-LM
    masking), else None."""
    if task.capabilities.remasked:
        if cfg.augmentation.methods:
            raise LmtuneError(f"augmentation.methods: task {cfg.task!r} masks its inputs anew each epoch; "
                              "text augmentation does not apply to it")
        return task.training_batches(examples, tokenizer)
    if not cfg.augmentation.methods:
        return None
    if not task.capabilities.augmentable:
        raise LmtuneError(f"augmentation.methods: word edits could change the target of task {cfg.task!r}; "
                          f"augmentation is for {task_names_with('augmentable')}")
    from lmtune.data.augment import Augmenter, augmented_batches, load_filler

    filler = load_filler(cfg.augmentation.mlm_model) if "mlm" in cfg.augmentation.methods else None
    augmenter = Augmenter(cfg.augmentation, cfg.train.seed, table.texts(cfg.data.text), filler)
    return augmented_batches(augmenter, table, examples, tokenizer, cfg.data, cfg.train.max_length)


def _accelerator(cfg: RunConfig) -> Any:
    from accelerate import Accelerator

    use_cuda = torch.cuda.is_available()
    precision = resolve_precision(cfg.train.precision, use_cuda)
    # the scheduler is built in optimizer steps of one process; accelerate would otherwise step it once per
    # process at each optimizer step, and a 2-process run's learning rate reached 0 halfway through
    return Accelerator(mixed_precision=precision, cpu=not use_cuda, step_scheduler_with_optimizer=False)


def _fit_and_finish(accelerator: Any, cfg: RunConfig, data: Prepared, run_dir: Path,
                    on_eval: Callable[[int, dict], None] | None, trackers: Any) -> dict[str, Any]:
    from accelerate.utils import set_seed

    from lmtune.training import memory
    from lmtune.training.loop import fit, frozen_bf16_in_place, uses_bf16_copies

    if cfg.train.fsdp and accelerator.num_processes < 2:
        raise LmtuneError("train.fsdp: shards over 2 or more processes and this run has 1; start it with torchrun "
                          "--nproc_per_node N -m lmtune train ..., or set train.fsdp=false")
    torch.set_num_threads(cfg.train.threads or default_threads(accelerator.num_processes))
    set_seed(cfg.train.seed)
    bf16 = accelerator.mixed_precision == "bf16"
    strategy, model, layers, lr_scales = trainable_model(cfg, data.task, data.source, bf16)
    lengths = [data.task.example_length(e) for e in data.train] or [cfg.train.max_length]
    needed = memory.estimate(model, cfg, data.task, max(lengths), uses_bf16_copies(accelerator, cfg.train),
                             frozen_bf16_in_place(accelerator, cfg.train, strategy.saves_base),
                             accelerator.num_processes if cfg.train.fsdp else 1,
                             int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun's processes on this machine
    # before anything is written
    memory.check_fits(needed, cfg, accelerator.num_processes > 1 and strategy.shardable and not cfg.train.fsdp)
    timing = _step_time(accelerator, cfg, data, model, bf16, lengths)
    if accelerator.is_main_process:
        rundir.write_header(run_dir, cfg, data.task.state())
    accelerator.wait_for_everyone()
    reference_seconds = _attach_reference(accelerator, cfg, data, model, run_dir) \
        if data.task.capabilities.reference else None
    # augmented (or re-masked) inputs change every epoch, so their frozen-layer outputs cannot be cached
    caching = data.batch_examples is None and not data.task.packs() and not data.task.capabilities.pairs
    model, cache_info = attach_cache(
        model, strategy.frozen_bottom(layers), cfg.strategy.cache if caching else "off", data.encoded,
        data.tokenizer.pad_token_id, cfg.train.eval_batch, accelerator, run_dir / ".frozen-cache",
    )
    inputs = _fit_inputs(cfg, data, run_dir, lr_scales, on_eval, accelerator.is_main_process, strategy.saves_base)
    if trackers is not None and trackers.active:
        inputs.on_record = trackers.record
    state = fit(accelerator, model, inputs, cfg.train)
    if reference_seconds is not None:
        cache_info["reference_seconds"] = reference_seconds
    cache_info["memory_estimate_mib"] = round(needed.peak / 2**20)
    cache_info["step_seconds_estimate"] = round(timing.seconds, 4)
    cache_info["step_seconds"] = round(state.train_seconds / max(state.step, 1), 4)
    return _finish(accelerator, model, data, strategy, cfg, state, run_dir, cache_info)


def _step_time(accelerator: Any, cfg: RunConfig, data: Prepared, model: Any, bf16: bool,
               lengths: list[int]) -> Any:
    """The step-time estimate for training examples of these ``lengths``, logged with the run's total before its
    first step."""
    from lmtune.training import step_time
    from lmtune.training.loop import plan_steps

    _, total = plan_steps(lengths, cfg.train, accelerator.num_processes)
    timing = step_time.estimate(model, cfg, sum(lengths) / len(lengths), data.task.capabilities.pairs, bf16)
    if accelerator.is_main_process:
        log.info("time: %s", timing.line(total))
    return timing


def _attach_reference(accelerator: Any, cfg: RunConfig, data: Prepared, model: Any, run_dir: Path) -> float:
    """The starting model's scores of every example, before the first step (`lmtune.evaluation.reference`);
    returns the seconds it took (metrics.json's ``reference_seconds``)."""
    from lmtune.evaluation.reference import attach_reference

    started = time.perf_counter()
    model.to(accelerator.device)
    splits = {name: examples for name, examples in data.encoded.items() if examples}
    done = attach_reference(model, splits, data.task, cfg.train.eval_batch, data.tokenizer.pad_token_id, accelerator,
                            run_dir=run_dir, main_process=accelerator.is_main_process)
    if accelerator.is_main_process:
        log.info("%s", done)
    return round(time.perf_counter() - started, 3)


def _fit_inputs(cfg: RunConfig, data: Prepared, run_dir: Path, lr_scales: dict[int, float],
                on_eval: Callable[[int, dict], None] | None, main_process: bool, frozen_saved: bool) -> Any:
    from lmtune.training.loop import FitInputs

    sample = train_sample_indices(len(data.encoded["train"]), cfg.train.eval_train_samples, cfg.train.seed)
    if main_process:
        rundir.write_text_atomic(run_dir / TRAIN_SAMPLE, json.dumps({"indices": sample}))
    stopping = cfg.early_stopping
    return FitInputs(
        data.task, data.train, data.encoded.get("validation"), data.tokenizer.pad_token_id, run_dir,
        [run_dir / rundir.CONFIG, run_dir / rundir.VERSIONS], deciding_metric(data.task, stopping),
        lr_scales=lr_scales, on_eval=on_eval,
        patience=stopping.patience if stopping.metric else None,
        min_delta=stopping.min_delta, restore_best=stopping.restore_best,
        label_smoothing=cfg.regularization.label_smoothing, rdrop=cfg.regularization.rdrop,
        weight_decay=cfg.regularization.weight_decay, max_grad_norm=cfg.regularization.max_grad_norm,
        batch_examples=data.batch_examples, train_sample=[data.encoded["train"][i] for i in sample] or None,
        more_validation=reply_scorer(data.task, data.tokenizer, data.encoded.get("validation"), cfg.replies),
        frozen_weights_saved=frozen_saved,
    )


def _finish(accelerator: Any, model: Any, data: Prepared, strategy: Any, cfg: RunConfig, state: Any,
            run_dir: Path, cache_info: dict[str, Any]) -> dict[str, Any]:
    """Save the final model and write metrics.json (validation and test metrics, throughput, sizes)."""
    from lmtune.training import sharding

    results: dict[str, Any] = {}
    if state.last_validation_step == state.step:
        results["validation"] = state.last_validation
    with sharding.whole_weights(model):
        for split in ("validation", "test"):
            if data.encoded.get(split) and split not in results:
                results[split] = evaluate_examples(model, data.encoded[split], data.task, cfg.train.eval_batch,
                                                   data.tokenizer.pad_token_id, accelerator)
    unwrapped = detach_cache(accelerator.unwrap_model(model))
    results.update(_run_figures(accelerator, cfg, data, state, unwrapped, cache_info))
    # sharded: every process sends its shards, the main process saves the whole weights as transformers does
    whole = sharding.full_state_dict(unwrapped) if sharding.is_sharded(unwrapped) else None
    if accelerator.is_main_process:

        def save(out: Path) -> None:
            if whole is None:
                strategy.save(unwrapped, out)
            else:  # only full fine-tuning shards (`Strategy.shardable`), and it saves the plain model
                unwrapped.save_pretrained(out, state_dict=whole)
            data.tokenizer.save_pretrained(out)

        results["model_bytes"] = directory_size(rundir.save_model_atomic(run_dir, save))
        latest = latest_checkpoint(run_dir)
        results["checkpoint_bytes"] = directory_size(latest) if latest else None
        rundir.write_text_atomic(run_dir / rundir.FINAL_METRICS, json.dumps(results, indent=2))
    accelerator.wait_for_everyone()
    return results


def _run_figures(accelerator: Any, cfg: RunConfig, data: Prepared, state: Any, model: Any,
                 cache_info: dict[str, Any]) -> dict[str, Any]:
    """Steps, the best evaluation, throughput and sizes: the summary lines of metrics.json."""
    trainable, total = trainable_parameters(model)
    deciding = deciding_metric(data.task, cfg.early_stopping)
    figures = {
        "step": state.step, "best_step": state.best_step, f"best_{deciding.name}": state.best_metric,
        "stopped_early": state.stopped_early, "restored_step": state.restored_step,
        "train_samples_per_s": round(state.samples / max(state.train_seconds, 1e-9), 2),
        "train_seconds": round(state.train_seconds, 2), "train_rows": len(data.encoded["train"]),
        "processes": accelerator.num_processes, "precision": accelerator.mixed_precision,
        "trainable_parameters": trainable, "parameters": total, "strategy": cfg.strategy.name, **cache_info,
    }
    # the process's peak resident memory (in a fresh `lmtune train`: the run's own peak)
    figures["peak_rss_mib"] = round(peak_resident() / 2**20)
    figures["numerics"] = numerics.describe(accelerator.device)  # which kernels computed it (`training.numerics`)
    if data.task.capabilities.packed:  # blocks of max_length tokens
        figures["train_tokens_per_s"] = round(figures["train_samples_per_s"] * cfg.train.max_length, 1)
    return figures


def _release(accelerator: Any) -> None:
    """Tear down the process group and accelerate's process-wide state.

    Without the explicit teardown about 1 in 4 torchrun exits abort; without the reset, a second
    `train` in the same process (Python API, `compare`) could not choose another precision.
    """
    from accelerate.state import AcceleratorState, GradientState

    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
