"""The memory a training run will need, estimated before its first step; a run that cannot fit is refused.

The estimate starts from what the process holds once the model is loaded (its resident memory: the runtime, the
data and the weights), and adds what training adds: a gradient for every trainable weight, AdamW's two moments
per trainable weight, bf16 copies of the weights where the loop runs on them, and the activations a batch keeps
for the backward pass. The activations of a block are measured, not counted from the architecture: the model's
first block runs once on a few tokens, as training will run it (precision, bf16 copies, which weights train), and
a saved-tensor hook adds up what autograd keeps for the backward pass (`measured_block`). What a block keeps
depends on what trains: a frozen projection keeps no input (LoRA's base kept 17% less than full tuning on a
0.5B decoder), a gated feed-forward keeps three of its wide tensors, GPT-2's GELU five. Every block keeps that;
with gradient checkpointing, each block keeps its input and one block at a time is recomputed in full. Language
models add their logits over the vocabulary (and their gradient). Batches are counted at the longest example
the data has (within ``train.max_length``), so the figure is an upper bound for the step. Evaluation (no
gradients) holds the logits of an evaluation batch; on a large vocabulary that can be the run's peak.

A checkpoint is written between steps, when the gradients and activations are gone, through an in-memory copy of
the weights (accelerate's safetensors serialization; torch writes the optimizer state from its own tensors): full
tuning of a 0.5B decoder grew by 1.6 GiB while it wrote one, its weights' 1.84 (on the bundled MiniLM the process's
peak was a checkpoint's: 1005 MiB with checkpoints, 895 with only the final one, 804 for the step itself), so the
peak is the largest of the step's, the checkpoint's and an evaluation batch's.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import psutil
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from lmtune.errors import LmtuneError
from lmtune.heap import in_weight_file, trim_heap, weight_files
from lmtune.tasks.language_model import SCORED_CHUNK
from lmtune.training.bf16_weights import made_bf16
from lmtune.training.dropout import fast_dropout
from lmtune.training.sharding import blocks_of, largest_unit
from lmtune.training.trained_state import leaves_base_out

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
    bf16 in place instead, no copy, and ``process`` counts them at half their loaded size (`_released`): measured
    on a 0.5B decoder's LoRA run, the process went from 2,363 to 1,413 MiB when its 1.84 GiB fp32 base became
    bf16."""
    activations: int
    checkpoint: int
    """The in-memory copy of the weights a checkpoint write makes."""
    evaluation: int
    """What an evaluation batch holds without gradients (a language model's logits)."""
    per_sample: int
    """Activation bytes of one example (what a smaller batch saves)."""
    available: int
    """Bytes the run may use: what it holds now and what the machine has free."""
    now: int = 0
    """Resident bytes when the estimate was made, before the frozen weights' conversion and the weight file's
    release: a peak already reached (loading a 1.24B decoder's fp32 file peaked above its LoRA run's steps)."""

    @property
    def training(self) -> int:
        """The peak of training (what decides whether the run fits)."""
        return self.process + self.optimizer + self.copies + max(self.gradients + self.activations, self.checkpoint,
                                                                 self.evaluation)

    @property
    def peak(self) -> int:
        """The process's peak: training's, or what it held when the estimate was made."""
        return max(self.now, self.training)

    def line(self) -> str:
        parts = ", ".join(f"{name} {value / GIB:.2f}" for name, value in (
            ("process now (weights " + f"{self.weights / GIB:.2f})", self.process), ("gradients", self.gradients),
            ("optimizer", self.optimizer), ("bf16 copies", self.copies), ("activations", self.activations),
            ("or a checkpoint's copies", self.checkpoint), ("or an evaluation batch", self.evaluation)))
        return f"estimated peak {self.peak / GIB:.2f} GiB ({parts}) of {self.available / GIB:.1f} GiB available"


def estimate(model: torch.nn.Module, cfg: Any, task: Any, longest: int, bf16_copies: bool,
             frozen_in_place: bool = False, shards: int = 1, neighbours: int = 1) -> MemoryEstimate:
    """What training ``model`` with ``cfg.train`` on examples of at most ``longest`` tokens will hold at its peak;
    ``bf16_copies``: the loop runs on bf16 copies of the weights; ``frozen_in_place``: the frozen fp32 weights
    become bf16 in place (no copies of them; with copies of the rest, or none under checkpointing); ``shards``:
    processes the weights, gradients and optimizer state are sharded over (``train.fsdp``), each holding its share;
    ``neighbours``: this machine's processes of the run, which share what it has free (each checked alone, two DDP
    processes of a 0.5B model each fitted and together would not)."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    _page_in(params)
    trainable = sum(p.numel() for p in params if p.requires_grad) // shards
    held = weights if shards == 1 else weights // shards + _gathered(model, cfg)
    length = min(longest, cfg.train.max_length)
    bf16 = cfg.train.precision != "fp32"
    low = bf16_copies or frozen_in_place or shards > 1  # the blocks run on bf16 weights
    kept = _kept(model, cfg, task, length, bf16, low) * (2 if task.capabilities.pairs else 1)
    trim_heap()  # loading (and quantizing) freed memory the next allocations reuse: not a part of the peak
    resident = psutil.Process().memory_info().rss
    halved = made_bf16(params) if frozen_in_place else []
    process = resident - (weights - held) - _released(params, halved)
    return MemoryEstimate(
        process=process, weights=held, gradients=4 * trainable, optimizer=8 * trainable,
        copies=2 * (trainable if frozen_in_place else sum(p.numel() for p in params if p.is_floating_point()))
        if bf16_copies else 0,
        activations=int(SLACK * kept * cfg.train.batch_size) + (0 if low or not bf16 else _head_cast(model)),
        per_sample=int(SLACK * kept),
        checkpoint=_checkpoint_copy(model, params, held, halved, shards),
        evaluation=_evaluation(model, cfg, task, length, bf16),
        available=_available(resident, neighbours), now=resident)


def _checkpoint_copy(model: torch.nn.Module, params: list[torch.nn.Parameter], held: int,
                     halved: list[torch.nn.Parameter], shards: int) -> int:
    """What a checkpoint write copies: the trained weights alone when a frozen base stays out of it
    (`trained_state`), else every weight in its training dtype (the ones made bf16 in place at half their size)."""
    if leaves_base_out(model, sharded=shards > 1):
        return sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return held - sum(p.numel() * 2 for p in halved)


def _available(resident: int, neighbours: int) -> int:
    """What this process holds and its share of what the machine has free, at most the machine's memory: the
    weights file's pages count in both (resident, and free as reclaimable cache), and a 1.24B decoder's full
    tuning, allowed against 26.4 GiB \"available\" on a 24 GiB machine, was killed for memory."""
    memory = psutil.virtual_memory()
    return min(memory.total // max(1, neighbours), resident + memory.available // max(1, neighbours))


def _released(params: list[torch.nn.Parameter], halved: list[torch.nn.Parameter]) -> int:
    """Resident bytes that go before the first step. The ``halved`` weights (fp32 made bf16 in place) lose half (a
    new bf16 tensor each); a weights file's mapped pages that no weight reads any more (weights quantized or made
    bf16) go with the file, which is unmapped once its last weight is (pages read while loading stay resident
    until then: 1.2-1.7 GiB of a 0.5B decoder's file after a 4-bit quantization, counted as held before)."""
    halves = sum(p.numel() * 2 for p in halved)
    files = weight_files()
    if files is None:  # not Linux: the halves only
        return halves
    halved_ids = {id(p) for p in halved}
    in_file = [p for p in params if in_weight_file(p, files)]
    kept = sum(p.numel() * p.element_size() for p in in_file if id(p) not in halved_ids)
    halved_in_file = sum(p.numel() * 2 for p in in_file if id(p) in halved_ids)
    # a halved weight read from the file: its pages go (with the file's others, less the ones still read) and its
    # new bf16 tensor comes, where a weight that was not mapped loses half of its own memory (in `halves`)
    return max(0, sum(pages for _, _, pages in files) - kept) - 2 * halved_in_file + halves


def _gathered(model: torch.nn.Module, cfg: Any) -> int:
    """Bytes a sharded process holds beyond its share: the largest unit gathered (in the run's precision), its
    gradient in that precision and the fp32 buffer that averages it over the processes."""
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


def _kept(model: torch.nn.Module, cfg: Any, task: Any, length: int, bf16: bool, copies: bool) -> int:
    """Bytes one example of ``length`` tokens keeps for the backward pass: its blocks' (measured) and its logits'."""
    config = model.config
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    try:
        with fast_dropout(model) if cfg.train.fast_dropout else nullcontext():  # as the loop will run it
            block, block_input = _block_at(model, length, bf16, copies)
        layers = len(layer_blocks(model))
    except (_NoProbe, RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError) \
            as err:  # a model the probe cannot run: counted instead
        log.debug("memory: the block probe failed (%s); activations counted from the config", err)
        block, block_input = length * _counted_block(config, cfg, bf16), 0
    # checkpointing: every block's input, and one block recomputed in full while it is differentiated
    blocks = block + block_input * layers if cfg.train.gradient_checkpointing else block * layers
    logits = 2 * (2 if bf16 else 4) * config.vocab_size * length if not task.capabilities.labelled else 0
    return blocks + logits


def _head_cast(model: torch.nn.Module) -> int:
    """Bytes of the bf16 cast of the output head's fp32 weight that autocast keeps for the backward pass (the
    blocks' casts are in their measured bytes)."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    return 2 * weight.numel() if isinstance(weight, torch.Tensor) and weight.dtype == torch.float32 else 0


def _evaluation(model: torch.nn.Module, cfg: Any, task: Any, length: int, bf16: bool) -> int:
    """Bytes an evaluation batch adds without gradients: its logits (a token task's span every position of the
    vocabulary) and the fp32 chunk they are scored in."""
    if task.capabilities.labelled:
        return 0
    vocab = model.config.vocab_size
    return cfg.train.eval_batch * length * vocab * (2 if bf16 else 4) + SCORED_CHUNK * vocab * 4


def _block_at(model: torch.nn.Module, length: int, bf16: bool, copies: bool) -> tuple[int, int]:
    """(bytes the first block keeps for the backward pass of ``length`` tokens, bytes of its input), from
    `measured_block` at 64 and 128 tokens: a part linear in the length and one quadratic (eager attention's
    probabilities), extrapolated."""
    short = min(length, 64)
    kept, block_input = measured_block(model, short, bf16, copies)
    if length <= short:
        return kept, block_input
    kept_twice, _ = measured_block(model, 2 * short, bf16, copies)
    quadratic = max(0.0, (kept_twice - 2 * kept) / (2 * short * short))
    linear = (kept - quadratic * short * short) / short
    return int(linear * length + quadratic * length * length), block_input * length // short


def layer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer layers: the blocks it names (`blocks_of`) but its embeddings, which BERT names too;
    an encoder-decoder's encoder and decoder layers both (the probe measures the first, an encoder layer)."""
    return [block for block in blocks_of(model) if "Embedding" not in type(block).__name__]


class _NoProbe(Exception):
    """The model names no transformer block (``_no_split_modules``)."""


class _Measured(Exception):
    """Raised once the first block has run: the probe needs nothing after it."""


def measured_block(model: torch.nn.Module, length: int, bf16: bool, copies: bool) -> tuple[int, int]:
    """(bytes the model's first block keeps for the backward pass on ``length`` tokens of batch 1, bytes of the
    block's input), measured as training runs it: in training mode, under bf16 autocast where ``bf16``, on bf16
    copies of its weights where ``copies`` (then its input is bf16 too), its input requiring a gradient as every
    block's but the first does. Weights are not counted; a tensor saved twice counts once. The random numbers
    it draws (dropout) are its own."""
    blocks = layer_blocks(model)
    if not blocks:
        raise _NoProbe(f"{type(model).__name__} names no blocks")
    block = blocks[0]
    prefix = next(name for name, module in model.named_modules() if module is block)
    swapped = {f"{prefix}.{name}": p.detach().to(torch.bfloat16).requires_grad_(p.requires_grad)
               for name, p in block.named_parameters() if p.is_floating_point()} if copies and bf16 else {}
    probe = _BlockProbe({t.untyped_storage().data_ptr() for t in [*model.parameters(), *swapped.values()]},
                        torch.bfloat16 if swapped else None)
    device = next(model.parameters()).device
    ids = (torch.arange(length, device=device) % min(model.config.vocab_size, 1000))[None]
    features = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}  # a mask: some ids may be the pad token's
    if model.config.is_encoder_decoder:
        features["decoder_input_ids"] = ids
    handles = [block.register_forward_pre_hook(probe.enter, with_kwargs=True), block.register_forward_hook(probe.leave)]
    training = model.training
    # checkpointing runs a block without keeping its tensors, and its recomputation keeps them all: measured whole
    checkpointed = isinstance(block, GradientCheckpointingLayer) and block.gradient_checkpointing
    try:
        model.train()
        if checkpointed:
            block.gradient_checkpointing = False
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), torch.enable_grad():
            torch.func.functional_call(model, swapped, args=(), kwargs=features, strict=False)
    except _Measured:
        return sum(probe.saved.values()), probe.input_bytes
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
        if checkpointed:
            block.gradient_checkpointing = True
    raise _NoProbe(f"{type(model).__name__}'s forward pass did not run its first block")


class _BlockProbe:
    """Forward hooks of the probed block: its input made a leaf that requires a gradient (in ``dtype``, or its
    own), and a saved-tensor hook, while the block runs, that adds up the storages autograd keeps."""

    def __init__(self, weights: set[int], dtype: torch.dtype | None):
        self.weights, self.dtype = weights, dtype
        self.saved: dict[int, int] = {}
        self.input_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._count, lambda tensor: tensor)

    def _count(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.weights:
            self.saved[storage.data_ptr()] = max(self.saved.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(self.dtype or x.dtype).requires_grad_(True)
        self.input_bytes = x.numel() * x.element_size()
        return x

    def enter(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args and isinstance(args[0], torch.Tensor):
            args = (self._input(args[0]), *args[1:])
        elif isinstance(kwargs.get("hidden_states"), torch.Tensor):
            kwargs = {**kwargs, "hidden_states": self._input(kwargs["hidden_states"])}
        else:
            raise _NoProbe(f"{type(module).__name__} takes no hidden states as its first input")
        self._hooks.__enter__()
        return args, kwargs

    def leave(self, *_: Any) -> None:
        self._hooks.__exit__(None, None, None)
        raise _Measured


def _counted_block(config: Any, cfg: Any, bf16: bool) -> int:
    """Bytes one token keeps in a block, counted from the config (models the probe cannot run): about 16
    hidden-width and 4 feed-forward-width values in the compute precision; eager attention's probabilities."""
    width = _first(config, "hidden_size", "n_embd", "d_model")
    ffn = _first(config, "intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim") or 4 * width
    heads = _first(config, "num_attention_heads", "n_head")
    element = 2 if bf16 else 4
    attention = 4 * heads * cfg.train.max_length if cfg.train.attention == "eager" else 0
    return element * (16 * width + 4 * ffn) + attention


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
    if found.training <= budget:
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
