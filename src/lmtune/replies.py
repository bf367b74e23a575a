"""Generated replies scored during training (``replies.samples``): the validation metrics of what a decoder says,
not only of how likely it finds the reference.

At each evaluation the model greedily answers the prompts of the first ``samples`` validation examples (the
prompt and the reply are the example's own: `Task.reply_of`), and the replies are compared with the references:
``reply_exact_match`` (after trimming and lower-casing, in percent), ``reply_rougeL`` (ROUGE-L F, stemmed, in
percent, as summarization reports it), ``reply_length`` (mean new tokens) and, with ``replies.judge``,
``reply_judge`` (the judge's mean probability of ``replies.judge_label`` for the replies alone, in percent).
They are logged in ``metrics.jsonl`` with the validation metrics, so curves, trackers and the report show them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lmtune.config import RepliesConfig
from lmtune.errors import LmtuneError
from lmtune.generation import GenerationSettings, Job, generate_batch
from lmtune.judging import judge_from
from lmtune.models import bare_model
from lmtune.tasks import Task
from lmtune.tasks.summarization import rouge

REPLY_METRICS = ("reply_exact_match", "reply_rougeL", "reply_judge", "reply_length")
BATCH = 8
"""Prompts generated together."""


def reply_scorer(task: Task, tokenizer: Any, validation: list[dict] | None,
                 settings: RepliesConfig) -> Callable[[torch.nn.Module], dict[str, float]] | None:
    """The scoring the training loop runs after each validation pass, or None when ``replies.samples`` is 0.

    Raises:
        LmtuneError: no validation example has a reply to compare with, or the judge cannot be used.
    """
    if not settings.samples or not task.capabilities.replies:
        return None
    sample = [pair for pair in (task.reply_of(e) for e in (validation or [])) if pair and pair[0]][:settings.samples]
    if not sample:
        raise LmtuneError("replies.samples: the validation data has no example with a prompt and a reply to "
                          "compare generated replies with")
    references = [tokenizer.decode(reply, skip_special_tokens=True).strip() for _, reply in sample]
    judge = (judge_from(settings.judge, str(settings.judge_label), True, ("replies.judge", "replies.judge_label"))
             if settings.judge else None)
    generation = GenerationSettings(max_new_tokens=settings.max_new_tokens, temperature=0.0)

    def score(model: torch.nn.Module) -> dict[str, float]:
        replies, lengths = _generate(bare_model(model), tokenizer, [prompt for prompt, _ in sample], generation)
        out = {"reply_exact_match": 100 * sum(_same(a, b) for a, b in zip(replies, references, strict=True))
               / len(replies),
               "reply_rougeL": rouge(replies, [[r] for r in references])["rougeL"],
               "reply_length": sum(lengths) / len(lengths)}
        if judge is not None:
            scores = judge(None, replies)
            out["reply_judge"] = 100 * sum(scores) / len(scores)
        return {k: round(v, 4) for k, v in out.items()}

    return score


def _generate(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]],
              settings: GenerationSettings) -> tuple[list[str], list[int]]:
    was_training = model.training
    model.eval()
    try:
        jobs = [Job(list(prompt), settings) for prompt in prompts]
        for start in range(0, len(jobs), BATCH):
            generate_batch(model, tokenizer, jobs[start:start + BATCH])
    finally:
        model.train(was_training)
    return [job.text.strip() for job in jobs], [job.completion_tokens for job in jobs]


def _same(reply: str, reference: str) -> bool:
    return " ".join(reply.lower().split()) == " ".join(reference.lower().split())
