"""The one training loop, on accelerate: any task, any strategy, resumable mid-epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmtune.config import TrainConfig
from lmtune.data import epoch_batches, shard
from lmtune.data.collate import model_inputs
from lmtune.errors import LmtuneError, Stopped
from lmtune.evaluation import evaluate_examples
from lmtune.integrity import FileCheckError, check_checkpoint
from lmtune.models import bare_model
from lmtune.rundir import EXAMPLE_LOSSES_LOG
from lmtune.tasks import DecidingMetric, Task
from lmtune.tasks.losses import release_buffers
from lmtune.training import numerics, sharding
from lmtune.training.bf16_weights import Bf16Weights, frozen_to_bf16
from lmtune.training.checkpoint import (
    REQUIRED_FILES,
    TrainState,
    load_checkpoint,
    remove_partial,
    resume_point,
    save_checkpoint,
)
from lmtune.training.dropout import fast_dropout
from lmtune.training.interrupt import stop_requested
from lmtune.training.lazy_rows import clip_grad_norm, sparse_word_embeddings
from lmtune.training.metrics_log import MetricsLog, truncate_log
from lmtune.training.optim import build_optimizer, build_scheduler
from lmtune.training.regularizers import rdrop_loss
from lmtune.training.trained_state import TrainedState, leaves_base_out


@dataclass
class FitInputs:
    """Everything the loop needs besides the model: data, task and where to write."""

    task: Task
    train: list[dict]
    validation: list[dict] | None
    pad_id: int
    run_dir: Path
    extra_files: list[Path]
    deciding: DecidingMetric
    """The validation metric that picks the best checkpoint and drives early stopping (`deciding_metric`)."""
    lr_scales: dict[int, float] | None = None
    """Learning-rate multiplier per parameter, keyed by ``id(param)`` (from the strategy)."""
    patience: int | None = None
    """Stop after this many evaluations without improvement; None: never stop early."""
    min_delta: float = 0.0
    restore_best: bool = False
    """End with the weights of the best evaluation."""
    label_smoothing: float = 0.0
    rdrop: float = 0.0
    """R-Drop weight (0: off)."""
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    batch_examples: Callable[[int, list[int]], list[dict]] | None = None
    """(epoch, indices) → the training examples of a batch, when they change per epoch (augmentation)."""
    on_record: Callable[[dict], None] | None = None
    """Gets every metrics.jsonl line (the run's experiment trackers)."""
    train_sample: list[dict] | None = None
    """Fixed, unaugmented training examples scored at each evaluation (the train/validation gap)."""
    on_eval: Callable[[int, dict], None] | None = None
    """Called with (step, validation metrics) after each evaluation; may raise to stop (e.g. a pruned trial)."""
    frozen_weights_saved: bool = True
    """Whether the model's frozen weights are saved with it (freeze, head, BitFit: they keep their fp32 values);
    False (LoRA: the base is not saved) lets bf16 training hold them in bf16 in place (`Bf16Weights`)."""
    more_validation: Callable[[Any], dict[str, float]] | None = None
    """Metrics of the model beyond the task's, added to each validation record (generated replies scored:
    `lmtune.replies`)."""


def plan_steps(lengths: list[int], cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(optimizer steps in the first epoch, total optimizer steps) for examples of these token lengths.

    With ``train.batch_tokens`` the number of batches depends on each epoch's shuffle, so the total is
    counted over the epochs' actual batch plans (the scheduler must know where the run ends).
    """
    def steps_in(epoch: int) -> int:
        if cfg.batch_tokens is None:
            batches = math.ceil(len(lengths) / cfg.batch_size)
        else:
            batches = len(training_batches(lengths, cfg, epoch))
        per_process = batches // world_size if world_size > 1 else batches
        if per_process == 0:
            size = f"train.batch_size={cfg.batch_size}" if cfg.batch_tokens is None \
                else f"train.batch_tokens={cfg.batch_tokens}"
            raise LmtuneError(f"data.train: {len(lengths)} training examples make no batch of {size} for each "
                              f"of {world_size} processes; use more data, a smaller batch or fewer processes")
        return math.ceil(per_process / cfg.grad_accum)

    per_epoch = steps_in(0)
    if cfg.max_steps:
        return per_epoch, cfg.max_steps
    if cfg.batch_tokens is None:
        return per_epoch, math.ceil(cfg.epochs * per_epoch)
    whole = int(cfg.epochs)
    total = sum(steps_in(epoch) for epoch in range(whole))
    if cfg.epochs > whole:
        total += math.ceil((cfg.epochs - whole) * steps_in(whole))
    return per_epoch, total


def training_batches(lengths: list[int], cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """One epoch's batches of example indices (all processes' batches; `shard` takes one process's share)."""
    return epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length, cfg.batch_tokens)


def fit(accelerator: Any, model: torch.nn.Module, inputs: FitInputs, cfg: TrainConfig) -> TrainState:
    """Train ``model``; evaluate and checkpoint every ``eval_every`` steps and at each epoch end.

    Resumes from the run directory's latest checkpoint when there is one. Only the main
    process writes metrics; every process takes part in checkpoints and evaluation.

    Returns:
        The final training state (step, best metric and its step, throughput counters).
    """
    lengths = [inputs.task.example_length(ex) for ex in inputs.train]
    per_epoch, total = plan_steps(lengths, cfg, accelerator.num_processes)
    with ExitStack() as speedups:
        # sparse gradients and DDP's bucketed all-reduce do not mix: several processes keep dense embeddings
        sparse = cfg.sparse_embeddings and accelerator.num_processes == 1
        lazy = speedups.enter_context(sparse_word_embeddings(model)) if sparse else None
        model, optimizer, scheduler = _prepare(accelerator, model, inputs, cfg, total, lazy)
        if inputs.task.capabilities.low_precision_logits:
            _keep_output_precision(model)
        state, resume_from, skipped = _resume(accelerator, inputs.run_dir)
        tracker = MetricsLog(inputs.run_dir, total, state.step, accelerator.is_main_process, inputs.on_record)
        for warning in skipped:
            tracker.message(warning)
        if resume_from is not None:
            _say_resumed(accelerator, tracker, resume_from, state)
        # CUDA's own dropout kernel is fast; on CPU the mask's random numbers are a tenth of a small step
        if cfg.fast_dropout and accelerator.device.type == "cpu":
            speedups.enter_context(fast_dropout(model))
        # after the resume, so the copies start from the checkpoint's (fp32) weights; a base made bf16 first is
        # its own copy
        if frozen_bf16_in_place(accelerator, cfg, inputs.frozen_weights_saved):
            frozen_to_bf16(model)
        copies = Bf16Weights(model, lazy) if uses_bf16_copies(accelerator, cfg) else None
        _Loop(accelerator, model, optimizer, scheduler, inputs, cfg, state, tracker, lengths, per_epoch, total,
              copies).run()
    tracker.close()
    _check_processes_agree(accelerator, model)
    if inputs.restore_best and state.best_step not in (None, state.step):
        _restore(accelerator, inputs, state, tracker)
    return state


def _prepare(accelerator: Any, model: torch.nn.Module, inputs: FitInputs, cfg: TrainConfig, total: int,
             lazy: Any) -> tuple[Any, Any, Any]:
    """The model, optimizer and scheduler, prepared by accelerate (autocast, DDP over several processes); with
    ``train.fsdp`` the model is sharded first and accelerate only adds autocast (its DDP would wrap the shards)."""
    lr_scales = inputs.lr_scales
    if cfg.fsdp:
        names = {id(p): name for name, p in model.named_parameters()}
        by_name = {names[key]: scale for key, scale in (lr_scales or {}).items()}
        # new (sharded) parameter objects, under the same names
        model = sharding.shard_model(model, accelerator.mixed_precision == "bf16")
        lr_scales = {id(p): by_name[name] for name, p in model.named_parameters() if name in by_name}
    optimizer = build_optimizer(model, cfg.lr, inputs.weight_decay, lr_scales, lazy_rows=lazy)
    scheduler = build_scheduler(optimizer, cfg, total)
    if not cfg.fsdp:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        if leaves_base_out(model, sharded=False):
            TrainedState(model, accelerator.is_main_process).register(accelerator)
        return model, optimizer, scheduler
    sharding.ShardedState(model, optimizer).register(accelerator)
    return accelerator.prepare_model(model, evaluation_mode=True), optimizer, accelerator.prepare(scheduler)


@dataclass
class _Loop:
    """The epochs of one `fit`: batches → forward/backward → optimizer steps → evaluations and checkpoints."""

    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    inputs: FitInputs
    cfg: TrainConfig
    state: TrainState
    tracker: MetricsLog
    lengths: list[int]
    """Token count of each training example (what the batch plan sorts and sizes by)."""
    per_epoch: int
    total: int
    copies: Bf16Weights | None = None
    """bf16 copies of the weights that forward and backward run on (the model keeps the fp32 masters)."""

    def __post_init__(self) -> None:
        self.window = _Window()
        self.forward = self.copies if self.copies is not None else self.model

    def run(self) -> None:
        state, cfg = self.state, self.cfg
        self.model.train()
        while state.step < self.total and not state.stopped_early:
            batches = shard(training_batches(self.lengths, cfg, state.epoch),
                            self.accelerator.process_index, self.accelerator.num_processes)
            finished, evaluated = self._epoch(batches)
            if finished:
                _log_epoch(self.tracker, state)
                state.epoch += 1
                state.batch = 0
                state.epoch_start_seconds = state.train_seconds
            if not evaluated:  # every epoch, and the run, end with an evaluation and a checkpoint
                self._evaluate_and_save()

    def _epoch(self, batches: list[list[int]]) -> tuple[bool, bool]:
        """Train from the current batch on: (whether the epoch was finished, whether its last step evaluated)."""
        # resumed where nothing of the epoch is left: its end was evaluated unless the checkpoint was a SIGTERM's
        state = self.state
        evaluated = state.evaluated_step == state.step
        for i in range(state.batch, len(batches)):
            group_start = i - i % self.cfg.grad_accum
            group_size = min(self.cfg.grad_accum, len(batches) - group_start)
            step_ends = i == group_start + group_size - 1
            self._forward_backward(batches[i], group_size, step_ends)
            state.batch = i + 1
            if not step_ends:
                self.window.stop(state)
                evaluated = False
                continue
            evaluated = self._step()
            if state.step >= self.total or state.stopped_early:
                if state.batch == len(batches):  # the run ends exactly at an epoch's end
                    _log_epoch(self.tracker, state)
                return False, evaluated
        return True, evaluated

    def _forward_backward(self, indices: list[int], group_size: int, step_ends: bool) -> None:
        inputs, accelerator = self.inputs, self.accelerator
        self.window.start()
        if inputs.batch_examples is not None:
            examples = inputs.batch_examples(self.state.epoch, indices)
        else:
            examples = [inputs.train[j] for j in indices]
        padded = inputs.task.collate(examples, inputs.pad_id, bucket_limit=self.cfg.max_length)
        batch = {k: v.to(accelerator.device) for k, v in padded.items()}
        with nullcontext() if step_ends else accelerator.no_sync(self.model):
            features = model_inputs(batch)
            if inputs.rdrop:
                loss, task_loss = rdrop_loss(self.forward, features, batch, inputs.task, inputs.rdrop,
                                             inputs.label_smoothing)
            else:
                loss = task_loss = inputs.task.loss(self.forward(**features), batch,
                                                    label_smoothing=inputs.label_smoothing)
            accelerator.backward(loss / group_size)
        if self.copies is not None:
            self.copies.gradients_to_masters()
        self.window.add(task_loss.detach(), len(indices) * accelerator.num_processes)

    def _step(self) -> bool:
        """An optimizer step and what follows it (log, evaluation, SIGTERM); whether it evaluated."""
        state, cfg = self.state, self.cfg
        # the window's loss sum holds this step's losses (an earlier non-finite one stopped the run): one read of
        # it per optimizer step, not one per micro-batch
        _stop_if_not_finite(self.window.loss_sum, state.step + 1, cfg, self.inputs)
        _optimizer_step(self.accelerator, self.model, self.optimizer, self.scheduler, self.inputs.max_grad_norm,
                        self.copies)
        state.step += 1
        self.window.stop(state)
        self.tracker.advance(self.window.rate())
        if state.step % cfg.log_every == 0:
            _log_train(self.accelerator, self.tracker, self.window, state, self.scheduler, self.per_epoch)
        evaluated = bool(cfg.eval_every) and state.step % cfg.eval_every == 0
        if evaluated:
            self._evaluate_and_save()
        if state.step < self.total and not state.stopped_early:
            _stop_if_asked(self.accelerator, self.inputs, cfg, state, evaluated)
        return evaluated

    def _evaluate_and_save(self) -> None:
        _evaluate_and_save(self.accelerator, self.model, self.inputs, self.cfg, self.state, self.tracker,
                           self.per_epoch)


def _stop_if_not_finite(loss: torch.Tensor | float, step: int, cfg: TrainConfig, inputs: FitInputs) -> None:
    """A NaN or infinite loss ends the run before it reaches the weights, in one line saying what to change; the
    checkpoints written so far stay as they are (the run resumes from the last one)."""
    loss = torch.as_tensor(loss).detach()
    if torch.isfinite(loss).item():
        return
    from lmtune.training.checkpoint import latest_checkpoint

    last = latest_checkpoint(inputs.run_dir)
    kept = f"the last good checkpoint, {last.name}, is kept" if last else "no checkpoint was written yet"
    clipping = ("regularization.max_grad_norm=1.0",) if inputs.max_grad_norm is None else ()
    changes = ", ".join((f"a lower train.lr (now {cfg.lr:g})", *inputs.task.stabilizers, *clipping))
    raise LmtuneError(f"training loss is {float(loss)} at step {step}: the weights were not updated with it; "
                      f"try {changes}; {kept}")


def _resume(accelerator: Any, run_dir: Path) -> tuple[TrainState, Path | None, list[str]]:
    """(training position, the checkpoint it came from, warnings about damaged newer checkpoints)."""
    skipped: list[str] = []
    if accelerator.is_main_process:
        remove_partial(run_dir)
    accelerator.wait_for_everyone()
    resume_from = resume_point(run_dir, skipped.append)
    if resume_from is None:
        if skipped:
            skipped.append("no undamaged checkpoint is left: training starts again from step 0")
        state = TrainState()
    else:
        state = load_checkpoint(accelerator, resume_from)
    if (resume_from is not None or skipped) and accelerator.is_main_process:
        truncate_log(run_dir, state.step)
    return state, resume_from, skipped


def _say_resumed(accelerator: Any, tracker: MetricsLog, resume_from: Path, state: TrainState) -> None:
    tracker.message(f"resumed from {resume_from.name} (epoch {state.epoch}, batch {state.batch})")
    changed = numerics.differences(state.numerics, numerics.describe(accelerator.device))
    if changed:
        tracker.message(f"{resume_from.name} was computed on other kernels than this process's ({changed}): the "
                        "run continues exactly, but its losses will differ from an uninterrupted run's in the "
                        "last digits (other rounding)")


def _stop_if_asked(accelerator: Any, inputs: FitInputs, cfg: TrainConfig, state: TrainState, saved: bool) -> None:
    """After an optimizer step: on SIGTERM, write a checkpoint (unless this step just did) and stop."""
    signum = stop_requested(accelerator, state.step, cfg.log_every)
    if signum is None:
        return
    if not saved:
        save_checkpoint(accelerator, state, inputs.run_dir, cfg.keep_checkpoints, inputs.extra_files)
    raise Stopped(signum, state.step)


def _check_processes_agree(accelerator: Any, model: torch.nn.Module) -> None:
    """Every process ends with the same weights: DDP averages the gradients, so they differ only if that broke
    (it did once: see `score_examples`), and then the main process would save its own share's training."""
    if accelerator.num_processes == 1 or sharding.is_sharded(bare_model(model)):
        return
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in bare_model(model).parameters()])
    every = accelerator.gather(sums.unsqueeze(0))
    if not all(torch.equal(every[0], other) for other in every[1:]):
        raise LmtuneError(f"the {accelerator.num_processes} processes ended training with different weights: their "
                          "gradients were not averaged (a bug; please report it with this run's config.yaml); "
                          "the final model is not saved")


def _restore(accelerator: Any, inputs: FitInputs, state: TrainState, tracker: MetricsLog) -> None:
    """Load the best evaluation's weights (its checkpoint is never rotated away) as the final model."""
    best = inputs.run_dir / "checkpoints" / f"step-{state.best_step}"
    try:
        check_checkpoint(best, REQUIRED_FILES)
    except FileCheckError as err:
        tracker.message(f"kept the last weights: the best evaluation's checkpoint is damaged ({err})")
        return
    accelerator.load_state(str(best))
    state.restored_step = state.best_step
    state.last_validation_step = None  # the final metrics are those of the restored weights
    tracker.message(f"restored the weights of step {state.best_step} ({inputs.deciding.name} {state.best_metric:.4f})")


def _log_epoch(tracker: MetricsLog, state: TrainState) -> None:
    """Training time of the epoch that just ended (for per-epoch costs, e.g. of frozen-layer caching)."""
    tracker.log({"step": state.step, "epoch": state.epoch + 1, "split": "epoch",
                 "train_seconds": round(state.train_seconds - state.epoch_start_seconds, 3)})


def _keep_output_precision(model: Any) -> None:
    """Undo accelerate's cast of every forward output to fp32 under mixed precision (autocast stays).

    For a language model the logits are (tokens × vocabulary): copying them to fp32 and back through
    autograd took about a tenth of a training step. Token tasks' losses upcast chunk by chunk instead.
    """
    from types import MethodType

    from accelerate.utils.operations import ConvertOutputsToFp32

    inner = bare_model(model)
    forward = inner.forward
    wrapper = getattr(getattr(forward, "__func__", forward), "__wrapped__", None)
    if isinstance(wrapper, ConvertOutputsToFp32):
        bare = wrapper.model_forward
        inner.forward = MethodType(bare, inner) if hasattr(forward, "__func__") else bare


def uses_bf16_copies(accelerator: Any, cfg: TrainConfig) -> bool:
    """Whether forward and backward run on bf16 weight copies: bf16 precision on one process (DDP's gradient
    hooks sit on the model's own parameters), without gradient checkpointing (its recomputation in the backward
    pass would meet the fp32 weights again, not the copies the forward pass saw)."""
    return _bf16_weights(accelerator, cfg) and not cfg.gradient_checkpointing


def frozen_bf16_in_place(accelerator: Any, cfg: TrainConfig, frozen_saved: bool) -> bool:
    """Whether the frozen fp32 weights become bf16 in place for the run (they are not saved: LoRA's base), with
    bf16 copies of the rest or, under gradient checkpointing, without (`frozen_to_bf16`)."""
    return _bf16_weights(accelerator, cfg) and not frozen_saved


def _bf16_weights(accelerator: Any, cfg: TrainConfig) -> bool:
    return cfg.bf16_weights and accelerator.mixed_precision == "bf16" and accelerator.num_processes == 1


def _optimizer_step(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, max_grad_norm: float | None,
                    copies: Bf16Weights | None) -> None:
    if max_grad_norm is not None:
        accelerator.unscale_gradients()  # fp16 loss scaling (GPU); a no-op otherwise
        clip_grad_norm([p for p in model.parameters() if p.grad is not None], max_grad_norm)
    optimizer.step()
    if copies is not None:
        copies.refresh()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _log_train(accelerator: Any, tracker: MetricsLog, window: _Window, state: TrainState, scheduler: Any,
               per_epoch: int) -> None:
    loss = accelerator.reduce(window.loss_sum.detach(), reduction="mean").item() / window.count
    tracker.show_loss(loss)
    tracker.log({
        "step": state.step, "epoch": round(state.step / per_epoch, 4), "split": "train",
        "loss": round(loss, 6), "lr": scheduler.get_last_lr()[0], "samples_per_s": round(window.rate(), 2),
    })
    window.reset()


def _evaluate_and_save(accelerator: Any, model: Any, inputs: FitInputs, cfg: TrainConfig, state: TrainState,
                       tracker: MetricsLog, per_epoch: int) -> None:
    release_buffers()  # the last step's logits-sized gradient buffer: not needed until the next step
    with sharding.whole_weights(model):
        metrics = _evaluate(accelerator, model, inputs, cfg, state, tracker, per_epoch)
    state.evaluated_step = state.step
    save_checkpoint(accelerator, state, inputs.run_dir, cfg.keep_checkpoints, inputs.extra_files)
    if metrics is not None and inputs.on_eval is not None:
        inputs.on_eval(state.step, metrics)


def _evaluate(accelerator: Any, model: Any, inputs: FitInputs, cfg: TrainConfig, state: TrainState,
              tracker: MetricsLog, per_epoch: int) -> dict[str, Any] | None:
    """Score the training sample and the validation set (logged; best step and early stopping updated); the
    validation metrics, or None without a validation set."""
    if inputs.train_sample:
        _score_train_sample(accelerator, model, inputs, cfg, state, tracker, per_epoch)
    metrics = None
    if inputs.validation:
        metrics = evaluate_examples(model, inputs.validation, inputs.task, cfg.eval_batch, inputs.pad_id, accelerator)
        if inputs.more_validation is not None:
            metrics.update(inputs.more_validation(model))
        value = metrics[inputs.deciding.name]
        if _improved(value, state.best_metric, inputs.deciding.maximize, inputs.min_delta):
            state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
        else:
            state.bad_evals += 1
            if inputs.patience is not None and state.bad_evals >= inputs.patience:
                state.stopped_early = True
        state.last_validation, state.last_validation_step = metrics, state.step
        tracker.log({
            "step": state.step, "epoch": round(state.step / per_epoch, 4), "split": "validation", **_scalars(metrics)
        })
        tracker.message(
            f"step {state.step}: validation loss {metrics['loss']:.4f}, "
            f"{inputs.deciding.name} {value:.4f} (best {state.best_metric:.4f} at step {state.best_step})"
            + (f"; stopping early: no improvement in {state.bad_evals} evaluations" if state.stopped_early else "")
        )
    return metrics


def _score_train_sample(accelerator: Any, model: Any, inputs: FitInputs, cfg: TrainConfig, state: TrainState,
                        tracker: MetricsLog, per_epoch: int) -> None:
    """The validation metrics on fixed training examples (eval mode, no augmentation): the real gap."""
    metrics = evaluate_examples(model, inputs.train_sample, inputs.task, cfg.eval_batch, inputs.pad_id, accelerator,
                                example_losses=True)
    losses = metrics.pop("example_losses")
    tracker.log({"step": state.step, "epoch": round(state.step / per_epoch, 4), "split": "train_sample",
                 **_scalars(metrics)})
    tracker.log({"step": state.step, "losses": losses}, file=EXAMPLE_LOSSES_LOG)


def _improved(value: float, best: float | None, maximize: bool, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if maximize else value < best - min_delta


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The per-step log keeps numbers only; tables (confusion matrix, per-class) go to metrics.json."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


class _Window:
    """Loss and throughput since the last log line (training time only, evaluation excluded)."""

    def __init__(self):
        self._t0 = 0.0
        self._pending = 0
        self.reset()

    def reset(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.count = 0
        self.samples = 0
        self.seconds = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, samples: int) -> None:
        # summed on the device: reading the value (.item()) every step would make a GPU wait each time
        self.loss_sum = self.loss_sum + loss.detach().float()
        self.count += 1
        self._pending = samples

    def stop(self, state: TrainState) -> None:
        seconds = time.perf_counter() - self._t0
        state.samples += self._pending
        state.train_seconds += seconds
        self.samples += self._pending
        self.seconds += seconds

    def rate(self) -> float:
        return self.samples / max(self.seconds, 1e-9)
