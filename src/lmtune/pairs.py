"""``lmtune pairs``: preference pairs from a model and a judge, for users with prompts but no preference labels.

For each prompt, the run samples N completions; a judge scores each one; the best and the worst become a pair
(``prompt``/``chosen``/``rejected``, the text form that `lmtune.tasks.preference` reads; chat prompts give chat
pairs), with both scores. A prompt whose best and worst completions score within ``min_gap`` of each other gives
no pair: the judge does not prefer one, and a pair would teach noise. Empty completions (the model ended at once)
and repeats are left out; a prompt with fewer than two distinct completions gives no pair either.

A judge is either a classification run (the probability of one of its labels, for the prompt and completion
together or the completion alone) or a Python function ``module:function`` given (prompt, completions) and
returning one score per completion.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmtune import rundir
from lmtune.data import Table, read_table
from lmtune.errors import DataError, LmtuneError
from lmtune.generation import GenerationSettings, Job, generate_batch
from lmtune.inference import LoadedRun, load
from lmtune.judging import judge_from

log = logging.getLogger("lmtune")


@dataclass(frozen=True)
class PairSettings:
    samples: int = 4
    """Completions sampled per prompt (the best and the worst make the pair)."""
    generation: GenerationSettings = field(
        default_factory=lambda: GenerationSettings(max_new_tokens=32, temperature=1.0, top_p=0.95, seed=0))
    min_gap: float = 0.0
    """Best minus worst score below this: no pair for the prompt."""

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise LmtuneError(f"--samples: {self.samples} must be >= 2 (a pair needs two completions)")
        if self.generation.temperature == 0:
            raise LmtuneError("--temperature: 0 is greedy, and every sample would be the same; use > 0")


def make_pairs(run: str | Path, prompts: str | Path, judge: str, out: str | Path, label: str | None = None,
               settings: PairSettings | None = None, judge_reply_only: bool = False) -> dict[str, Any]:
    """Write preference rows for every prompt in ``prompts`` to ``out`` (JSONL, written whole or not at all).

    Args:
        run: the run whose model samples the completions (one that generates text).
        prompts: a file of prompts: a ``prompt`` (or ``text``) column of text or chat messages, or plain lines.
        judge: a classification run directory, or ``module:function``.
        label: with a classification judge, the label whose probability is the score.
        judge_reply_only: a classification judge reads the completion alone (default: prompt and completion).

    Returns:
        Counts: prompts, pairs written, prompts left without a pair (ties), mean chosen and rejected scores.
    """
    settings = settings or PairSettings()
    policy = load(run)
    if not policy.task.capabilities.generates:
        raise LmtuneError(f"{run}: task {policy.config.task!r} does not generate text; sample from a language model "
                          "run")
    scorer = judge_from(judge, label, judge_reply_only)
    items = _prompts(read_table(str(prompts), "test"))
    rows, ties, empty = [], 0, 0
    for prompt in items:
        # an empty completion (the model ended at once) is no reply to prefer or reject
        completions = sorted({c for c in _sample(policy, prompt, settings) if c.strip()}, key=str)
        if len(completions) < 2:
            empty += 1
            continue
        scores = scorer(prompt, completions)
        if len(scores) != len(completions):
            raise LmtuneError(f"--judge {judge}: returned {len(scores)} scores for {len(completions)} completions")
        best = max(range(len(scores)), key=scores.__getitem__)
        worst = min(range(len(scores)), key=scores.__getitem__)
        if scores[best] - scores[worst] <= settings.min_gap:
            ties += 1
            continue
        rows.append(_row(prompt, completions[best], completions[worst], scores[best], scores[worst]))
    rundir.write_text_atomic(Path(out), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    mean = lambda key: round(sum(r[key] for r in rows) / len(rows), 4) if rows else None  # noqa: E731
    return {"prompts": len(items), "pairs": len(rows), "ties": ties, "too_few_completions": empty,
            "chosen_score": mean("chosen_score"),
            "rejected_score": mean("rejected_score"), "out": str(out)}


def _prompts(table: Table) -> list[Any]:
    column = next((c for c in ("prompt", "text", "messages") if c in table.columns), None)
    if column is None:
        raise DataError(f"{table.source}: expected a 'prompt' (or 'text') column; the file has "
                        f"{', '.join(map(repr, table.columns))}")
    out = []
    for i, row in enumerate(table.rows):
        value = row.get(column)
        if not (isinstance(value, str) and value.strip()) and not (isinstance(value, list) and value):
            raise DataError(f"{table.where(i)}: {column!r} must be text or a list of chat messages; got {value!r}")
        out.append(value)
    if not out:
        raise DataError(f"{table.source}: no prompts")
    return out


def _sample(policy: LoadedRun, prompt: Any, settings: PairSettings) -> list[str]:
    ids = policy.task.prompt_ids(prompt, policy.tokenizer)
    base = settings.generation.seed or 0
    jobs = [Job(ids, replace(settings.generation, seed=base + k)) for k in range(settings.samples)]
    generate_batch(policy.model, policy.tokenizer, jobs)
    return [job.text for job in jobs]


def _row(prompt: Any, chosen: str, rejected: str, chosen_score: float, rejected_score: float) -> dict[str, Any]:
    scores = {"chosen_score": round(float(chosen_score), 6), "rejected_score": round(float(rejected_score), 6)}
    if isinstance(prompt, list):  # chat prompts give chat pairs
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}], **scores}
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **scores}
