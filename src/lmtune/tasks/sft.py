"""Instruction tuning (supervised fine-tuning) of a causal LM: the loss is on the response tokens only.

Rows are ``instruction`` (+ optional ``input``) → ``output`` (Alpaca), a chat ``messages`` list of
``{"role": system|user|assistant, "content": ...}`` (OpenAI), a ShareGPT ``conversations`` list of
``{"from": system|human|gpt, "value": ...}``, or ``prompt`` → ``completion`` (one user turn and its answer).
Every one becomes a conversation rendered with one chat
template (``lm.chat_template``, else the tokenizer's own, else lmtune's "### Instruction / ### Response").
The template is saved with the run and its tokenizer, so prediction renders prompts exactly as training did.

Each conversation is rendered piece by piece: the text up to an assistant turn (with the generation
prompt) is the context, the text that turn adds is the target. The pieces are tokenized separately, so the
tokens of a prompt at prediction time are exactly the context tokens seen in training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.data.collate import SEGMENTS
from lmtune.errors import DataError, LmtuneError
from lmtune.tasks.base import TASKS, Capabilities
from lmtune.tasks.language_model import IGNORE_INDEX, TokenTask, load_causal_lm

log = logging.getLogger("lmtune")
MESSAGES = "messages"
SHAREGPT = "conversations"
"""ShareGPT's layout: a list of ``{"from": human|gpt|system, "value": text}``."""
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
INPUT = "input"
"""Optional column of extra input appended to the instruction (Alpaca's layout)."""
ROLES = ("system", "user", "assistant")
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'assistant' %}\n\n{% endif %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)
"""lmtune's chat template, for tokenizers without one: plain-text markers any base LM can learn."""


@TASKS.register("sft")
class InstructionTuning(TokenTask):
    name = "sft"
    # rows may be chat `messages` instead of instruction/output columns, so no one target column is required
    capabilities = Capabilities(labelled=False, generates=True, low_precision_logits=True, replies=True)
    default_columns = {"text": "instruction", "label": "output"}
    input_fields = ("instruction", INPUT)

    def __init__(self, chat_template: str | None = None):
        self.chat_template = chat_template
        """Set by configure (the config's) or by encode (the tokenizer's own, else lmtune's)."""
        self.packing = False

    def configure(self, cfg: Any) -> None:
        self.chat_template = cfg.lm.chat_template
        self.packing = bool(cfg.lm.packing)

    def packs(self) -> bool:
        return self.packing

    def training_examples(self, examples: list[dict], max_length: int) -> list[dict]:
        """With ``lm.packing``: examples laid end to end in rows of up to ``max_length`` tokens (in their order),
        each token marked with its example (`lmtune.data.collate.packed_attention`); else the examples."""
        if not self.packing:
            return examples
        rows: list[dict] = []
        for example in examples:
            row = rows[-1] if rows else None
            if row is None or len(row["input_ids"]) + len(example["input_ids"]) > max_length:
                row = {"input_ids": [], "labels": [], SEGMENTS: []}
                rows.append(row)
            segment = row[SEGMENTS][-1] + 1 if row[SEGMENTS] else 0
            row["input_ids"] += example["input_ids"]
            row["labels"] += example["labels"]
            row[SEGMENTS] += [segment] * len(example["input_ids"])
        return rows

    def restore(self, state: dict[str, Any], cfg: Any) -> None:
        self.chat_template = state.get("chat_template")

    def state(self) -> dict[str, Any]:
        return {"chat_template": self.chat_template}

    def build_model(self, source: str | Path, **kwargs: Any) -> torch.nn.Module:
        return load_causal_lm(source, **kwargs)

    # ---- rows → conversations -------------------------------------------------------------------

    def learn_from_rows(self, train: Table, data: DataConfig) -> None:
        for i in range(len(train)):
            self.conversation(train, i, data, with_response=True)

    def conversation(self, table: Table, index: int, data: DataConfig, with_response: bool) -> list[dict]:
        """Row ``index`` as chat messages; ``with_response``: it must end with the assistant's answer."""
        row = table.rows[index]
        if row.get(SHAREGPT) is not None and row.get(MESSAGES) is None:
            row = {MESSAGES: _sharegpt(row[SHAREGPT], table.where(index))}
        elif "prompt" in row and data.text not in row:
            row = {MESSAGES: _prompt_completion(row, table.where(index), with_response)}
        if MESSAGES in row and row[MESSAGES] is not None:
            messages = row[MESSAGES]
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                    for m in messages):
                raise DataError(f"{table.where(index)}: {MESSAGES!r} must be a non-empty list of "
                                f"{{'role': {'|'.join(ROLES)}, 'content': text}}")
            if with_response and messages[-1]["role"] != "assistant":
                raise DataError(f"{table.where(index)}: the last message must be the assistant's (the response "
                                "to learn)")
            if not with_response and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            return messages
        instruction = row.get(data.text, row.get("text"))
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(f"{table.where(index)}: expected an {data.text!r} text (or a {MESSAGES!r} list); "
                            f"got {instruction!r}")
        extra = row.get(INPUT)
        if extra is not None and not isinstance(extra, str):
            raise DataError(f"{table.where(index)}: column {INPUT!r} is {extra!r}; expected text")
        user = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
        messages = [{"role": "user", "content": user}]
        if with_response:
            output = row.get(data.label)
            if not isinstance(output, str) or not output.strip():
                raise DataError(f"{table.where(index)}: column {data.label!r} is {output!r}; expected the response "
                                "text")
            messages.append({"role": "assistant", "content": output})
        return messages

    def input_row(self, fields: dict[str, str], data: DataConfig) -> dict[str, str]:
        if data.text not in fields and "instruction" not in fields:
            raise DataError("instruction: missing; an sft run answers an instruction (with an optional input)")
        return {data.text: fields.get("instruction", fields.get(data.text)), INPUT: fields.get(INPUT)}

    def accepted_fields(self, data: DataConfig) -> list[str]:
        return list(self.input_fields)  # the input is optional

    # ---- conversations → tokens -----------------------------------------------------------------

    def _template(self, tokenizer: Any) -> str:
        if self.chat_template is None:
            self.chat_template = getattr(tokenizer, "chat_template", None) or DEFAULT_TEMPLATE
        tokenizer.chat_template = self.chat_template  # saved with the model's tokenizer
        return self.chat_template

    def render(self, messages: list[dict], tokenizer: Any, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                             chat_template=self._template(tokenizer))

    def pieces(self, messages: list[dict], tokenizer: Any) -> list[tuple[str, bool]]:
        """The rendered conversation as (text, is_target) pieces: each assistant turn is a target."""
        out, done = [], ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:k], tokenizer, True)
            full = self.render(messages[: k + 1], tokenizer, False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise LmtuneError("lm.chat_template: rendering a conversation turn by turn must extend the text "
                                  "rendered so far; this template rewrites earlier turns")
            out += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        return out

    def _start(self, tokenizer: Any, text: str) -> list[int]:
        """BOS in front, as in pretraining, unless the template writes it itself."""
        bos = tokenizer.bos_token_id
        return [bos] if bos is not None and not text.startswith(tokenizer.bos_token or "\0") else []

    def encode(self, table: Table, tokenizer: Any, data: DataConfig, max_length: int) -> list[dict]:
        """Training and evaluation rows (with responses); prediction inputs go through `prompt_ids`."""
        examples, dropped = [], 0
        for i in range(len(table)):
            messages = self.conversation(table, i, data, with_response=True)
            pieces = self.pieces(messages, tokenizer)
            ids = self._start(tokenizer, pieces[0][0])
            labels = [IGNORE_INDEX] * len(ids)
            for text, target in pieces:
                piece = tokenizer(text, add_special_tokens=False)["input_ids"]
                ids += piece
                labels += piece if target else [IGNORE_INDEX] * len(piece)
            ids, labels = ids[:max_length], labels[:max_length]
            if all(t == IGNORE_INDEX for t in labels[1:]):  # truncation left no response token to learn from
                dropped += 1
                continue
            examples.append({"input_ids": ids, "labels": labels, "row": i})
        if dropped:
            log.warning("%s: %d rows have no response left within train.max_length=%d; "
                                                "they are skipped", table.source, dropped, max_length)
        if not examples:
            raise DataError(f"{table.source}: no row has response tokens within train.max_length={max_length}")
        return examples

    # ---- prediction -----------------------------------------------------------------------------

    def prompts(self, table: Table, data: DataConfig) -> list[list[dict]]:
        return [self.conversation(table, i, data, with_response=False) for i in range(len(table))]

    def prompt_ids(self, prompt: str | dict | list, tokenizer: Any) -> list[int]:
        """Tokens of a prompt: an instruction, a row, or messages, rendered with the generation prompt."""
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, dict):
            messages = self.conversation(Table("<prompt>", list(prompt), [prompt]), 0,
                                         DataConfig(**self.default_columns), with_response=False)
        else:
            messages = prompt
        # tokenized piece by piece, exactly as training tokenized the same turns
        pieces = [text for text, _ in self.pieces(messages, tokenizer)]
        pieces.append(self.render(messages, tokenizer, True)[len("".join(pieces)):])
        ids = self._start(tokenizer, pieces[0] or pieces[-1])
        for text in pieces:
            ids += tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return ids


def _sharegpt(turns: Any, where: str) -> list[dict]:
    """ShareGPT turns as chat messages (human → user, gpt → assistant)."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) and t.get("from") in SHAREGPT_ROLES
                                              and isinstance(t.get("value"), str) for t in turns):
        raise DataError(f"{where}: {SHAREGPT!r} must be a list of {{'from': {'|'.join(SHAREGPT_ROLES)}, "
                        "'value': text}")
    return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns]


def _prompt_completion(row: dict, where: str, with_response: bool) -> list[dict]:
    prompt, completion = row["prompt"], row.get("completion")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: 'prompt' is {prompt!r}; expected text")
    if with_response and (not isinstance(completion, str) or not completion.strip()):
        raise DataError(f"{where}: 'completion' is {completion!r}; expected the response text")
    return [{"role": "user", "content": prompt}] + (
        [{"role": "assistant", "content": completion}] if isinstance(completion, str) else [])
