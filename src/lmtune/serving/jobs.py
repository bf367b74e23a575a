"""The request side: inputs checked against the limits and tokenized before they join a queue.

Everything here runs on the event loop (small bodies) or in a request thread (large ones), and tokenizes with
the run's request-side tokenizer only (`ServedRun.request_tokenizer`), never the model thread's.
"""

from __future__ import annotations

from typing import Any

from lmtune.generation import GenerationSettings, Job, check_prompt, context_limit
from lmtune.serving.errors import invalid
from lmtune.serving.limits import Limits
from lmtune.serving.served import ServedRun, table_of


def encode_inputs(served: ServedRun, inputs: list[dict[str, str]], truncate: bool,
                  limits: Limits) -> tuple[list, list]:
    """(prediction rows, their encoded examples) of a /v1/predict request, each input within the token limit."""
    run = served.loaded
    rows = []
    with served.request_tokenizer.borrow() as tokenizer:
        for i, fields in enumerate(inputs):
            fields = _within_limit(tokenizer, fields, run.task.input_fields, limits.max_input_tokens, truncate, i)
            rows.append(run.task.input_row(fields, run.config.data))
        return rows, run.encode_inputs(table_of(rows), tokenizer)


def check_explain_input(served: ServedRun, fields: dict[str, str], limits: Limits) -> None:
    """An explain request's input: the fields this run takes (a pair only for pair runs), within the limit."""
    run = served.loaded
    run.task.input_row(fields, run.config.data)
    with served.request_tokenizer.borrow() as tokenizer:
        _within_limit(tokenizer, fields, run.task.input_fields, limits.max_input_tokens, False, 0)


def _within_limit(tokenizer: Any, fields: dict[str, str], order: tuple[str, ...], limit: int, truncate: bool,
                  index: int) -> dict[str, str]:
    """The input's fields, checked against ``limit`` tokens (special tokens included), or cut to it (the last
    field first: a QA context or a pair's second text before the question or first text)."""
    names = [name for name in order if name in fields]
    encoded = {name: tokenizer(fields[name], add_special_tokens=False, return_offsets_mapping=True)
               for name in names}
    specials = tokenizer.num_special_tokens_to_add(pair=len(names) > 1)
    total = specials + sum(len(e["input_ids"]) for e in encoded.values())
    if total <= limit:
        return fields
    if not truncate:
        raise invalid(f"inputs[{index}]: {total} tokens, over the limit of {limit} (--max-input-tokens); "
                      "send \"truncate\": true to cut it", "inputs")
    fields = dict(fields)
    for name in reversed(names):
        excess = total - limit
        if excess <= 0:
            break
        offsets = encoded[name]["offset_mapping"]
        keep = max(1, len(offsets) - excess) if name == names[0] else max(0, len(offsets) - excess)
        fields[name] = fields[name][: offsets[keep - 1][1]] if keep else ""
        total -= len(offsets) - keep
    return fields


def prompt_jobs(served: ServedRun, inputs: list[dict[str, str]], truncate: bool,
                limits: Limits) -> tuple[list, list[Job]]:
    """(rows, greedy generation jobs) of a /v1/predict request to a language model."""
    run = served.loaded
    rows = [run.task.input_row(fields, run.config.data) for fields in inputs]
    prompts = run.task.prompts(table_of(rows), run.config.data)
    settings = GenerationSettings()
    jobs = [generation_job(served, prompt, settings, (), truncate, limits, i) for i, prompt in enumerate(prompts)]
    return rows, jobs


def generation_job(served: ServedRun, prompt: Any, settings: GenerationSettings, stop: tuple[str, ...],
                   truncate: bool, limits: Limits, index: int) -> Job:
    """One prompt's generation job: its ids within the input limit, its new tokens within the context."""
    run = served.loaded
    with served.request_tokenizer.borrow() as tokenizer:
        ids = run.task.prompt_ids(prompt, tokenizer)
    if len(ids) > limits.max_input_tokens:
        if not truncate:
            raise invalid(f"prompt {index}: {len(ids)} tokens, over the limit of {limits.max_input_tokens} "
                          "(--max-input-tokens); send \"truncate\": true to keep its end", "prompt")
        ids = ids[-limits.max_input_tokens:]
    check_prompt(run.model, len(ids))
    limit = context_limit(run.model)
    room = limit - len(ids) if limit else settings.max_new_tokens
    return Job(ids, GenerationSettings(max_new_tokens=min(settings.max_new_tokens, room),
                                       temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed),
               stop)
