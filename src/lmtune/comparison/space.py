"""What a comparison trial varies: strategy, seed and (when tuning) learning rate and strategy knobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmtune.config import StrategyConfig
from lmtune.strategies import build_strategy

TUNED_KNOBS = {"lora": ("r", [4, 8, 16]), "freeze": ("layers", [2, 3, 4]), "llrd": ("decay", [0.8, 0.85, 0.9, 0.95])}
"""Strategy knobs tuned besides the learning rate and warmup, with their choices."""
WARMUP_CHOICES = [0.0, 0.06, 0.1]
"""Warmup fractions a tuned variant chooses from (the config's own is variant 0's)."""


@dataclass(frozen=True)
class TrialSpec:
    """One planned trial: a strategy, a seed, and whether its settings are tuned or the defaults."""

    strategy: str
    seed: int
    variant: int
    """0: the strategy's default settings; 1..: settings sampled by the tuner."""

    @property
    def key(self) -> str:
        return f"{self.strategy}-v{self.variant}-s{self.seed}"


def plan(strategies: list[str], seeds: list[int], variants: int) -> list[TrialSpec]:
    """All trials in the order they run: every strategy at its defaults first (so the pruner has references
    from every strategy early), then further seeds, then tuned variants."""
    specs = [TrialSpec(s, seeds[0], 0) for s in strategies]
    specs += [TrialSpec(s, seed, 0) for seed in seeds[1:] for s in strategies]
    specs += [TrialSpec(s, seed, v) for v in range(1, variants) for s in strategies for seed in seeds]
    return specs


def overrides_for(trial: Any, spec: TrialSpec) -> list[str]:
    """Config overrides of one trial; tuned values come from the Optuna trial (``suggest_*``).

    The config's own ``train.lr`` is not used: each strategy runs at its default rate (variant 0) or a
    tuned one, since one rate for all (say LoRA at a full-fine-tuning rate) would make the comparison unfair.
    A tuned variant also picks its warmup fraction and its strategy knob (LoRA ``r``, freeze ``layers``,
    LLRD ``decay``).
    """
    default_lr = build_strategy(StrategyConfig(spec.strategy)).default_lr
    out = [f"strategy.name={spec.strategy}", f"train.seed={spec.seed}"]
    if spec.variant == 0:
        return [*out, f"train.lr={default_lr}"]
    lr = trial.suggest_float(f"{spec.strategy}.lr", default_lr / 4, default_lr * 4, log=True)
    out.append(f"train.lr={lr}")
    out.append(f"train.warmup={trial.suggest_categorical(f'{spec.strategy}.warmup', WARMUP_CHOICES)}")
    if spec.strategy in TUNED_KNOBS:
        knob, choices = TUNED_KNOBS[spec.strategy]
        out.append(f"strategy.{knob}={trial.suggest_categorical(f'{spec.strategy}.{knob}', choices)}")
    return out
