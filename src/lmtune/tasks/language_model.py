"""Causal language modelling (pretraining, from scratch or continued): predict each token from those before it.

The loss is the mean negative log-likelihood per predicted token, in nats; perplexity is its exponential.
Training concatenates the documents and packs them into blocks of ``train.max_length`` tokens (no
padding; a block's first token is not predicted). Evaluation scores each document on its own, from its
first token, so no token is given another document as context.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.data.collate import IGNORE_INDEX, model_inputs
from lmtune.data.corpus import document_ids, document_windows, pack, read_corpus
from lmtune.errors import DataError, LmtuneError
from lmtune.tasks.base import LOSS, TASKS, Capabilities, Metric, Scoring, Task
from lmtune.tasks.explained import NextTokenProbability
from lmtune.tasks.losses import cross_entropy

SCORED_CHUNK = 256
"""Target positions scored at once in evaluation (their fp32 logits: 156 MB at a 151,936-token vocabulary)."""


class TokenTask(Task):
    """Shared by the token-level tasks: a cross-entropy over target tokens, evaluated as nats/token."""

    shift = True
    """Position t predicts token t + 1 (causal); False: position t predicts its own (masked) token."""
    primary_metric = "loss"
    metrics = (LOSS, Metric("perplexity", False, "perplexity", 0.1), Metric("accuracy", True, "percent", 0.2))
    capabilities = Capabilities(labelled=False, low_precision_logits=True)

    @classmethod
    def from_state(cls, state: dict[str, Any], cfg: Any = None) -> TokenTask:
        task = cls()
        task.restore(state, cfg)
        return task

    def restore(self, state: dict[str, Any], cfg: Any) -> None:
        """Settings saved with the run (none by default)."""

    def state(self) -> dict[str, Any]:
        return {}

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The token each position must predict (IGNORE_INDEX: none). Causal: the labels move one step left, which is
        cheaper than slicing the (tokens × vocabulary) logits."""
        return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX) if self.shift else labels

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean NLL per target token."""
        logits, labels = outputs.logits, self.targets(batch["labels"])
        return cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), label_smoothing)

    def token_losses(self, outputs: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(summed NLL, target count, correct top-1 count), each (batch,).

        The target positions' logits go to fp32 ``SCORED_CHUNK`` at a time: all at once, that copy was the peak of
        a 0.5B decoder's SFT run (2 x 1,024 tokens x 151,936 entries, 1.2 GB beyond the step's own peak)."""
        logits, labels = outputs.logits, self.targets(batch["labels"])
        targets = labels != IGNORE_INDEX
        n = labels.shape[0]
        total = torch.zeros(n, dtype=torch.float64, device=logits.device)
        right = torch.zeros(n, dtype=torch.float64, device=logits.device)
        positions = targets.nonzero()
        for start in range(0, len(positions), SCORED_CHUNK):
            rows, columns = positions[start:start + SCORED_CHUNK].unbind(1)
            chosen, gold = logits[rows, columns].float(), labels[rows, columns]
            total.index_add_(0, rows, F.cross_entropy(chosen, gold, reduction="none").double())
            right.index_add_(0, rows, (chosen.argmax(-1) == gold).double())
        return total, targets.sum(-1), right

    def score_batch(self, model: Any, batch: dict[str, torch.Tensor], examples: list[dict], indices: list[int],
                    scoring: Scoring) -> list[tuple[float, ...]]:
        """(summed NLL, target tokens, correct top-1) of each example."""
        total, count, right = (t.double().cpu() for t in self.token_losses(model(**model_inputs(batch)), batch))
        return list(zip(total.tolist(), count.tolist(), right.tolist(), strict=True))

    def aggregate(self, records: list[tuple[float, ...]], examples: list[dict],
                  example_losses: bool = False) -> dict[str, Any]:
        """Loss (nats per target token), perplexity and top-1 accuracy (percent) over all target tokens."""
        nll, count, right = (math.fsum(r[k] for r in records) for k in range(3))
        loss = nll / max(count, 1)
        result: dict[str, Any] = {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50)), 4),
                                  "accuracy": round(100 * right / max(count, 1), 4), "tokens": int(count)}
        if example_losses:
            result["example_losses"] = [round(r[0] / max(r[1], 1), 5) for r in records]
        return result

    def predictions(self, records: list[Any], examples: list[dict], rows: int) -> list[dict[str, Any]]:
        """Each input row's loss and perplexity over its windows (generating tasks answer with text instead)."""
        sums = [[0.0, 0.0] for _ in range(rows)]
        for i, (record, example) in enumerate(zip(records, examples, strict=True)):
            row = example.get("row", i)
            sums[row][0] += record[0]
            sums[row][1] += record[1]
        out = []
        for nll, count in sums:
            loss = nll / max(count, 1)
            out.append({"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50)), 4)})
        return out


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
    from lmtune.models import pretrained

    return pretrained(AutoModelForCausalLM.from_pretrained, source, **kwargs)


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


ISOLATE_BY_DEFAULT = True
"""causal_lm's ``lm.packing`` when the config leaves it out (measured: see docs/guide/config.md)."""


@TASKS.register("causal_lm")
class CausalLM(TokenTask):
    name = "causal_lm"
    capabilities = Capabilities(labelled=False, generates=True, packed=True, from_scratch=True, explains=True,
                                low_precision_logits=True)
    default_columns = {"text": "text"}
    isolates_documents = ISOLATE_BY_DEFAULT
    """Whether a training block's documents attend only to themselves (``lm.packing``), else to those before
    them in the block too."""

    def configure(self, cfg: Any) -> None:
        self.isolates_documents = ISOLATE_BY_DEFAULT if cfg.lm.packing is None else cfg.lm.packing

    def explanation_targets(self, outputs: Any, label: str | None, example: Any,
                            tokenizer: Any) -> list[NextTokenProbability]:
        """The next token: the most likely one, or ``label`` (one token as the tokenizer writes it, e.g. "▁girl")."""
        vocabulary = tokenizer.get_vocab()
        best = int(outputs.logits[0, -1].argmax())
        if label is not None and label not in vocabulary:
            raise LmtuneError(f"--target: {label!r} is not a token of this model's vocabulary; give one token as "
                              "the tokenizer writes it (with its leading-space marker, e.g. ▁girl or Ġgirl)")
        index = best if label is None else vocabulary[label]
        return [NextTokenProbability(index, f"next token {tokenizer.convert_ids_to_tokens(index)!r}",
                                     tokenizer.convert_ids_to_tokens(best))]

    def read(self, source: str, split: str) -> Table:
        """Plain-text corpora are read as documents (see `lmtune.data.corpus`), not as one row per line."""
        return read_corpus(source, split)

    def learn_from_rows(self, train: Table, data: DataConfig) -> None:
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
        """The documents packed into blocks of ``max_length`` tokens: no padding, no token dropped; each attending
        to itself only (evaluation scores each document on its own) or, with ``lm.packing=false``, to the
        documents before it in its block too (the classic stream)."""
        return pack(examples, max_length, isolate=self.isolates_documents)

    def prompts(self, table: Table, data: DataConfig) -> list[str]:
        """The inputs of ``lmtune predict``: each row's text, to be continued."""
        return table.texts(data.text if data.text in table.columns else "text")

    def prompt_ids(self, prompt: str | list[dict], tokenizer: Any) -> list[int]:
        """A prompt as the model saw documents in training: BOS, then the text. Chat ``messages`` (a list) are
        rendered first with the tokenizer's chat template, else lmtune's (the one sft runs learn)."""
        if isinstance(prompt, list):
            from lmtune.tasks.sft import DEFAULT_TEMPLATE

            prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True,
                                                   chat_template=tokenizer.chat_template or DEFAULT_TEMPLATE)
        return text_prompt_ids(prompt, tokenizer)


def text_prompt_ids(prompt: str, tokenizer: Any) -> list[int]:
    """A text prompt's tokens as training saw a document's start: BOS (when the tokenizer has one), then the text."""
    return document_ids([prompt], tokenizer)[0][: None if tokenizer.bos_token_id is not None else -1]
