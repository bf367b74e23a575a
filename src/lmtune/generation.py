"""Text generation from a causal LM, for `lmtune generate`, `lmtune predict` and `lmtune serve` alike.

One decoding loop runs several prompts together (left-padded, one forward pass per new token for all of
them), each with its own settings (greedy or sampled: temperature, top-k, top-p, repetition penalty), its
own random generator (a seed makes one request reproducible whatever else is in the batch, and never
touches the global seed), its own stop strings and its own stream of text pieces. A row that finishes or is
cancelled stops costing anything but its slot in the batch; the loop ends when every row has finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lmtune.errors import LmtuneError

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0: greedy (deterministic); > 0: sample from the softened distribution."""
    top_k: int | None = None
    """Sample only among the k most likely tokens."""
    top_p: float | None = None
    """Sample only among the most likely tokens whose probabilities add up to p (nucleus sampling)."""
    repetition_penalty: float = 1.0
    """> 1 makes tokens already in the text less likely (CTRL's penalty)."""
    seed: int | None = None
    """Seed of the sampling (sampled output is then reproducible)."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens <= 0:
            problems.append(f"max_new_tokens: {self.max_new_tokens} must be > 0")
        if self.temperature < 0:
            problems.append(f"temperature: {self.temperature} must be >= 0 (0: greedy)")
        if self.top_k is not None and self.top_k <= 0:
            problems.append(f"top_k: {self.top_k} must be > 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            problems.append(f"top_p: {self.top_p} is not in (0, 1]")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty: {self.repetition_penalty} must be > 0")
        if (self.top_k or self.top_p) and self.temperature == 0:
            problems.append("top_k/top_p: they shape sampling; set a temperature > 0 (0 is greedy)")
        if problems:
            raise LmtuneError("; ".join(problems))


@dataclass
class Job:
    """One prompt to continue, and (once `generate_batch` returns) what came of it."""

    prompt_ids: list[int]
    settings: GenerationSettings = GenerationSettings()
    stop: tuple[str, ...] = ()
    """Strings that end the text where they first appear (not included in it)."""
    on_text: Callable[[str], None] | None = None
    """Called with each new piece of text as soon as it is final (streaming)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set from any thread to stop this row (a client that went away)."""
    text: str = ""
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0


def context_limit(model: Any) -> int | None:
    """The model's context length in tokens (None: unbounded)."""
    return getattr(model.config, "max_position_embeddings", None)


def check_prompt(model: Any, length: int) -> None:
    """A prompt of ``length`` tokens must leave room for at least one new token."""
    limit = context_limit(model)
    if length == 0:
        raise LmtuneError("prompt: empty; the model needs at least one token to continue")
    if limit and length >= limit:
        raise LmtuneError(f"prompt: {length} tokens do not fit the model's context of {limit}")


def generate(model: Any, tokenizer: Any, prompt_ids: list[int], settings: GenerationSettings,
             on_text: Callable[[str], None] | None = None) -> str:
    """The continuation of ``prompt_ids`` as text (special tokens dropped); stops at EOS or the token limit."""
    job = Job(prompt_ids, settings, on_text=on_text)
    generate_batch(model, tokenizer, [job])
    return job.text


Admit = Callable[[int], list[Job]]
"""Called between decoding steps with the number of free rows; returns jobs to start now (continuous batching)."""


@torch.inference_mode()
def generate_batch(model: Any, tokenizer: Any, jobs: list[Job], admit: Admit | None = None,
                   finished: Callable[[Job], None] | None = None, max_rows: int | None = None) -> None:
    """Continue every job's prompt together; each job's ``text``, ``finish_reason`` and token count are set.

    Args:
        admit: between steps, more jobs to join the batch (each is prefilled on its own, then merged in).
        finished: called with each job as soon as it ends (the others go on).
        max_rows: the most rows decoding at once (what ``admit`` may fill up to); default: no limit.
    """
    batch = _Batch(model, tokenizer)
    batch.add(jobs)
    while batch.rows:
        for job in batch.step():
            if finished is not None:
                finished(job)
        free = (max_rows or len(batch.rows) + 1) - len(batch.rows)
        if admit is not None and free > 0:
            batch.add(admit(free))


class _Batch:
    """The rows decoding together: their key/value cache, attention mask and positions (left-padded: every
    row's next token is at the last position), which rows leave when they end and new ones join."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.limit = context_limit(model)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask = self.positions = self.logits = None

    def add(self, jobs: list[Job]) -> None:
        """Prefill ``jobs`` and merge them into the batch."""
        if not jobs:
            return
        for job in jobs:
            check_prompt(self.model, len(job.prompt_ids))
        width = max(len(job.prompt_ids) for job in jobs)
        ids = torch.full((len(jobs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            mask[i, width - len(job.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        rows = [_Row(job, self.tokenizer, self.limit, self.device) for job in jobs]
        if not self.rows:
            self.rows, self.cache, self.mask, self.positions = rows, out.cache, mask, positions[:, -1:]
            self.logits = out.logits[:, -1].float()
            return
        length = max(self.mask.shape[1], mask.shape[1])  # pad the shorter side on the left, then stack rows
        for mine, theirs in zip(self.cache.layers, out.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
            mine.values = torch.cat([_left_pad(mine.values, length), _left_pad(theirs.values, length)])
        self.mask = torch.cat([_left_pad(self.mask, length, dim=1), _left_pad(mask, length, dim=1)])
        self.positions = torch.cat([self.positions, positions[:, -1:]])
        self.logits = torch.cat([self.logits, out.logits[:, -1].float()])
        self.rows += rows

    def step(self) -> list[Job]:
        """Every row's next token; returns the jobs that ended, after taking their rows out."""
        greedy = self.logits.argmax(-1).tolist()  # one op for every row that decodes greedily
        chosen = [row.step(self.logits[i], greedy[i]) for i, row in enumerate(self.rows)]
        ended = [row.job for row in self.rows if row.done]
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        if len(keep) < len(self.rows):
            self.rows = [self.rows[i] for i in keep]
            if not keep:
                return ended
            index = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(index)
            self.mask, self.positions = self.mask[index], self.positions[index]
            chosen = [chosen[i] for i in keep]
        step = torch.tensor(chosen, device=self.device).unsqueeze(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        self.positions = self.positions + 1
        out = self.model(input_ids=step, attention_mask=self.mask, position_ids=self.positions, cache=self.cache,
                         use_cache=True, logits_to_keep=1)
        self.cache, self.logits = out.cache, out.logits[:, -1].float()
        return ended


def _left_pad(tensor: torch.Tensor, length: int, dim: int = -2) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class _Row:
    """The state of one job in the decoding loop: its tokens, its sampler and its text.

    Text is decoded incrementally (as text-generation servers do): each step decodes only the tokens since the
    last complete piece, together with the few before them so that word-piece joins and leading spaces come
    out as in a whole decode; a piece that ends in half a UTF-8 character waits for its other bytes.
    """

    def __init__(self, job: Job, tokenizer: Any, limit: int | None, device: torch.device):
        self.job, self.tokenizer = job, tokenizer
        self.budget = job.settings.max_new_tokens
        if limit:
            self.budget = min(self.budget, limit - len(job.prompt_ids))
        self.tokens = list(job.prompt_ids)
        """Prompt and generated tokens (the repetition penalty's history)."""
        self.generated: list[int] = []
        self.prefix_offset = self.read_offset = 0
        """Decoding window over ``generated``: [prefix, read) is context already turned into text."""
        self.text = ""
        self.sent = 0
        self.longest_stop = max((len(stop) for stop in job.stop), default=0)
        self.eos = tokenizer.eos_token_id
        self.greedy = job.settings.temperature == 0 and job.settings.repetition_penalty == 1.0
        self.generator = None
        if job.settings.temperature > 0:
            self.generator = torch.Generator(device=device)
            if job.settings.seed is None:
                self.generator.seed()  # fresh entropy; the global generator is never read or moved
            else:
                self.generator.manual_seed(job.settings.seed)

    @property
    def done(self) -> bool:
        return self.job.finish_reason is not None

    def step(self, logits: torch.Tensor, greedy: int) -> int:
        """Pick this row's next token (``greedy``: the argmax, already computed), update its text; returns
        the token fed back in."""
        if self.job.cancelled.is_set():
            self._finish("cancelled")
            return self.eos or 0
        token = greedy if self.greedy else self._choose(logits)
        if token == self.eos:
            self._finish("stop")
            return token
        self.generated.append(token)
        self.tokens.append(token)
        self.job.completion_tokens = len(self.generated)
        self._extend_text()
        if self.done:
            return token
        if len(self.generated) >= self.budget:
            self._finish("length")
        else:
            self._send(len(self.text) - _held_back(self.text, self.job.stop))
        return token

    def _choose(self, logits: torch.Tensor) -> int:
        settings = self.job.settings
        if settings.repetition_penalty != 1.0:
            history = torch.tensor(self.tokens, device=logits.device)
            seen = logits[history]
            logits = logits.clone()
            logits[history] = torch.where(seen < 0, seen * settings.repetition_penalty,
                                          seen / settings.repetition_penalty)
        if settings.temperature == 0:
            return int(logits.argmax())
        logits = logits / settings.temperature
        if settings.top_k:
            kth = torch.topk(logits, min(settings.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if settings.top_p is not None and settings.top_p < 1:
            ordered, order = logits.sort(descending=True)
            before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass of the tokens ranked above
            logits = logits.clone()
            logits[order[before >= settings.top_p]] = float("-inf")  # the most likely token always stays
        return int(torch.multinomial(logits.softmax(-1), 1, generator=self.generator))

    def _extend_text(self, final: bool = False) -> None:
        """Add the newly complete text; a stop string that now appears ends the row there."""
        decode = self.tokenizer.decode
        context = decode(self.generated[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        whole = decode(self.generated[self.prefix_offset:], skip_special_tokens=True)
        if len(whole) <= len(context) or (whole.endswith("\ufffd") and not final):
            return  # nothing new yet, or half a character
        checked_from = max(0, len(self.text) - self.longest_stop + 1)
        self.text += whole[len(context):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.generated)
        hits = [i for i in (self.text.find(stop, checked_from) for stop in self.job.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self._finish("stop")

    def _send(self, upto: int) -> None:
        if upto > self.sent and self.job.on_text is not None:
            self.job.on_text(self.text[self.sent:upto])
        self.sent = max(self.sent, upto)

    def _finish(self, reason: FinishReason) -> None:
        if reason != "cancelled" and self.read_offset < len(self.generated):
            self._extend_text(final=True)  # a last piece still waiting for the rest of a character
            if self.done:  # that piece completed a stop string
                return
        if reason != "cancelled":
            self._send(len(self.text))  # whatever was held back as a possible start of a stop string
        self.job.text = self.text
        self.job.finish_reason = reason


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest
