"""The memory a training run will need, estimated before its first step; a run that cannot fit is refused.

The estimate starts from what the process holds once the model is loaded (its resident memory: the runtime, the
data and the weights), and adds what training adds: a gradient for every trainable weight, AdamW's two moments
per trainable weight, bf16 copies of the weights where the loop runs on them, and the activations a batch keeps
for the backward pass. Activations are per token and per block: about 16 hidden-width and 4 feed-forward-width
values (inputs of the projections and norms, residuals, dropout masks), in the compute precision; eager attention
also keeps its probabilities (heads x length per token); gradient checkpointing keeps one block's worth plus each
block's input. Language models add their logits over the vocabulary (and their gradient). Batches are counted at
the longest example the data has (within ``train.max_length``), so the figure is an upper bound for the step.

A checkpoint is written between steps, when the gradients and activations are gone, through in-memory copies of
what it writes (accelerate's safetensors serialization of every weight, torch's of the optimizer state): on the
bundled MiniLM the process's peak was a checkpoint's (1005 MiB with checkpoints, 895 with only the final one,
804 for the step itself), so the peak is the larger of the step's and the checkpoint's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from lmtune.errors import LmtuneError

log = logging.getLogger("lmtune")
GIB = 2**30
MARGIN = 0.95
"""Share of the memory available that a run may plan to use."""
SLACK = 1.4
"""Measured peaks over the activation count above (the allocator's rounding, transient buffers of the loss and
of the optimizer step): 1.36-1.42 for decoders of 0.3M-29M parameters, which this factor brings within 2%."""


@dataclass(frozen=True)
class MemoryEstimate:
    process: int
    """Resident bytes now: runtime, data and the loaded weights."""
    weights: int
    gradients: int
    optimizer: int
    copies: int
    """bf16 copies of the weights (``train.bf16_weights``). Frozen weights that are not saved (LoRA's base) become
    bf16 in place instead, no copy, and ``process`` counts them at half their loaded size: measured on a 0.5B
    decoder's LoRA run, the process went from 2,363 to 1,413 MiB when its 1.84 GiB fp32 base became bf16 (the
    mapped file's pages are released with the last tensor on them)."""
    activations: int
    checkpoint: int
    """In-memory copies a checkpoint write makes (every weight and the optimizer state)."""
    per_sample: int
    """Activation bytes of one example (what a smaller batch saves)."""
    available: int
    """Bytes the run may use: what it holds now and what the machine has free."""

    @property
    def peak(self) -> int:
        return self.process + self.optimizer + self.copies + max(self.gradients + self.activations, self.checkpoint)

    def line(self) -> str:
        parts = ", ".join(f"{name} {value / GIB:.2f}" for name, value in (
            ("process now (weights " + f"{self.weights / GIB:.2f})", self.process), ("gradients", self.gradients),
            ("optimizer", self.optimizer), ("bf16 copies", self.copies), ("activations", self.activations),
            ("or a checkpoint's copies", self.checkpoint)))
        return f"estimated peak {self.peak / GIB:.2f} GiB ({parts}) of {self.available / GIB:.1f} GiB available"


def estimate(model: torch.nn.Module, cfg: Any, task: Any, longest: int, bf16_copies: bool,
             frozen_copied: bool = True, shards: int = 1, neighbours: int = 1) -> MemoryEstimate:
    """What training ``model`` with ``cfg.train`` on examples of at most ``longest`` tokens will hold at its peak;
    ``frozen_copied``: frozen weights get bf16 copies too (else they become bf16 in place); ``shards``: processes
    the weights, gradients and optimizer state are sharded over (``train.fsdp``), each holding its share;
    ``neighbours``: this machine's processes of the run, which share what it has free (each checked alone, two DDP
    processes of a 0.5B model each fitted and together would not)."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    _page_in(params)
    trainable = sum(p.numel() for p in params if p.requires_grad) // shards
    held = weights if shards == 1 else weights // shards + _gathered(model, cfg)
    tokens = min(longest, cfg.train.max_length) * (2 if task.capabilities.pairs else 1)
    per_sample = tokens * _per_token(model.config, cfg, task, tokens)
    resident = psutil.Process().memory_info().rss
    process = resident - (weights - held)  # sharding frees the rest of the loaded weights
    if bf16_copies and not frozen_copied:  # the frozen fp32 weights become bf16 in place: half their bytes go
        process -= sum(p.numel() * 2 for p in params if not p.requires_grad and p.dtype == torch.float32)
    return MemoryEstimate(
        process=process, weights=held, gradients=4 * trainable, optimizer=8 * trainable,
        copies=2 * (sum(p.numel() for p in params if p.is_floating_point()) if frozen_copied else trainable)
        if bf16_copies else 0,
        activations=int(SLACK * per_sample * cfg.train.batch_size), per_sample=int(SLACK * per_sample),
        checkpoint=held + 8 * trainable,
        available=resident + psutil.virtual_memory().available // max(1, neighbours))


def _gathered(model: torch.nn.Module, cfg: Any) -> int:
    """Bytes a sharded process holds beyond its share: the largest unit gathered (in the run's precision), its
    gradient in that precision and the fp32 buffer that averages it over the processes."""
    from lmtune.training.sharding import largest_unit

    element = 4 if cfg.train.precision == "fp32" else 2
    return largest_unit(model) * (2 * element + 4)


@torch.no_grad()
def _page_in(params: list[torch.Tensor]) -> None:
    """Read one value per memory page of every weight. transformers maps safetensors files and a weight's pages
    become resident when first read, so right after loading the process's resident size left most of the weights
    out (0.46 GiB for 1.84 GiB of weights, a 0.5B model) and the estimate with it."""
    for param in params:
        flat = param.detach().reshape(-1)
        step = max(1, 4096 // max(1, param.element_size()))
        flat[::step].sum()


def _per_token(config: Any, cfg: Any, task: Any, length: int) -> int:
    """Activation bytes one token keeps for the backward pass, over every block (and its logits)."""
    width = _first(config, "hidden_size", "n_embd", "d_model")
    ffn = _first(config, "intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim") or 4 * width
    heads = _first(config, "num_attention_heads", "n_head")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    element = 4 if cfg.train.precision == "fp32" else 2
    block = element * (16 * width + 4 * ffn) + (4 * heads * length if cfg.train.attention == "eager" else 0)
    # checkpointing: every block's input, and two blocks' worth while one is recomputed and differentiated
    kept = 2 * block + element * width * layers if cfg.train.gradient_checkpointing else block * layers
    logits = 2 * element * config.vocab_size if not task.capabilities.labelled else 0
    return kept + logits


def _first(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def check_fits(found: MemoryEstimate, cfg: Any, can_shard: bool = False) -> None:
    """Log the estimate; refuse (one line: the estimate, the memory available, a setting that fits) when over.
    ``can_shard``: the run has several processes and trains every weight, unsharded (``train.fsdp`` would help)."""
    log.info("memory: %s", found.line())
    budget = found.available * MARGIN
    if found.peak <= budget:
        return
    fixed = found.process + found.optimizer + found.copies + found.gradients
    batch = int((budget - fixed) // found.per_sample) if found.per_sample else 0
    # the weights' share (gradients, optimizer state, a checkpoint's copies) fits whatever the batch, or not
    weights_fit = max(fixed, found.process + found.optimizer + found.copies + found.checkpoint) <= budget
    if weights_fit and batch >= 1:
        fix = f"train.batch_size={batch}"
    elif weights_fit and not cfg.train.gradient_checkpointing:
        fix = "train.gradient_checkpointing=true"
    elif can_shard:
        fix = "train.fsdp=true"
    elif cfg.strategy.name not in ("lora", "qlora"):
        fix = "strategy.name=lora"
    elif cfg.strategy.name == "lora":
        fix = "strategy.name=qlora"
    else:
        fix = f"train.max_length={max(16, cfg.train.max_length // 2)}"
    raise LmtuneError(f"train: this run would not fit in memory: {found.line()}; try {fix}")
