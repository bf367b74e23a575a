"""Training dynamics → healthy | overfitting | underfitting | diverging, from a run's metrics.jsonl.

The train/validation gap is read from the fixed training sample scored with the validation
metrics at each evaluation (``split: train_sample``), so both sides use the same metric and the
same (eval-mode, unaugmented) forward pass. Thresholds are for metrics in [0, 1] (accuracy, F1)
when higher is better, and relative changes when lower is better (losses, perplexity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Any

from lmtune.config import RunConfig
from lmtune.diagnosis.findings import Finding, Suggestion
from lmtune.tasks.base import Capabilities, DecidingMetric

GAP = 0.05
"""A train-sample minus validation difference above this (5 accuracy points) is a real gap."""
DECLINE = 0.01
"""Validation this much below its best (1 point) counts as getting worse, not noise."""
RELATIVE_DECLINE = 0.05
"""For lower-is-better metrics: 5% above the best value counts as getting worse."""
LOSS_RISE = 0.10
"""Validation loss 10% above its minimum while training improves is overfitting evidence."""
SPIKE_FACTOR, SPIKE_MIN = 2.0, 0.3
"""A training loss twice the median of the 5 before it, and at least 0.3 above it, is a spike."""


@dataclass
class Curves:
    """The series of one run's log, by split."""

    train: list[tuple[int, float]]
    """(step, training loss) of the logged training windows."""
    validation: list[tuple[int, dict[str, Any]]]
    train_sample: dict[int, dict[str, Any]]

    @classmethod
    def from_log(cls, log: list[dict[str, Any]]) -> Curves:
        train = [(x["step"], _number(x.get("loss"))) for x in log if x.get("split") == "train"]
        validation = [(x["step"], x) for x in log if x.get("split") == "validation"]
        sample = {x["step"]: x for x in log if x.get("split") == "train_sample"}
        return cls(train, validation, sample)


def assess(curves: Curves, cfg: RunConfig, deciding: DecidingMetric, final: dict[str, Any] | None,
           capabilities: Capabilities) -> Finding:
    """The finding that names the run's state, with its evidence and next steps.

    ``deciding``: the metric that counts and its declaration: its unit (100 for percent; thresholds are written
    for [0, 1]), its smallest meaningful difference (an improvement above it is progress, not noise), whether it
    compares with the majority-class rate. ``capabilities``: what the task offers (only remedies it takes are
    suggested).
    """
    watch, maximize, metric = deciding.name, deciding.maximize, deciding.metric
    final = final or {}
    unstable = _instability(curves, cfg)
    if unstable is not None:
        return unstable
    if len(curves.validation) < 3:
        return Finding("unknown", f"too few evaluations ({len(curves.validation)}) to judge the learning curves",
                       [f"{len(curves.validation)} validation evaluations were logged; at least 3 are needed"],
                       [Suggestion("evaluate more often", [f"train.eval_every={_eval_every_hint(curves)}"])])
    sign = 1.0 if maximize else -1.0
    steps = [s for s, _ in curves.validation]
    values = [m.get(watch) for _, m in curves.validation]
    best = max(range(len(values)), key=lambda i: sign * values[i])
    used = _index_of(steps, final.get("restored_step")) if final.get("restored_step") else len(steps) - 1
    fact = _Facts(curves, watch, sign, steps, values, best, used, metric.unit, metric.min_delta,
                  metric.majority_baseline, capabilities.augmentable)
    overfit = _overfitting(fact, cfg)
    if overfit is not None:
        return overfit
    under = _underfitting(fact, cfg, final)
    if under is not None:
        return under
    return _healthy(fact, final)


@dataclass
class _Facts:
    curves: Curves
    watch: str
    sign: float
    steps: list[int]
    values: list[float]
    best: int
    """Index of the best validation evaluation."""
    used: int
    """Index of the evaluation whose weights the run ends with (the restored one, else the last)."""
    scale: float = 1.0
    """100 for metrics in percent: thresholds are for [0, 1]."""
    min_delta: float = 0.0
    """The metric's smallest meaningful difference, in its own units."""
    majority_baseline: bool = False
    """The metric is a rate of correct class predictions, comparable with always predicting the majority class."""
    augmentable: bool = False
    """The task takes text augmentation."""

    def last_gain(self) -> float:
        """How much the last evaluation improved on the one before, in the metric's units."""
        return self.sign * (self.values[-1] - self.values[-2]) if len(self.values) > 1 else 0.0

    def sample(self, i: int) -> float | None:
        record = self.curves.train_sample.get(self.steps[i])
        return None if record is None else record.get(self.watch)

    def sample_loss(self, i: int) -> float | None:
        record = self.curves.train_sample.get(self.steps[i])
        return None if record is None else record.get("loss")

    def gap(self, i: int) -> float | None:
        """How much better the training sample scores than validation at evaluation i (in [0, 1] units)."""
        train = self.sample(i)
        if train is None:
            return None
        if self.sign > 0:
            return (train - self.values[i]) / self.scale
        return (self.values[i] - train) / max(abs(self.values[i]), 1e-9)  # relative, lower-is-better

    def worse_by(self, i: int, j: int) -> float:
        """How much worse validation is at j than at i (absolute up, relative down)."""
        if self.sign > 0:
            return (self.values[i] - self.values[j]) / self.scale
        return (self.values[j] - self.values[i]) / max(abs(self.values[i]), 1e-9)

    def where(self, i: int) -> str:
        epoch = self.curves.validation[i][1].get("epoch")
        return f"step {self.steps[i]}" + (f" (epoch {epoch:g})" if epoch is not None else "")


def _overfitting(f: _Facts, cfg: RunConfig) -> Finding | None:
    """Validation got worse (metric or loss) while the training side kept improving, leaving a gap."""
    last = len(f.steps) - 1
    losses = [m.get("loss") for _, m in f.curves.validation]
    low = min(range(len(losses)), key=lambda i: losses[i])
    loss_rise = (losses[last] - losses[low]) / max(losses[low], 1e-9)
    decline = f.worse_by(f.best, last)
    worse = decline > (DECLINE if f.sign > 0 else RELATIVE_DECLINE) or loss_rise > LOSS_RISE
    turn = min(f.best, low) if loss_rise > LOSS_RISE else f.best  # where validation stopped improving
    if not worse or turn >= last:
        return None
    sample_turn, sample_last = f.sample_loss(turn), f.sample_loss(last)
    if sample_turn is not None and sample_last is not None:
        kept_improving = sample_last < sample_turn or f.sign * (f.sample(last) - f.sample(turn)) > 0
        gap_last = f.gap(last)
        if not kept_improving or gap_last is None or gap_last <= GAP:
            return None
        evidence = [f"validation {f.watch} was best at {f.where(f.best)} ({f.values[f.best]:.4f}) and ended at "
                    f"{f.values[last]:.4f}",
                    f"meanwhile the training sample's loss fell from {sample_turn:.4f} to {sample_last:.4f} "
                    f"and its {f.watch} {_moved(f.sample(turn), f.sample(last))}",
                    f"train/validation gap at the end: {gap_last * f.scale:.4f} ({f.watch} {f.sample(last):.4f} "
                    f"on training examples vs {f.values[last]:.4f} on validation)"]
    else:  # no training sample scored: the running training loss stands in for it
        if not _train_loss_at(f.curves, f.steps[last]) < _train_loss_at(f.curves, f.steps[turn]):
            return None
        evidence = [f"validation {f.watch} was best at {f.where(f.best)} ({f.values[f.best]:.4f}) and ended at "
                    f"{f.values[last]:.4f}",
                    "the running training loss kept falling (no training sample was scored, so the gap on the "
                    "same metric is unknown: set train.eval_train_samples)"]
    if loss_rise > LOSS_RISE:
        evidence.append(f"validation loss rose {loss_rise:.0%} from its minimum {losses[low]:.4f} at {f.where(low)} "
                        f"to {losses[last]:.4f}")
    if f.used != last:  # early stopping / restore_best: the final model is from before the decline
        gap_used = f.gap(f.used)
        evidence.append(f"the final model has the weights of {f.where(f.used)} (best restored)")
        tips = [Suggestion("nothing required; to save time, stop earlier", _stop_at(cfg, f))]
        if gap_used is not None and gap_used > GAP:
            evidence.append(f"a train/validation gap of {gap_used * f.scale:.4f} remains at that step")
            tips += [t for t in _overfitting_suggestions(cfg, f)[1:]]
        return Finding("healthy", f"overfitting after {f.where(turn)} was caught: the final model has the weights "
                       f"of {f.where(f.used)}", evidence, tips)
    return Finding("overfitting", f"overfitting: validation stopped improving at {f.where(turn)} "
                   "while training kept improving", evidence, _overfitting_suggestions(cfg, f))


def _overfitting_suggestions(cfg: RunConfig, f: _Facts) -> list[Suggestion]:
    tips = []
    if cfg.early_stopping.metric is None:
        tips.append(Suggestion(f"stop when validation stops improving (the best was {f.where(f.best)})",
                               [f"early_stopping.metric={f.watch}", "early_stopping.patience=2"]))
    else:
        tips.append(Suggestion(f"stop at step {f.steps[f.best]}", _stop_at(cfg, f)))
    reg = cfg.regularization
    if reg.weight_decay < 0.1:
        tips.append(Suggestion("stronger weight decay", ["regularization.weight_decay=0.1"]))
    if (reg.dropout or 0.1) < 0.2:
        tips.append(Suggestion("more dropout", ["regularization.dropout=0.2", "regularization.attention_dropout=0.2"]))
    if reg.label_smoothing == 0:
        tips.append(Suggestion("label smoothing (less confident targets)", ["regularization.label_smoothing=0.1"]))
    if f.augmentable and not cfg.augmentation.methods:
        tips.append(Suggestion("augment the training text", ["augmentation.methods=delete,swap,insert"]))
    if cfg.strategy.name in ("full", "llrd"):
        tips.append(Suggestion("train fewer parameters", ["strategy.name=lora"]))
    tips.append(Suggestion("more training data; `lmtune diagnose RUN --data-curve` estimates whether it would help"))
    return tips


def _moved(before: float, after: float) -> str:
    """"went from A to B", or "stayed at A" when the two print the same."""
    return f"stayed at {after:.4f}" if f"{before:.4f}" == f"{after:.4f}" else f"went from {before:.4f} to {after:.4f}"


def _stop_at(cfg: RunConfig, f: _Facts) -> list[str]:
    return [f"train.max_steps={f.steps[f.best]}"]


def _underfitting(f: _Facts, cfg: RunConfig, final: dict[str, Any]) -> Finding | None:
    last = len(f.steps) - 1
    train_last = f.sample(last)
    evidence, why = [], None
    baseline = _majority_rate(final.get("validation", {}))
    if f.majority_baseline and baseline is not None and train_last is not None:
        if train_last < baseline + 0.1 * (1 - baseline):
            why = "the model barely beats always predicting the most frequent class"
            evidence.append(f"training-sample accuracy {train_last:.4f}, majority-class rate {baseline:.4f}")
    gap = f.gap(last)
    falling, gaining = _loss_still_falling(f.curves), f.last_gain() > f.min_delta
    still_learning = f.best == last and (falling or gaining) and (gap is None or gap < GAP)
    if why is None and still_learning:
        why = "validation and training were still improving when training ended"
        evidence.append(f"validation {f.watch} was best at the last evaluation ({f.values[last]:.4f})")
        if gaining:
            evidence.append(f"the last evaluation improved {f.watch} by {f.last_gain():.4f}, more than the "
                            f"{f.min_delta:g} that counts as a real difference for it")
        if falling:
            evidence.append("training loss fell more than 10% over the last quarter of the logged steps")
        if gap is not None:
            evidence.append(f"train/validation gap is small: {gap * f.scale:.4f}")
    if why is None:
        return None
    tips = [Suggestion("train longer", [f"train.epochs={_fmt(cfg.train.epochs * 2)}"]),
            Suggestion("a higher learning rate", [f"train.lr={_fmt(cfg.train.lr * 3)}"])]
    if cfg.strategy.name in ("head", "freeze", "bitfit"):
        tips.append(Suggestion("train more of the model", ["strategy.name=lora"]))
    reg = cfg.regularization
    if (reg.dropout or 0) > 0.2 or reg.label_smoothing > 0.1 or reg.weight_decay > 0.1 or cfg.augmentation.methods:
        tips.append(Suggestion("less regularization", ["regularization.dropout=0.1", "regularization.label_smoothing=0",
                                                      "regularization.weight_decay=0.01"]))
    return Finding("underfitting", f"underfitting: {why}", evidence, tips)


def _healthy(f: _Facts, final: dict[str, Any]) -> Finding:
    last = len(f.steps) - 1
    evidence = [f"validation {f.watch} {f.values[f.used]:.4f} at {f.where(f.used)} "
                f"(best {f.values[f.best]:.4f} at {f.where(f.best)})"]
    gap = f.gap(f.used)
    if gap is not None:
        evidence.append(f"train/validation gap {gap * f.scale:.4f} (training sample {f.sample(f.used):.4f})")
    if f.best < last:
        worse = f.worse_by(f.best, last)  # absolute for metrics, relative for losses
        evidence.append("after the best evaluation validation got worse by at most "
                        + (f"{worse * f.scale:.4f}" if f.sign > 0 else f"{100 * worse:.1f}%"))
    if gap is not None and gap > GAP:
        return Finding("healthy", f"healthy, with a gap: validation held up, but training examples score "
                       f"{gap * f.scale:.2f} "
                       "better", evidence,
                       [Suggestion("more data or regularization may close the gap; `lmtune diagnose RUN "
                                   "--data-curve` tells whether more data would help")])
    return Finding("healthy", "healthy: validation improved with training and the gap is small", evidence)


def _instability(curves: Curves, cfg: RunConfig) -> Finding | None:
    """NaN/inf losses, or loss spikes that leave training worse than it started."""
    bad = [(s, v) for s, v in curves.train if not math.isfinite(v)]
    bad += [(s, _number(m.get("loss"))) for s, m in curves.validation if not math.isfinite(_number(m.get("loss")))]
    tips = _stability_suggestions(cfg)
    if bad:
        step = min(s for s, _ in bad)
        return Finding("diverging", f"diverging: the loss became {bad[0][1]} at step {step}",
                       [f"first non-finite loss at step {step}; {len(bad)} non-finite values logged"], tips)
    spikes = _spikes(curves.train)
    losses = [v for _, v in curves.train]
    if len(losses) >= 4:
        start, end = median(losses[:3]), median(losses[-3:])
        evidence = [f"training loss started at {start:.4f} and ended at {end:.4f}"]
        evidence += [f"loss spike at step {s}: {v:.4f} (median of the 5 before: {m:.4f})" for s, v, m in spikes[:5]]
        if end >= start and (spikes or end > start * 1.1):
            return Finding("diverging", "diverging: the training loss ended higher than it started", evidence, tips)
        if len(spikes) >= 3:
            return Finding("diverging", f"unstable: {len(spikes)} training-loss spikes", evidence, tips)
    return None


def _stability_suggestions(cfg: RunConfig) -> list[Suggestion]:
    tips = [Suggestion("a lower learning rate", [f"train.lr={_fmt(cfg.train.lr / 5)}"])]
    if cfg.regularization.max_grad_norm is None or cfg.regularization.max_grad_norm > 1.0:
        tips.append(Suggestion("clip gradients", ["regularization.max_grad_norm=1.0"]))
    if cfg.train.warmup < 0.1:
        tips.append(Suggestion("a longer warmup", ["train.warmup=0.1"]))
    if cfg.train.precision == "fp16":
        tips.append(Suggestion("bf16 or fp32 instead of fp16 (overflow)", ["train.precision=bf16"]))
    return tips


def _spikes(train: list[tuple[int, float]]) -> list[tuple[int, float, float]]:
    found = []
    for i in range(5, len(train)):
        before = median(v for _, v in train[i - 5:i])
        step, value = train[i]
        if value > SPIKE_FACTOR * before and value - before > SPIKE_MIN:
            found.append((step, value, before))
    return found


def _loss_still_falling(curves: Curves) -> bool:
    losses = [v for _, v in curves.train]
    quarter = len(losses) // 4
    if quarter < 2:
        return False
    last, before = losses[-quarter:], losses[-2 * quarter:-quarter]
    return sum(last) / quarter < 0.9 * sum(before) / quarter


def _train_loss_at(curves: Curves, step: int) -> float:
    """Mean logged training loss over the (up to 3) windows ending at or before ``step``."""
    upto = [v for s, v in curves.train if s <= step][-3:]
    return sum(upto) / len(upto) if upto else math.inf


def _majority_rate(validation: dict[str, Any]) -> float | None:
    matrix = validation.get("confusion_matrix")
    if not matrix:
        return None
    rows = [sum(r) for r in matrix]
    return max(rows) / max(sum(rows), 1)


def _index_of(steps: list[int], step: int) -> int:
    return steps.index(step) if step in steps else len(steps) - 1


def _eval_every_hint(curves: Curves) -> int:
    last = curves.train[-1][0] if curves.train else 30
    return max(1, last // 10)


def _number(value: Any) -> float:
    """Logged numbers; non-finite ones were written as strings ("nan", "inf")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float) -> str:
    return f"{value:.3g}"
