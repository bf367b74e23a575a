"""Preference rows → pairs: three input forms, one `Pair`, and the kinds of pair that cannot teach anything.

The forms (one file may not mix the text forms with the chat form; each row is read on its own):

- **prompt / chosen / rejected** as text: the reply continues the prompt as written (no chat template);
- **chat**: ``chosen`` and ``rejected`` are lists of ``{role, content}`` messages ending with the assistant reply
  compared (an optional ``prompt`` column holds turns before them); the turns both share are the prompt, and the
  conversation is rendered with the model's chat template;
- **HH transcript**: ``chosen`` and ``rejected`` are whole dialogues of ``\\n\\nHuman: `` / ``\\n\\nAssistant: `` turns
  (Anthropic's HH-RLHF); the prompt is everything up to and including the last ``\\n\\nAssistant:``, so it reads
  as the text form with that prompt.

A pair whose sides share no prompt, or whose replies are identical or empty, is a *bad pair*: it is counted by
kind and left out (``data.on_bad_rows: skip``), or is an error naming its row (``error``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmtune.data import Table
from lmtune.errors import DataError

ASSISTANT_TURN = "\n\nAssistant:"
HUMAN_TURN = "\n\nHuman:"
ROLES = ("system", "user", "assistant")
BAD_KINDS = {"prompts_differ": "the two sides share no prompt", "identical": "the two replies are identical",
             "empty": "a reply is empty"}


@dataclass(frozen=True)
class Pair:
    """One preference pair: a prompt and two replies to it, the first preferred."""

    prompt: str | tuple[dict, ...]
    """Text the replies continue, or chat messages (then the replies are assistant turns)."""
    chosen: str
    rejected: str
    row: int

    @property
    def chat(self) -> bool:
        return not isinstance(self.prompt, str)


@dataclass
class BadPairs:
    """Bad pairs by kind, with the first row of each kind (for the message)."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, where: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.first.setdefault(kind, where)

    def summary(self) -> str:
        return "; ".join(f"{n} where {BAD_KINDS[k]} (first: {self.first[k]})"
                         for k, n in sorted(self.counts.items()))


def read_pairs(table: Table, on_bad_rows: str) -> tuple[list[Pair], BadPairs]:
    """Every good pair of ``table`` and the bad ones counted (``on_bad_rows='error'``: the first is an error)."""
    pairs, bad = [], BadPairs()
    for i in range(len(table)):
        pair = parse_row(table.rows[i], table.where(i), i)
        kind = bad_kind(pair)
        if kind is None:
            pairs.append(pair)
        elif on_bad_rows == "error":
            raise DataError(f"{table.where(i)}: {BAD_KINDS[kind]} (data.on_bad_rows=error; set it to skip to leave "
                            "such pairs out)")
        else:
            bad.add(kind, table.where(i))
    return pairs, bad


def bad_kind(pair: Pair) -> str | None:
    """Why a pair cannot teach anything, or None."""
    if pair.prompt is None:
        return "prompts_differ"
    if not pair.chosen.strip() or not pair.rejected.strip():
        return "empty"
    if pair.chosen.strip() == pair.rejected.strip():
        return "identical"
    return None


def parse_row(row: dict[str, Any], where: str, index: int) -> Pair:
    """The pair a row describes, in whichever form it is written (``prompt`` None: the sides' prompts differ).

    Raises:
        DataError: the row is in none of the forms (a missing column, a value of the wrong type).
    """
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):
        return _chat_pair(row.get("prompt"), chosen, rejected, where, index)
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise DataError(f"{where}: expected 'chosen' and 'rejected' as texts or as lists of chat messages; got "
                        f"{_kind(chosen)} and {_kind(rejected)}")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise DataError(f"{where}: 'prompt' is {_kind(prompt)}; with text replies it must be text")
    if prompt is None:
        return _transcript_pair(chosen, rejected, where, index)
    return Pair(prompt, chosen, rejected, index)


def _transcript_pair(chosen: str, rejected: str, where: str, index: int) -> Pair:
    """HH form: the prompt is each side up to its last Assistant turn marker."""
    cuts = [side.rfind(ASSISTANT_TURN) for side in (chosen, rejected)]
    if min(cuts) < 0:
        raise DataError(f"{where}: no 'prompt' column, so 'chosen' and 'rejected' must be whole dialogues with "
                        f"'\\n\\nHuman: ' / '\\n\\nAssistant: ' turns; a side has no {ASSISTANT_TURN.strip()!r} turn")
    prompts = [side[: cut + len(ASSISTANT_TURN)] for side, cut in zip((chosen, rejected), cuts, strict=True)]
    replies = [side[cut + len(ASSISTANT_TURN):] for side, cut in zip((chosen, rejected), cuts, strict=True)]
    return Pair(prompts[0] if prompts[0] == prompts[1] else None, replies[0], replies[1], index)


def _chat_pair(prompt: Any, chosen: list, rejected: list, where: str, index: int) -> Pair:
    head: list[dict] = []
    if isinstance(prompt, str):
        head = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        head = _messages(prompt, "prompt", where)
    elif prompt is not None:
        raise DataError(f"{where}: 'prompt' is {_kind(prompt)}; expected text or a list of chat messages")
    sides = [_messages(side, name, where) for side, name in ((chosen, "chosen"), (rejected, "rejected"))]
    for side, name in zip(sides, ("chosen", "rejected"), strict=True):
        if not side or side[-1]["role"] != "assistant":
            raise DataError(f"{where}: {name!r} must end with the assistant's reply (the one compared)")
    shared = tuple(head + sides[0][:-1])
    same = sides[0][:-1] == sides[1][:-1]
    return Pair(shared if same else None, sides[0][-1]["content"], sides[1][-1]["content"], index)


def _messages(value: Any, name: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value):
        raise DataError(f"{where}: {name!r} must be a list of {{'role': {'|'.join(ROLES)}, 'content': text}}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _kind(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__} ({str(value)[:40]!r})"
