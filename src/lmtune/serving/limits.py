"""What one server accepts and how it batches: `lmtune serve`'s options, in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from lmtune.errors import LmtuneError


@dataclass(frozen=True)
class Limits:
    max_batch_size: int = 32
    """Inputs (or generation requests) run together in one batch."""
    max_batch_tokens: int = 16384
    """Padded tokens in one batch (inputs × longest input); a batch stops growing at this budget."""
    max_wait_ms: float = 5.0
    """How long a batch waits for more requests when others are already queued (none when the queue is empty)."""
    max_queue: int = 512
    """Inputs waiting per run and kind of work; beyond it requests get 429 with Retry-After."""
    max_body_bytes: int = 1 << 20
    """Largest request body (413 above)."""
    max_inputs: int = 256
    """Most inputs (or prompts) in one request (413 above)."""
    max_input_tokens: int = 2048
    """Most tokens in one input or prompt (422 above, unless the request says truncate: true)."""
    max_new_tokens: int = 512
    """Largest max_tokens a generation request may ask for."""
    request_timeout: float = 60.0
    """Seconds a request may wait and run before it gets 504."""
    drain_timeout: float = 30.0
    """Seconds in-flight requests get to finish after SIGTERM."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise LmtuneError(f"--{f.name.replace('_', '-')}: {value!r} must be a number > 0")

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Each field's docstring (the text under it in this file), for --help."""
        import ast
        import inspect

        body = ast.parse(inspect.getsource(cls)).body[0].body
        docs = {}
        for node, following in zip(body, body[1:], strict=False):
            if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr):
                docs[node.target.id] = " ".join(following.value.value.split())
        return docs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
