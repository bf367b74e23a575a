"""The preference losses, from each pair's summed log-probabilities of its two replies.

Each takes the model's (policy's) and the reference's summed log-probabilities of the chosen and rejected
replies, and their token counts, and returns the loss of each pair. The metrics that judge a run (reward accuracy
and margin, `lmtune.tasks.preference`) are one definition for every loss, so that runs of different losses and
betas compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmtune.config.schema import PreferenceConfig


@dataclass(frozen=True)
class PairLogps:
    """Per pair, (pairs,) each: summed log-probabilities of the replies and their token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)


    @property
    def margin(self) -> torch.Tensor:
        """The chosen reply's log-ratio to the reference minus the rejected one's (DPO's implicit reward margin
        without beta), in nats: > 0 when the model moved toward the chosen reply more than toward the other."""
        return (self.chosen - self.ref_chosen) - (self.rejected - self.ref_rejected)


def preference_loss(p: PairLogps, cfg: PreferenceConfig, smoothing: float = 0.0) -> torch.Tensor:
    """The configured loss of each pair, (pairs,) (plus ``sft_weight`` times the chosen reply's NLL per token).

    ``smoothing`` (dpo, simpo; training only): the fraction of pairs assumed mislabelled (conservative DPO, Mitchell
    2023), which is what label smoothing means for a binary preference.
    """
    beta = cfg.strength
    if cfg.loss == "dpo":
        loss = _smoothed_sigmoid(beta * p.margin, smoothing)
    elif cfg.loss == "ipo":
        tokens_c, tokens_r = p.chosen_tokens.clamp(min=1), p.rejected_tokens.clamp(min=1)
        ratio_c, ratio_r = (p.chosen - p.ref_chosen) / tokens_c, (p.rejected - p.ref_rejected) / tokens_r
        loss = (ratio_c - ratio_r - 1 / (2 * beta)) ** 2
    elif cfg.loss == "simpo":
        loss = _smoothed_sigmoid(beta * (p.chosen_mean - p.rejected_mean) - cfg.margin, smoothing)
    elif cfg.loss == "orpo":
        mean_c, mean_r = p.chosen_mean, p.rejected_mean
        log_odds = (mean_c - mean_r) - (_log1mexp(mean_c) - _log1mexp(mean_r))
        loss = -mean_c - beta * F.logsigmoid(log_odds)
    else:  # the config check refuses other names
        raise ValueError(f"unknown preference loss {cfg.loss!r}")
    if cfg.sft_weight:
        loss = loss - cfg.sft_weight * p.chosen_mean
    return loss


def _smoothed_sigmoid(logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    """-log σ(logits), with a fraction ``smoothing`` of pairs taken as flipped (Mitchell's conservative DPO)."""
    return -(1 - smoothing) * F.logsigmoid(logits) - smoothing * F.logsigmoid(-logits)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, accurately near 0 (a reply of probability ~1 has odds near infinity)."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
