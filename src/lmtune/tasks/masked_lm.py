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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.data.corpus import read_corpus
from lmtune.data.masking import example_rng, mask_example
from lmtune.errors import DataError, LmtuneError
from lmtune.tasks.base import TASKS, Capabilities, Metric, Scoring
from lmtune.tasks.language_model import TokenTask

log = logging.getLogger("lmtune")
PSEUDO_PERPLEXITY_ROWS = 64
"""Masked copies of an example scored per forward pass (pseudo-perplexity)."""
VALIDATION_EPOCH = -1
"""The masking 'epoch' of encoded examples: fixed, for validation and the training sample."""


@TASKS.register("masked_lm")
class MaskedLM(TokenTask):
    name = "masked_lm"
    shift = False
    metrics = (*TokenTask.metrics, Metric("pseudo_perplexity", False, "perplexity", 0.1))
    capabilities = Capabilities(labelled=False, remasked=True, low_precision_logits=True)
    default_columns = {"text": "text"}

    def __init__(self, probability: float = 0.15, whole_word: bool = False, pseudo_perplexity_samples: int = 64):
        self.probability, self.whole_word = probability, whole_word
        self.pseudo_perplexity_samples = pseudo_perplexity_samples
        self.seed = 0
        """Seeds the masks: the fixed masking of evaluation data and each epoch's training masks."""
        self.mask_id: int | None = None

    def read(self, source: str, split: str) -> Table:
        return read_corpus(source, split)

    def configure(self, cfg: Any) -> None:
        self.probability, self.whole_word = cfg.lm.mlm_probability, cfg.lm.whole_word_mask
        self.pseudo_perplexity_samples, self.seed = cfg.lm.pseudo_perplexity_samples, cfg.train.seed

    def restore(self, state: dict[str, Any], cfg: Any) -> None:
        self.probability = state.get("probability", self.probability)
        self.whole_word = state.get("whole_word", self.whole_word)
        self.pseudo_perplexity_samples = state.get("pseudo_perplexity_samples", self.pseudo_perplexity_samples)
        # runs written before the seed was saved masked their validation data with the run's train.seed
        self.seed = state.get("seed", cfg.train.seed if cfg is not None else self.seed)

    def state(self) -> dict[str, Any]:
        return {"probability": self.probability, "whole_word": self.whole_word,
                "pseudo_perplexity_samples": self.pseudo_perplexity_samples, "seed": self.seed}

    def build_model(self, source: str | Path, **kwargs: Any) -> torch.nn.Module:
        from transformers import AutoModelForMaskedLM

        from lmtune.models import loading_report, note_new, pretrained

        with loading_report() as report:  # its own, to tell about the head; the caller's gets the same names
            model = pretrained(AutoModelForMaskedLM.from_pretrained, source, **kwargs)
        note_new(report.new)
        if any(not k.startswith(model.base_model_prefix + ".") for k in report.new):
            log.warning("model: %s has no masked-LM head; it starts random, so expect a validation loss near "
                        "ln(vocabulary) at first", source)
        return model

    def learn_from_rows(self, train: Table, data: DataConfig) -> None:
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

    def score_batch(self, model: Any, batch: dict[str, torch.Tensor], examples: list[dict], indices: list[int],
                    scoring: Scoring) -> list[tuple[float, ...]]:
        """(summed NLL, masked tokens, correct top-1, pseudo-log-likelihood sum, its token count) of each example;
        the pseudo-perplexity terms for the first ``pseudo_perplexity_samples`` examples only."""
        records = super().score_batch(model, batch, examples, indices, scoring)
        return [(*record, *(self._pseudo_nll(model, example) if i < self.pseudo_perplexity_samples else (0.0, 0)))
                for record, example, i in zip(records, examples, indices, strict=True)]

    def _pseudo_nll(self, model: Any, example: dict) -> tuple[float, int]:
        """Salazar et al. 2020: each token masked in turn and scored given all the others, (summed NLL, tokens).
        The copies of one example have one length, so they need no padding."""
        tokens = torch.tensor(example["tokens"])
        positions = torch.arange(1, len(tokens) - 1)  # not [CLS] / [SEP]
        total = 0.0
        device = next(model.parameters()).device
        for chunk in positions.split(PSEUDO_PERPLEXITY_ROWS):
            ids = tokens.repeat(len(chunk), 1)
            ids[torch.arange(len(chunk)), chunk] = self.mask_id
            logits = model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device)).logits
            picked = logits[torch.arange(len(chunk), device=logits.device), chunk.to(logits.device)].float()
            total += F.cross_entropy(picked, tokens[chunk].to(logits.device), reduction="sum").item()
        return total, len(positions)

    def aggregate(self, records: list[tuple[float, ...]], examples: list[dict],
                  example_losses: bool = False) -> dict[str, Any]:
        result = super().aggregate(records, examples, example_losses)
        pseudo_tokens = sum(r[4] for r in records)
        if pseudo_tokens:
            nll = math.fsum(r[3] for r in records) / pseudo_tokens
            result["pseudo_perplexity"] = round(math.exp(min(nll, 50)), 4)
        return result
