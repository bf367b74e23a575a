"""Abstractive summarization: an encoder-decoder warm-started from an encoder (BERT2BERT, Rothe et al.
2020), or a causal LM trained on "document + prompt → summary" with the loss on the summary only.

Training minimises the summary tokens' cross-entropy (teacher forcing). Evaluation reports that loss
and, by generating with beam search, ROUGE-1/2/L (``rouge-score``, with stemming, the best over a
row's references). During training generation is optional and bounded (``summarization.eval_generate``
rows, ``eval_seconds``); ``lmtune eval`` generates for every row.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.data.collate import IGNORE_INDEX, model_inputs, pad_batch
from lmtune.errors import DataError, LmtuneError
from lmtune.extras import require
from lmtune.models import checkpoint_keys, note_new, pretrained
from lmtune.tasks.base import LOSS, TASKS, Metric, Scoring, Task

DEFAULTS = {"architecture": "auto", "max_target_length": 64, "num_beams": 4, "length_penalty": 1.0,
            "no_repeat_ngram_size": 3, "min_length": 5, "prompt": "\nSummary:"}
WARM_START_SEED = 0
REFERENCES = "references"
"""Optional column of extra reference summaries (a list), e.g. DialogSum test's three."""


@TASKS.register("summarization")
class Summarization(Task):
    name = "summarization"
    primary_metric = "loss"
    metrics = (LOSS, *(Metric(name, True, "percent", 0.5) for name in ("rouge1", "rouge2", "rougeL")))
    default_columns = {"text": "document", "label": "summary"}
    input_fields = ("document",)

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = {**DEFAULTS, **(options or {})}
        self.eval_generate: int | None = None
        """Rows to generate for (ROUGE) in an evaluation; None: all (lmtune eval), 0: none."""
        self.eval_seconds: float | None = None

    @classmethod
    def from_state(cls, state: dict[str, Any], cfg: Any = None) -> Summarization:
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

    def learn_from_rows(self, train: Table, data: DataConfig) -> None:
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
            model = pretrained(AutoModelForCausalLM.from_pretrained, source, **kwargs)
        elif getattr(config, "is_encoder_decoder", False) and type(config).__name__ == "EncoderDecoderConfig":
            model = pretrained(EncoderDecoderModel.from_pretrained, source, **kwargs)  # a run's own (warm-started)
        else:
            # the decoder's cross-attention is new: seeded, so the same base is built every time (a LoRA
            # run saves only its adapters and reloads them onto this base)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(WARM_START_SEED)
                model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                    source, source, encoder_attn_implementation=kwargs.get("attn_implementation"),
                    decoder_attn_implementation=kwargs.get("attn_implementation"))
            model.name_or_path = str(source)  # what a LoRA adapter records as its base
            note_new(_warm_start_new(model, source))
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
                    example["labels"] = [IGNORE_INDEX] * len(context) + target
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
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                               label_smoothing=label_smoothing)

    def _aligned(self, outputs: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) lined up: a causal LM's position t predicts token t + 1."""
        logits, labels = outputs.logits.float(), batch["labels"]
        if self.causal:
            return logits[:, :-1], labels[:, 1:]
        return logits, labels

    # ---- evaluation and generation ------------------------------------------------------------------

    def score_batch(self, model: Any, batch: dict[str, torch.Tensor], examples: list[dict], indices: list[int],
                    scoring: Scoring) -> list[tuple[float, int, str | None]]:
        """(summed NLL of the reference summary, its tokens, the generated summary or None) of each example.

        Evaluation generates for the first ``eval_generate`` examples (all when None) while within
        ``eval_seconds`` of the start; prediction generates for every example and has no reference."""
        sums: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
        if "labels" in batch:
            logits, labels = self._aligned(model(**model_inputs(batch)), batch)
            per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                        reduction="none")
            counts = (labels != IGNORE_INDEX).sum(-1)
            sums = list(zip(per_token.sum(-1).double().tolist(), counts.tolist(), strict=True))
        summaries: list[str | None] = [None] * len(examples)
        if scoring.purpose == "predict" or self._generate_now(scoring):
            chosen = [k for k, i in enumerate(indices)
                      if scoring.purpose == "predict" or self.eval_generate is None or i < self.eval_generate]
            if chosen:
                for k, text in zip(chosen, self.generate(model, [examples[k] for k in chosen]), strict=True):
                    summaries[k] = text
        return [(nll, n, summary) for (nll, n), summary in zip(sums, summaries, strict=True)]

    def _generate_now(self, scoring: Scoring) -> bool:
        if self.eval_generate == 0:
            return False
        return self.eval_seconds is None or time.monotonic() - scoring.started < self.eval_seconds

    def aggregate(self, records: list[tuple[float, int, str | None]], examples: list[dict],
                  example_losses: bool = False) -> dict[str, Any]:
        """Teacher-forced loss per summary token, and ROUGE over the examples that were summarized."""
        tokens = sum(n for _, n, _ in records)
        result: dict[str, Any] = {"loss": round(math.fsum(nll for nll, _, _ in records) / max(tokens, 1), 6)}
        done = [(summary, ex["references"]) for (_, _, summary), ex in zip(records, examples, strict=True)
                if summary is not None]
        if done:
            result.update(rouge([d[0] for d in done], [d[1] for d in done]))
            result["generated"] = len(done)
        if example_losses:
            result["example_losses"] = [round(nll / max(n, 1), 5) for nll, n, _ in records]
        return result

    def predictions(self, records: list[tuple[float, int, str | None]], examples: list[dict],
                    rows: int) -> list[dict[str, Any]]:
        return [{"summary": summary} for _, _, summary in records]

    @torch.no_grad()
    def generate(self, model: Any, examples: list[dict]) -> list[str]:
        """Beam-search summaries of ``examples`` (one batch)."""
        pad_id = self.options["ids"]["pad"]
        device = next(model.parameters()).device
        options = self.options
        settings = {"num_beams": options["num_beams"], "length_penalty": options["length_penalty"],
                    "no_repeat_ngram_size": options["no_repeat_ngram_size"],
                    "min_new_tokens": options["min_length"], "max_new_tokens": options["max_target_length"],
                    "early_stopping": True}
        prompts = [e["input_ids"][: e.get("prompt_length", len(e["input_ids"]))] for e in examples]
        # decoder-only: pad on the left so every prompt ends where generation starts
        ids, mask = pad_batch(prompts, pad_id, left=self.causal)
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **settings)
        if self.causal:
            generated = generated[:, ids.shape[1]:]
        return [" ".join(s.split()) for s in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]


def _warm_start_new(model: Any, source: str | Path) -> list[str]:
    """The decoder's parameters that the encoder checkpoint does not have (cross-attention, maybe the LM head):
    they start random and must train."""
    keys = checkpoint_keys(source)
    if keys is None:
        return []
    prefix = model.decoder.base_model_prefix + "."
    return [f"decoder.{name}" for name, _ in model.decoder.named_parameters()
            if name not in keys and name.removeprefix(prefix) not in keys]


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
