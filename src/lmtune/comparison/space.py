"""What a comparison trial varies: strategy, settings the user varies (``--vary``), seed and (when tuning) learning
rate and strategy knobs."""

from __future__ import annotations

import itertools
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
    settings: tuple[str, ...] = ()
    """The candidate's fixed overrides (``--vary``), e.g. ``("preference.loss=ipo",)``."""

    @property
    def candidate(self) -> str:
        """What the leaderboard ranks: the strategy, with the varied settings it runs with."""
        return candidate_name(self.strategy, self.settings)

    @property
    def key(self) -> str:
        return f"{self.candidate}-v{self.variant}-s{self.seed}"


@dataclass(frozen=True)
class Candidate:
    strategy: str
    settings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return candidate_name(self.strategy, self.settings)


def candidate_name(strategy: str, settings: tuple[str, ...]) -> str:
    """``lora``, or ``lora+loss=ipo+beta=0.5`` (each varied key by its last part)."""
    short = [f"{key.rsplit('.', 1)[-1]}={value}" for key, _, value in (s.partition("=") for s in settings)]
    return "+".join([strategy, *short])


def candidates(strategies: list[str], vary: dict[str, list[str]] | None = None) -> list[Candidate]:
    """Every strategy with every combination of the varied settings' values."""
    grid = list(itertools.product(*[[f"{key}={value}" for value in values] for key, values in (vary or {}).items()]))
    return [Candidate(strategy, tuple(settings)) for strategy in strategies for settings in grid]


def plan(entrants: list[Candidate], seeds: list[int], variants: int) -> list[TrialSpec]:
    """All trials in the order they run: every candidate at its defaults first (so the pruner has references
    from every one early), then further seeds, then tuned variants."""
    def spec(c: Candidate, seed: int, variant: int) -> TrialSpec:
        return TrialSpec(c.strategy, seed, variant, c.settings)

    specs = [spec(c, seeds[0], 0) for c in entrants]
    specs += [spec(c, seed, 0) for seed in seeds[1:] for c in entrants]
    specs += [spec(c, seed, v) for v in range(1, variants) for c in entrants for seed in seeds]
    return specs


def overrides_for(trial: Any, spec: TrialSpec) -> list[str]:
    """Config overrides of one trial; tuned values come from the Optuna trial (``suggest_*``).

    The config's own ``train.lr`` is not used: each strategy runs at its default rate (variant 0) or a
    tuned one, since one rate for all (say LoRA at a full-fine-tuning rate) would make the comparison unfair.
    A tuned variant also picks its warmup fraction and its strategy knob (LoRA ``r``, freeze ``layers``,
    LLRD ``decay``).
    """
    default_lr = build_strategy(StrategyConfig(spec.strategy)).default_lr
    out = [f"strategy.name={spec.strategy}", f"train.seed={spec.seed}", *spec.settings]
    if spec.variant == 0:
        return [*out, f"train.lr={default_lr}"]
    lr = trial.suggest_float(f"{spec.strategy}.lr", default_lr / 4, default_lr * 4, log=True)
    out.append(f"train.lr={lr}")
    out.append(f"train.warmup={trial.suggest_categorical(f'{spec.strategy}.warmup', WARMUP_CHOICES)}")
    if spec.strategy in TUNED_KNOBS:
        knob, choices = TUNED_KNOBS[spec.strategy]
        out.append(f"strategy.{knob}={trial.suggest_categorical(f'{spec.strategy}.{knob}', choices)}")
    return out
