"""Abstractive summarization: an encoder-decoder warm-started from an encoder (BERT2BERT, Rothe et al.
2020), or a causal LM trained on "document + prompt → summary" with the loss on the summary only.

Training minimises the summary tokens' cross-entropy (teacher forcing). Evaluation reports that loss
and, by generating with beam search, ROUGE-1/2/L (``rouge-score``, with stemming, the best over a
row's references). During training generation is optional and bounded (``summarization.eval_generate``
rows, ``eval_seconds``); ``lmtune eval`` generates for every row.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.errors import DataError, LmtuneError
from lmtune.extras import require
from lmtune.tasks.base import TASKS

IGNORE = -100
DEFAULTS = {"architecture": "auto", "max_target_length": 64, "num_beams": 4, "length_penalty": 1.0,
            "no_repeat_ngram_size": 3, "min_length": 5, "prompt": "\nSummary:"}
WARM_START_SEED = 0
REFERENCES = "references"
"""Optional column of extra reference summaries (a list), e.g. DialogSum test's three."""


@TASKS.register("summarization")
class Summarization:
    name = "summarization"
    primary_metric = "loss"
    greater_is_better = False
    metric_names = ("loss", "rouge1", "rouge2", "rougeL")
    default_columns = {"text": "document", "label": "summary"}

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = {**DEFAULTS, **(options or {})}
        self.eval_generate: int | None = None
        """Rows to generate for (ROUGE) in an evaluation; None: all (lmtune eval), 0: none."""
        self.eval_seconds: float | None = None

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Summarization:
        return cls(state.get("options"))

    def state(self) -> dict[str, Any]:
        return {"options": self.options}

    def configure(self, cfg: Any) -> None:
        s = cfg.summarization
        self.options.update(architecture=s.architecture, max_target_length=s.max_target_length,
                            num_beams=s.num_beams, length_penalty=s.length_penalty,
                            no_repeat_ngram_size=s.no_repeat_ngram_size, min_length=s.min_length, prompt=s.prompt)
        self.eval_generate, self.eval_seconds = s.eval_generate, s.eval_seconds
        if cfg.early_stopping.metric in ("rouge1", "rouge2", "rougeL") and not s.eval_generate:
            raise LmtuneError(f"early_stopping.metric: {cfg.early_stopping.metric} needs generation during "
                              "training; set summarization.eval_generate to a number of validation rows")

    def fit(self, train: Table, data: DataConfig) -> None:
        train.require(data.text, data.label)
        for i, row in enumerate(train.rows):
            for column in (data.text, data.label):
                if not isinstance(row.get(column), str) or not row[column].strip():
                    raise DataError(f"{train.where(i)}: column {column!r} is {row.get(column)!r}; expected text")

    # ---- model ------------------------------------------------------------------------------------

    def build_model(self, source: str | Path, **kwargs: Any) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM, EncoderDecoderModel

        config = AutoConfig.from_pretrained(source)
        kind = self._kind(config)
        if kind == "causal":
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        elif getattr(config, "is_encoder_decoder", False) and type(config).__name__ == "EncoderDecoderConfig":
            model = EncoderDecoderModel.from_pretrained(source, **kwargs)  # a run's own (already warm-started)
        else:
            # the decoder's cross-attention is new: seeded, so the same base is built every time (a LoRA
            # run saves only its adapters and reloads them onto this base)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(WARM_START_SEED)
                model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                    source, source, encoder_attn_implementation=kwargs.get("attn_implementation"),
                    decoder_attn_implementation=kwargs.get("attn_implementation"))
            model.name_or_path = str(source)  # what a LoRA adapter records as its base
        self._special_tokens(model, source)
        return model

    def _kind(self, config: Any) -> str:
        wanted = self.options["architecture"]
        if wanted != "auto":
            return wanted
        if getattr(config, "is_encoder_decoder", False):
            return "encoder-decoder"
        architectures = getattr(config, "architectures", None) or []
        return "causal" if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures) \
            else "encoder-decoder"

    def _special_tokens(self, model: Any, source: str | Path) -> None:
        """Start/end/pad ids for training and generation, from the tokenizer (BERT: [CLS] ... [SEP])."""
        from lmtune.models import load_tokenizer

        ids = self._ids(load_tokenizer(str(source)))
        for config in (model.config, model.generation_config):
            config.pad_token_id, config.eos_token_id = ids["pad"], ids["end"]
            if getattr(model.config, "is_encoder_decoder", False):
                config.decoder_start_token_id = ids["start"]

    @property
    def causal(self) -> bool:
        return self.options.get("kind") == "causal"

    # ---- features ---------------------------------------------------------------------------------

    def encode(self, table: Table, tokenizer: Any, data: DataConfig, max_length: int) -> list[dict]:
        table.require(data.text)
        from transformers import AutoConfig

        if "kind" not in self.options:
            self.options["kind"] = self._kind(AutoConfig.from_pretrained(tokenizer.name_or_path))
        ids = self._ids(tokenizer)
        self.tokenizer = tokenizer  # generation decodes with it
        documents = tokenizer(table.texts(data.text), truncation=True, max_length=max_length,
                              add_special_tokens=not self.causal)["input_ids"]
        labelled = data.label in table.columns
        summaries = tokenizer(table.texts(data.label), truncation=True, max_length=self.options["max_target_length"],
                              add_special_tokens=False)["input_ids"] if labelled else None
        prompt = tokenizer(self.options["prompt"], add_special_tokens=False)["input_ids"]
        examples = []
        for i, document in enumerate(documents):
            example: dict[str, Any] = {"row": i}
            if labelled:
                example["references"] = _references(table, i, data)
            if self.causal:
                context = [ids["start"]] + document[: max_length - len(prompt) - 1] + prompt
                example["prompt_length"] = len(context)
                target = summaries[i] + [ids["end"]] if labelled else []
                example["input_ids"] = context + target
                if labelled:
                    example["labels"] = [IGNORE] * len(context) + target
            else:
                example["input_ids"] = document
                if labelled:
                    target = summaries[i] + [ids["end"]]
                    example["labels"] = target
                    example["decoder_input_ids"] = [ids["start"]] + target[:-1]
            examples.append(example)
        return examples

    def _ids(self, tokenizer: Any) -> dict[str, int]:
        """Start, end and pad token ids (BERT: [CLS], [SEP], [PAD]), kept in the task state."""
        if "ids" not in self.options:
            start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
            end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
            self.options["ids"] = {"start": start, "end": end,
                                   "pad": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end}
        return self.options["ids"]

    # ---- training ---------------------------------------------------------------------------------

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
        logits, labels = self._aligned(outputs, batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                               label_smoothing=label_smoothing)

    def example_losses(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, labels = self._aligned(outputs, batch)
        per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        counts = (labels != IGNORE).sum(-1).clamp(min=1)
        return per_token.sum(-1) / counts

    def _aligned(self, outputs: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) lined up: a causal LM's position t predicts token t + 1."""
        logits, labels = outputs.logits.float(), batch["labels"]
        if self.causal:
            return logits[:, :-1], labels[:, 1:]
        return logits, labels

    # ---- evaluation and generation ------------------------------------------------------------------

    @torch.no_grad()
    def evaluate_model(self, model: Any, examples: list[dict], batch_size: int, pad_id: int, device: Any,
                       autocast: Any, example_losses: bool = False, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
        """Teacher-forced loss over all examples, and ROUGE over (up to ``eval_generate``) generated ones.

        Not sharded: every process evaluates everything (``shard`` is accepted for the common signature)."""
        from contextlib import nullcontext

        from lmtune.data import collate
        from lmtune.data.batching import eval_batches
        from lmtune.data.collate import TARGETS

        was_training = model.training
        model.eval()
        losses = [0.0] * len(examples)
        for indices in eval_batches([len(e["input_ids"]) for e in examples], batch_size):
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], pad_id).items()}
            with autocast if autocast is not None else nullcontext():
                outputs = model(**{k: v for k, v in batch.items() if k not in TARGETS})
            for i, value in zip(indices, self.example_losses(outputs, batch).tolist(), strict=True):
                losses[i] = value
        tokens = [sum(1 for t in e["labels"] if t != IGNORE) for e in examples]
        result: dict[str, Any] = {"loss": round(sum(v * n for v, n in zip(losses, tokens, strict=True))
                                                / max(sum(tokens), 1), 6)}
        limit = len(examples) if self.eval_generate is None else self.eval_generate
        if limit:
            deadline = time.monotonic() + self.eval_seconds if self.eval_seconds else None
            chosen = examples[:limit]
            summaries = self.generate(model, chosen, batch_size, pad_id, device, deadline)
            result.update(rouge(summaries, [e["references"] for e in chosen[: len(summaries)]]))
            result["generated"] = len(summaries)
        model.train(was_training)
        if example_losses:
            result["example_losses"] = [round(v, 5) for v in losses]
        return result

    @torch.no_grad()
    def generate(self, model: Any, examples: list[dict], batch_size: int, pad_id: int, device: Any,
                 deadline: float | None = None) -> list[str]:
        """Beam-search summaries of ``examples`` (stops early, returning those done, past ``deadline``)."""
        model = getattr(model, "module", model)  # DDP
        tokenizer = self.tokenizer
        out: list[str] = []
        options = self.options
        settings = {"num_beams": options["num_beams"], "length_penalty": options["length_penalty"],
                    "no_repeat_ngram_size": options["no_repeat_ngram_size"],
                    "min_new_tokens": options["min_length"], "max_new_tokens": options["max_target_length"],
                    "early_stopping": True}
        for start in range(0, len(examples), batch_size):
            if deadline is not None and time.monotonic() > deadline and out:
                break
            chunk = examples[start:start + batch_size]
            prompts = [e["input_ids"][: e.get("prompt_length", len(e["input_ids"]))] for e in chunk]
            if self.causal:  # decoder-only: pad on the left so every prompt ends where generation starts
                longest = max(map(len, prompts))
                ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prompts], device=device)
                mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=device)
            else:
                longest = max(map(len, prompts))
                ids = torch.tensor([p + [pad_id] * (longest - len(p)) for p in prompts], device=device)
                mask = torch.tensor([[1] * len(p) + [0] * (longest - len(p)) for p in prompts], device=device)
            generated = model.generate(input_ids=ids, attention_mask=mask, **settings)
            if self.causal:
                generated = generated[:, ids.shape[1]:]
            out += tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [" ".join(s.split()) for s in out]

    def predict_model(self, model: Any, examples: list[dict], batch_size: int, pad_id: int,
                      device: Any) -> list[dict[str, Any]]:
        return [{"summary": s} for s in self.generate(model, examples, batch_size, pad_id, device)]


def _references(table: Table, index: int, data: DataConfig) -> list[str]:
    row = table.rows[index]
    refs = row.get(REFERENCES)
    if isinstance(refs, list) and all(isinstance(r, str) for r in refs) and refs:
        return refs
    return [row[data.label]]


def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure in percent (stemmed), each the best over a row's references, averaged."""
    require("rouge_score", "summarization metrics (ROUGE)", "rouge-score")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, refs in zip(predictions, references, strict=True):
        scores = scorer.score_multi(refs, prediction)
        for key in totals:
            totals[key] += scores[key].fmeasure
    n = max(len(predictions), 1)
    return {k: round(100 * v / n, 4) for k, v in totals.items()}
