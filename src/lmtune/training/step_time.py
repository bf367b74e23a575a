"""How long a training step will take, estimated before the first one, so a long run says so up front.

A step's work is counted in floating-point operations: each weight of a matrix product costs 2 per token forward;
the backward pass costs 2 more per token for the gradient of the layer's input, and 2 more for its weight's
gradient where that weight trains (a LoRA run's frozen base needs only the first); checkpointing repeats the
forward pass. Attention adds its score and mix products (4 x width x length per token and layer, half of it
masked away when causal). The machine's speed is measured, not assumed: a few matrix products of the model's own
width on this machine, in the run's precision (bf16 is 2-3x fp32 on CPUs with AMX, level on those without). What
the count leaves out is measured: real steps reach a fraction of that speed (norms, activations, casts and the
loss move memory more than they compute, much more so beside bf16's fast products), the optimizer step costs
about 1.4 ns per trained weight, and each step has a fixed cost (the loop, collation, small kernels).

Fitted on 2 cores with AMX (MiniLM classification full and LoRA at batch 8 and 32, a 5.9M scratch decoder with and
without checkpointing, stories260K SFT, bf16 and fp32): measured over estimated 0.73-1.13 (an estimate to tell
minutes from hours, not a timer).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("lmtune")
SLOWDOWN = {True: 4.0, False: 1.5}
"""Step time of the matrix-product work over that work at the measured speed, bf16 (True) and fp32."""
PER_TRAINED_WEIGHT = 1.4e-9
"""Seconds of optimizer step per trained weight (AdamW: weight, gradient and two moments read and written)."""
PER_STEP = 0.085
"""Seconds each step costs whatever its size."""


@dataclass(frozen=True)
class StepEstimate:
    flops: float
    """Floating-point operations of one optimizer step."""
    rate: float
    """Matrix-product speed measured on this machine (FLOP/s) at the run's precision."""
    tokens: int
    """Tokens of one optimizer step (examples x their mean length, every accumulated batch)."""
    trained: int
    """Trained weights (the optimizer's work)."""
    bf16: bool

    @property
    def seconds(self) -> float:
        return SLOWDOWN[self.bf16] * self.flops / self.rate + PER_TRAINED_WEIGHT * self.trained + PER_STEP

    def line(self, steps: int) -> str:
        return (f"about {_duration(self.seconds)} per step, {_duration(self.seconds * steps)} for {steps} steps "
                f"({self.flops / 1e9:.1f} GFLOP per step of {self.tokens} tokens; this machine's matrix products "
                f"measured at {self.rate / 1e9:.0f} GFLOP/s)")


def estimate(model: torch.nn.Module, cfg: Any, mean_length: float, pairs: bool, bf16: bool) -> StepEstimate:
    """One optimizer step of ``model`` with ``cfg.train`` on examples of ``mean_length`` tokens on average."""
    train = cfg.train
    tokens = int(train.batch_size * train.grad_accum * mean_length * (2 if pairs else 1))
    frozen, trained = _matrix_weights(model)
    width, layers, causal = _shape(model)
    per_token = 2 * (frozen + trained)  # forward
    per_token += 2 * (frozen + trained) + 2 * trained  # backward: inputs' gradients, and trained weights'
    if train.gradient_checkpointing:
        per_token += 2 * (frozen + trained)
    attention = 4 * width * mean_length * layers * (0.5 if causal else 1.0)
    per_token += 3 * attention
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return StepEstimate(flops=float(per_token * tokens), rate=_measured_rate(width, bf16), tokens=tokens,
                        trained=trainable, bf16=bf16)


def _matrix_weights(model: torch.nn.Module) -> tuple[int, int]:
    """(frozen, trained) weights of the matrix products a token goes through: every linear layer (a 4-bit one
    by its shape, not its packed storage) and a language model's output projection."""
    frozen = trained = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 2 or isinstance(module, torch.nn.Embedding):
            continue
        size = (module.in_features * module.out_features if hasattr(module, "in_features") and
                hasattr(module, "out_features") else weight.numel())
        if weight.requires_grad:
            trained += size
        else:
            frozen += size
    return frozen, trained


def _shape(model: torch.nn.Module) -> tuple[int, int, bool]:
    config = model.config
    width = next((v for k in ("hidden_size", "n_embd", "d_model") if isinstance(v := getattr(config, k, None), int)),
                 256)
    layers = next((v for k in ("num_hidden_layers", "n_layer", "num_layers")
                   if isinstance(v := getattr(config, k, None), int)), 1)
    return width, layers, not getattr(config, "is_encoder_decoder", False) and "ForCausalLM" in type(
        _inner(model)).__name__


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    get_base = getattr(model, "get_base_model", None)  # a PEFT wrapper: the model inside
    return get_base() if callable(get_base) else model


@functools.cache
def _measured_rate(width: int, bf16: bool, budget: float = 0.2) -> float:
    """FLOP/s of ``width``-wide matrix products on this machine, in bf16 or fp32, over ``budget`` s (once per
    process and shape: a second run in the process reuses it)."""
    rows, inner = 512, max(64, width)
    own = torch.Generator().manual_seed(0)  # not the global one: a run's random numbers stay its seed's
    a, b = torch.randn(rows, inner, generator=own), torch.randn(inner, 4 * inner, generator=own)
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    torch.mm(a, b)  # warm-up: the first call picks its kernel
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < budget or done < 3:
        torch.mm(a, b)
        done += 1
    return 2 * rows * inner * 4 * inner * done / elapsed


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
