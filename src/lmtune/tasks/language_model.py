"""Causal language modelling (pretraining, from scratch or continued): predict each token from those before it.

The loss is the mean negative log-likelihood per predicted token, in nats; perplexity is its exponential.
Training concatenates the documents and packs them into blocks of ``train.max_length`` tokens (no
padding; a block's first token is not predicted). Evaluation scores each document on its own, from its
first token, so no token is given another document as context.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.data.corpus import document_ids, document_windows, pack, read_corpus
from lmtune.errors import DataError
from lmtune.tasks.base import TASKS
from lmtune.training.losses import cross_entropy

IGNORE = -100


class TokenTask:
    """Shared by the token-level tasks: a cross-entropy over target tokens, evaluated as nats/token."""

    shift = True
    """Position t predicts token t + 1 (causal); False: position t predicts its own (masked) token."""
    primary_metric = "loss"
    greater_is_better = False
    labelled = False
    """Evaluation data needs no label column: the targets are the text itself."""
    low_precision_logits = True
    """The training loop may hand the loss bf16 logits: `cross_entropy` upcasts them chunk by chunk."""

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TokenTask:
        task = cls()
        task.restore(state)
        return task

    def restore(self, state: dict[str, Any]) -> None:
        """Settings saved with the run (none by default)."""

    def state(self) -> dict[str, Any]:
        return {}

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The token each position must predict (IGNORE: none). Causal: the labels move one step left, which is
        cheaper than slicing the (tokens × vocabulary) logits."""
        return F.pad(labels[:, 1:], (0, 1), value=IGNORE) if self.shift else labels

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean NLL per target token."""
        logits, labels = outputs.logits, self.targets(batch["labels"])
        return cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), label_smoothing)

    def token_losses(self, outputs: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(summed NLL, target count, correct top-1 count), each (batch,)."""
        logits, labels = outputs.logits, self.targets(batch["labels"])
        targets = labels != IGNORE
        chosen = logits[targets].float()
        nll = F.cross_entropy(chosen, labels[targets], reduction="none")
        correct = (chosen.argmax(-1) == labels[targets]).double()
        rows = targets.nonzero()[:, 0]
        n = labels.shape[0]
        total = torch.zeros(n, dtype=torch.float64, device=nll.device).index_add_(0, rows, nll.double())
        right = torch.zeros(n, dtype=torch.float64, device=nll.device).index_add_(0, rows, correct)
        return total, targets.sum(-1), right

    def example_losses(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        total, count, _ = self.token_losses(outputs, batch)
        return total / count.clamp(min=1)

    @torch.no_grad()
    def evaluate_model(self, model: Any, examples: list[dict], batch_size: int, pad_id: int, device: Any,
                       autocast: Any, example_losses: bool = False, shard: tuple[int, int] = (0, 1)) -> dict:
        """Loss (nats per target token), perplexity and top-1 accuracy over ``examples``, sharded over
        processes (``shard`` = (rank, world size)); every process gets the same result."""
        from lmtune.data import collate
        from lmtune.data.batching import eval_batches
        from lmtune.data.collate import TARGETS

        was_training = model.training
        model.eval()
        rank, world = shard
        sums = torch.zeros(3, dtype=torch.float64)
        per_example: dict[int, float] = {}
        for indices in eval_batches([len(e["input_ids"]) for e in examples], batch_size)[rank::world]:
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], pad_id).items()}
            with autocast if autocast is not None else nullcontext():
                outputs = model(**{k: v for k, v in batch.items() if k not in TARGETS})
            total, count, correct = (t.double().cpu() for t in self.token_losses(outputs, batch))
            sums += torch.stack([total.sum(), count.sum(), correct.sum()])
            per_example.update(zip(indices, (total / count.clamp(min=1)).tolist(), strict=True))
        if world > 1:
            from accelerate.utils import gather_object, reduce

            sums = reduce(sums.to(device), reduction="sum").cpu()
            if example_losses:
                per_example = {k: v for part in gather_object([per_example]) for k, v in part.items()}
        model.train(was_training)
        loss = (sums[0] / sums[1].clamp(min=1)).item()
        result: dict[str, Any] = {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50)), 4),
                                  "accuracy": round(100 * (sums[2] / sums[1].clamp(min=1)).item(), 4),
                                  "tokens": int(sums[1].item())}
        result.update(self.extra_metrics(model, examples, batch_size, pad_id, device, autocast))
        if example_losses:
            result["example_losses"] = [round(per_example[i], 5) for i in range(len(examples))]
        return result

    def extra_metrics(self, model: Any, examples: list[dict], batch_size: int, pad_id: int, device: Any,
                      autocast: Any) -> dict[str, Any]:
        """Task-specific metrics beyond loss and accuracy (masked LM: pseudo-perplexity)."""
        return {}


def load_causal_lm(source: str | Path, **kwargs: Any) -> torch.nn.Module:
    """A causal LM from a model directory or Hub id; a directory with a config but no weights (a scratch
    model's ``RUN/base``) gives a new, randomly initialised model (seeded by the caller)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(source)
    if path.is_dir() and not _has_weights(path):
        config = AutoConfig.from_pretrained(path)
        attention = kwargs.pop("attn_implementation", None)
        for key, value in kwargs.items():  # dropout overrides
            setattr(config, key, value)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


@TASKS.register("causal_lm")
class CausalLM(TokenTask):
    name = "causal_lm"
    metric_names = ("loss", "perplexity", "accuracy")
    default_columns = {"text": "text"}
    reader = staticmethod(read_corpus)
    """Plain-text corpora are read as documents (see `lmtune.data.corpus`), not as one row per line."""

    def fit(self, train: Table, data: DataConfig) -> None:
        train.require(data.text)
        train.texts(data.text)  # every document is text

    def build_model(self, source: str | Path, **kwargs: Any) -> torch.nn.Module:
        return load_causal_lm(source, **kwargs)

    def encode(self, table: Table, tokenizer: Any, data: DataConfig, max_length: int) -> list[dict]:
        """Each document on its own, in windows of ``max_length`` (evaluation; training packs them)."""
        table.require(data.text)
        windows = document_windows(document_ids(table.texts(data.text), tokenizer), max_length)
        if not windows:
            raise DataError(f"{table.source}: too little text; expected documents of 2 tokens or more")
        return windows

    def training_examples(self, examples: list[dict], max_length: int) -> list[dict]:
        """The documents packed into blocks of ``max_length`` tokens: no padding, no token dropped."""
        return pack(examples, max_length)

    def prompts(self, table: Table, data: DataConfig) -> list[str]:
        """The inputs of ``lmtune predict``: each row's text, to be continued."""
        return table.texts(data.text if data.text in table.columns else "text")

    def prompt_ids(self, text: str, tokenizer: Any) -> list[int]:
        """A prompt as the model saw documents in training: BOS, then the text."""
        return document_ids([text], tokenizer)[0][: None if tokenizer.bos_token_id is not None else -1]
