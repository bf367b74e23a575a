"""Train on bf16 copies of the weights while the model and the optimizer keep fp32 master weights.

Under bf16 autocast every fp32 weight is cast to bf16 at each use, and the activations bounce
between bf16 (matrix products) and fp32 (layer norms, residual sums, activations), each bounce a
cast. On the bundled MiniLM at batch 32 x 16 tokens (2 CPU cores) those casts were about a tenth of
a step. Here the forward and backward run on bf16 copies of the weights, under the same autocast
(which then only upcasts the loss), so activations stay bf16 end to end. After each backward the
bf16 gradients are added to fp32 gradients of the model's own (master) parameters; the optimizer,
gradient clipping, checkpoints and evaluation see only those, exactly as without this module;
after each optimizer step the copies are refreshed from the masters.

AdamW's updates (often 1e-5 of a weight) would mostly round away in bf16 weights, which is why the
masters stay fp32: this is the usual mixed-precision recipe, not bf16 training.

Frozen weights that are not saved (a LoRA run's base) never change, so they need no fp32 master: they become bf16
in place, their own copies, and stay bf16 after training (the run was trained and evaluated on those values; made
fp32 again at the end, they grew a 1.24B decoder's LoRA run by 2.3 GiB after its last step, its peak). Frozen
weights that are saved (freeze, head, BitFit) keep their fp32 values and get copies. A copy beside an fp32 master
cost LoRA SFT of a 0.5B decoder 1 GiB more than the Hugging Face stack's autocast over fp32 weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from lmtune.evaluation.low_precision import bf16_inputs
from lmtune.heap import drop_file_pages, weight_files


class Bf16Weights:
    """bf16 compute copies of a model's floating-point parameters; call it in place of the model.

    Args:
        model: the model whose parameters stay the fp32 masters (saved, evaluated, optimized).
        rows: a master parameter updated row by row (sparse word-embedding gradients, see `lazy_rows`),
            whose copy is refreshed for the rows of the last step only.

    Weights already bf16 (a base made bf16 in place by `frozen_to_bf16`) are their own copies.
    """

    def __init__(self, model: torch.nn.Module, rows: torch.nn.Parameter | None = None):
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
        self.names = [n for n, _ in named]
        self.masters = [p for _, p in named]
        self.copies = [p.detach().to(torch.bfloat16).requires_grad_(p.requires_grad) for p in self.masters]
        self._by_name = dict(zip(self.names, self.copies, strict=True))
        trainable = [(m, c) for m, c in zip(self.masters, self.copies, strict=True) if m.requires_grad]
        self._trainable = trainable
        self._dense = [(m, c) for m, c in trainable if m is not rows]
        self._rows = next(((m, c) for m, c in trainable if m is rows), None)

    def __call__(self, **features: Any) -> Any:
        features = bf16_inputs(features)
        # the model's forward (and accelerate's autocast around it) with the copies in place of the
        # parameters; tied parameters (one name here) stay tied
        return torch.func.functional_call(self.model, self._by_name, args=(), kwargs=features, strict=False)

    @torch.no_grad()
    def gradients_to_masters(self) -> None:
        """Add the copies' gradients of the last backward to the masters' (fp32) and clear the copies'."""
        for master, copy in self._trainable:
            grad = copy.grad
            if grad is None:
                continue
            copy.grad = None
            grad = grad.float()
            if master.grad is None:
                master.grad = grad.coalesce() if grad.is_sparse else grad
            elif grad.is_sparse:
                master.grad = (master.grad + grad).coalesce()
            else:
                master.grad.add_(grad)

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the masters into the bf16 copies after an optimizer step (before the gradients are cleared)."""
        if self._dense:
            torch._foreach_copy_([c for _, c in self._dense], [m for m, _ in self._dense])
        if self._rows is not None:
            master, copy = self._rows
            if master.grad is not None:
                used = master.grad.coalesce().indices()[0]
                copy.index_copy_(0, used, master.index_select(0, used).to(copy.dtype))


@torch.no_grad()
def frozen_to_bf16(model: torch.nn.Module) -> None:
    """The frozen fp32 weights of ``model`` in bf16, in place (weights that are not saved: a LoRA base). Also under
    gradient checkpointing, which runs on the model's own weights (no copies): left in fp32, autocast cast every
    frozen weight to bf16 at each use, in the forward pass and again in the recomputation, and kept the output
    head's cast (272 MB on a 0.5B decoder) for the backward pass."""
    files = weight_files() or []
    for param in made_bf16(model.parameters()):
        loaded = param.data
        param.data = loaded.to(torch.bfloat16)
        drop_file_pages(loaded, files)  # its pages in the mapped weights file: not needed any more


def made_bf16(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The weights `frozen_to_bf16` converts: the frozen fp32 ones."""
    return [p for p in params if not p.requires_grad and p.dtype == torch.float32]
