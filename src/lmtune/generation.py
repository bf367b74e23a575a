"""Text generation from a causal LM: greedy or sampled (temperature, top-k, top-p), with a repetition
penalty, streamed piece by piece to a callback (the terminal, an HTTP response)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from lmtune.errors import LmtuneError


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

    def to_generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                                  "repetition_penalty": self.repetition_penalty}
        if self.temperature == 0:
            return {**kwargs, "do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        return {**kwargs, "do_sample": True, "temperature": self.temperature, "top_k": self.top_k or 0,
                "top_p": self.top_p or 1.0}


class _Stream:
    """A transformers streamer that hands each newly decoded piece of text to ``on_text``.

    Decoding the whole continuation each time (not token by token) keeps multi-byte characters and
    word-piece joins right; only the new suffix is passed on.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        self.ids += value.reshape(-1).tolist()
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its other bytes
            return
        if len(text) > self.sent:
            self.on_text(text[self.sent:])
            self.sent = len(text)

    def end(self) -> None:
        pass


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompt_ids: list[int], settings: GenerationSettings,
             on_text: Callable[[str], None] | None = None) -> str:
    """The continuation of ``prompt_ids`` as text (special tokens dropped); stops at EOS or the token limit."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and ids.shape[1] >= limit:
        raise LmtuneError(f"prompt: {ids.shape[1]} tokens do not fit the model's context of {limit}")
    kwargs = settings.to_generate_kwargs()
    if limit:
        kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], limit - ids.shape[1])
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    streamer = _Stream(tokenizer, on_text) if on_text else None
    with torch.random.fork_rng(devices=[]) if settings.seed is not None else nullcontext():
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), eos_token_id=eos,
                             pad_token_id=pad, streamer=streamer, **kwargs)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

