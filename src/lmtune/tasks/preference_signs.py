"""How preference tuning goes wrong, read from a run's curves (`PreferenceTuning.observations`).

Three signs of over-optimization, each with the numbers behind it:
- both replies pushed down: the chosen reply's log-probability falls while the margin grows (the model wins the
  comparison by making the rejected reply even less likely, and forgets the chosen one too);
- the training pairs are learned (train reward accuracy near 1) while validation stalls;
- the model drifts from the reference (KL grows) without validation gain.
"""

from __future__ import annotations

from typing import Any

from lmtune.tasks.base import Observation

LEARNED = 0.95
"""Train reward accuracy at or above this: the training pairs are learned."""
STALL = 0.02
"""Validation reward accuracy gaining less than this after the middle evaluation: it stalls."""
DROP = 0.05
"""The chosen reply's log-probability per token falling more than this (nats) is pushed down."""


def preference_signs(validation: list[tuple[int, dict]], sample: dict[int, dict], cfg: Any) -> list[Observation]:
    """The signs found in the curves (at least two evaluations)."""
    if len(validation) < 2:
        return []
    signs = [_both_pushed_down(validation, cfg), _learned_but_stalled(validation, sample, cfg),
             _drift_without_gain(validation, cfg)]
    return [sign for sign in signs if sign is not None]


def _first_last(validation: list[tuple[int, dict]], name: str) -> tuple[float, float]:
    return validation[0][1][name], validation[-1][1][name]


def _both_pushed_down(validation: list[tuple[int, dict]], cfg: Any) -> Observation | None:
    chosen, margin, rejected = (_first_last(validation, n) for n in ("chosen_logp", "reward_margin", "rejected_logp"))
    if not (chosen[0] - chosen[1] > DROP and margin[1] > margin[0]):
        return None
    tips = [("keep the chosen reply likely with an SFT term on it", ["preference.sft_weight=0.5"])] \
        if cfg.preference.sft_weight == 0 else []
    tips.append(("a stronger pull toward the reference", [f"preference.beta={2 * cfg.preference.strength:g}"]))
    return Observation(
        "both replies are pushed down: the chosen reply gets less likely while the margin grows",
        [f"validation chosen log-probability per token fell from {chosen[0]:.3f} to {chosen[1]:.3f}",
         f"validation rejected log-probability per token went from {rejected[0]:.3f} to {rejected[1]:.3f}",
         f"meanwhile the reward margin rose from {margin[0]:.3f} to {margin[1]:.3f} nats"], tips)


def _learned_but_stalled(validation: list[tuple[int, dict]], sample: dict[int, dict],
                         cfg: Any) -> Observation | None:
    last_step = validation[-1][0]
    train = sample.get(last_step, {}).get("reward_accuracy")
    if train is None or train < LEARNED or len(validation) < 3:
        return None
    middle = validation[len(validation) // 2 - 1][1]["reward_accuracy"]
    later = max(m["reward_accuracy"] for _, m in validation[len(validation) // 2:])
    if later - middle >= STALL:
        return None
    best_step = max(validation, key=lambda v: v[1]["reward_accuracy"])[0]
    return Observation(
        "over-optimization: the training pairs are learned while validation stalls",
        [f"training-sample reward accuracy is {train:.3f} at step {last_step}",
         f"validation reward accuracy went from {middle:.3f} (step {validation[len(validation) // 2 - 1][0]}) to at "
         f"most {later:.3f} after it"],
        [("stop where validation was best", [f"train.max_steps={best_step}"]),
         ("a stronger pull toward the reference", [f"preference.beta={2 * cfg.preference.strength:g}"]),
         ("more (or more varied) preference pairs", [])])


def _drift_without_gain(validation: list[tuple[int, dict]], cfg: Any) -> Observation | None:
    best = max(range(len(validation)), key=lambda i: validation[i][1]["reward_accuracy"])
    kl_best, kl_last = validation[best][1]["kl"], validation[-1][1]["kl"]
    if best == len(validation) - 1 or kl_last < max(2 * kl_best, 0.01):
        return None
    return Observation(
        "the model drifts from the reference without validation gain",
        [f"KL to the reference grew from {kl_best:.4f} (step {validation[best][0]}, best validation reward "
         f"accuracy {validation[best][1]['reward_accuracy']:.3f}) to {kl_last:.4f} at step {validation[-1][0]}",
         f"validation reward accuracy is {validation[-1][1]['reward_accuracy']:.3f} at the end"],
        [("a stronger pull toward the reference", [f"preference.beta={2 * cfg.preference.strength:g}"]),
         ("a lower learning rate", [f"train.lr={cfg.train.lr / 2:g}"])])
