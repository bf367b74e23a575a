"""Masked language modelling: continued pretraining of an encoder (domain adaptation before fine-tuning).

Inputs are masked afresh each epoch (`lmtune.data.masking`); validation keeps one fixed masking so its
loss is comparable between evaluations. Metrics: loss (nats per masked token), perplexity, accuracy of
the restored tokens, and pseudo-perplexity (Salazar et al. 2020: each token masked in turn and scored
given all the others) on up to ``lm.pseudo_perplexity_samples`` validation examples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.data.corpus import read_corpus
from lmtune.data.masking import example_rng, mask_example
from lmtune.errors import DataError, LmtuneError
from lmtune.tasks.base import TASKS
from lmtune.tasks.language_model import TokenTask

log = logging.getLogger("lmtune")
VALIDATION_EPOCH = -1
"""The masking 'epoch' of encoded examples: fixed, for validation and the training sample."""


@TASKS.register("masked_lm")
class MaskedLM(TokenTask):
    name = "masked_lm"
    shift = False
    metric_names = ("loss", "perplexity", "accuracy", "pseudo_perplexity")
    default_columns = {"text": "text"}
    reader = staticmethod(read_corpus)

    def __init__(self, probability: float = 0.15, whole_word: bool = False, pseudo_perplexity_samples: int = 64):
        self.probability, self.whole_word = probability, whole_word
        self.pseudo_perplexity_samples = pseudo_perplexity_samples
        self.seed = 0

    def configure(self, cfg: Any) -> None:
        self.probability, self.whole_word = cfg.lm.mlm_probability, cfg.lm.whole_word_mask
        self.pseudo_perplexity_samples, self.seed = cfg.lm.pseudo_perplexity_samples, cfg.train.seed

    def restore(self, state: dict[str, Any]) -> None:
        self.probability = state.get("probability", self.probability)
        self.whole_word = state.get("whole_word", self.whole_word)
        self.pseudo_perplexity_samples = state.get("pseudo_perplexity_samples", self.pseudo_perplexity_samples)

    def state(self) -> dict[str, Any]:
        return {"probability": self.probability, "whole_word": self.whole_word,
                "pseudo_perplexity_samples": self.pseudo_perplexity_samples}

    def build_model(self, source: str | Path, **kwargs: Any) -> torch.nn.Module:
        from transformers import AutoModelForMaskedLM

        model, info = AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True, **kwargs)
        new_head = [k for k in info.get("missing_keys", ()) if not k.startswith(model.base_model_prefix + ".")]
        if new_head:
            log.warning(
                "model: %s has no masked-LM head (%d new tensors, e.g. %s); it starts random, so expect a "
                "validation loss near ln(vocabulary) at first", source, len(new_head), sorted(new_head)[0])
        return model

    def fit(self, train: Table, data: DataConfig) -> None:
        train.require(data.text)
        train.texts(data.text)

    def encode(self, table: Table, tokenizer: Any, data: DataConfig, max_length: int) -> list[dict]:
        """Each text in windows of ``max_length`` tokens ([CLS] ... [SEP]) with a fixed masking."""
        if tokenizer.mask_token_id is None:
            raise LmtuneError(f"model: the tokenizer of {tokenizer.name_or_path} has no mask token; masked_lm "
                              "needs an encoder with one (BERT, RoBERTa, MiniLM ...)")
        table.require(data.text)
        encoded = tokenizer(table.texts(data.text), add_special_tokens=False)
        width = max_length - 2
        examples = []
        for row in range(len(table)):
            ids, words = encoded["input_ids"][row], encoded.word_ids(row)
            for start in range(0, len(ids), width):
                piece, piece_words = ids[start:start + width], words[start:start + width]
                examples.append({"tokens": [tokenizer.cls_token_id, *piece, tokenizer.sep_token_id],
                                 "words": [None, *piece_words, None], "row": row})
        if not examples:
            raise DataError(f"{table.source}: no text to mask")
        self.mask_id = tokenizer.mask_token_id
        masked = self._masker(tokenizer)
        return [masked(example, VALIDATION_EPOCH, i) for i, example in enumerate(examples)]

    def _masker(self, tokenizer: Any) -> Callable[[dict, int, int], dict]:
        special = set(tokenizer.all_special_ids)

        def masked(example: dict, epoch: int, index: int) -> dict:
            return mask_example(example, example_rng(self.seed, epoch, index), self.probability, self.whole_word,
                                tokenizer.mask_token_id, len(tokenizer), special)

        return masked

    def training_batches(self, examples: list[dict], tokenizer: Any) -> Callable[[int, list[int]], list]:
        """(epoch, indices) → the batch's examples, masked afresh for this epoch."""
        masked = self._masker(tokenizer)
        return lambda epoch, indices: [masked(examples[i], epoch, i) for i in indices]

    @torch.no_grad()
    def extra_metrics(self, model: Any, examples: list[dict], batch_size: int, pad_id: int, device: Any,
                      autocast: Any) -> dict[str, Any]:
        """Pseudo-perplexity: exp of the mean NLL of each token when it alone is masked."""
        model = getattr(model, "module", model)
        chosen = examples[: self.pseudo_perplexity_samples]
        if not chosen:
            return {}
        rows: list[tuple[list[int], int, int]] = []  # (masked ids, position, original token)
        for example in chosen:
            tokens = example["tokens"]
            for position in range(1, len(tokens) - 1):
                rows.append((tokens, position, tokens[position]))
        if not rows:
            return {}
        total = 0.0
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            longest = max(len(r[0]) for r in part)
            ids = torch.full((len(part), longest), pad_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for k, (tokens, position, _) in enumerate(part):
                ids[k, : len(tokens)] = torch.tensor(tokens)
                ids[k, position] = self.mask_id
                attention[k, : len(tokens)] = 1
            with autocast if autocast is not None else nullcontext():
                logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            positions = torch.tensor([r[1] for r in part], device=logits.device)
            picked = logits[torch.arange(len(part), device=logits.device), positions].float()
            targets = torch.tensor([r[2] for r in part], device=logits.device)
            total += torch.nn.functional.cross_entropy(picked, targets, reduction="sum").item()
        return {"pseudo_perplexity": round(math.exp(min(total / len(rows), 50)), 4)}
