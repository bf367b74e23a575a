"""Reading and validating request bodies: every field checked for type, range and size before any work is
queued, with the field named in the error (``param``)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from lmtune.serving.errors import ApiError, invalid
from lmtune.serving.limits import Limits

ROLES = ("system", "user", "assistant")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
MAX_STOPS = 4


async def read_json(request: Request, limits: Limits) -> dict[str, Any]:
    """The body as a JSON object: 400 for a wrong content type, bad UTF-8 or bad JSON, 413 over the size limit,
    422 for JSON that is not an object."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(400, f"content-type: expected application/json, got {kind or 'none'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise ApiError(413, f"body: {int(declared)} bytes, over the limit of {limits.max_body_bytes} "
                            "(--max-body-bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise ApiError(413, f"body: over the limit of {limits.max_body_bytes} bytes (--max-body-bytes)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"body: not valid UTF-8 (byte {err.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (json.JSONDecodeError, ValueError) as err:
        raise ApiError(400, f"body: not valid JSON ({err})") from None
    except RecursionError:
        raise ApiError(400, "body: JSON nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text):  # JSON may escape half of a UTF-16 pair, which no tokenizer can read
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "body: a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)") from None
    if not isinstance(value, dict):
        raise invalid(f"body: expected a JSON object, got {_kind(value)}")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of the range of a number")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


class Body:
    """Typed access to the fields of one request body; unknown fields are refused."""

    def __init__(self, body: dict[str, Any], allowed: tuple[str, ...]):
        unknown = [key for key in body if key not in allowed]
        if unknown:
            raise invalid(f"{unknown[0]}: unknown field; expected some of {', '.join(allowed)}", unknown[0])
        self.body = body

    def get(self, key: str, default: Any = None) -> Any:
        value = self.body.get(key)
        return default if value is None else value

    def string(self, key: str, required: bool = False, default: str | None = None) -> str | None:
        value = self.body.get(key)
        if value is None:
            if required:
                raise invalid(f"{key}: missing; expected a string", key)
            return default
        if not isinstance(value, str):
            raise invalid(f"{key}: expected a string, got {_kind(value)}", key)
        return value

    def label(self, key: str) -> str | None:
        """A class as text, or an integer label as `/v1/predict` returns it (1 and "1" name one class)."""
        value = self.body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if value is not None and not isinstance(value, str):
            raise invalid(f"{key}: expected a label (a string or an integer), got {_kind(value)}", key)
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.body.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid(f"{key}: expected true or false, got {_kind(value)}", key)
        return value

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int | None:
        value = self.body.get(key)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid(f"{key}: expected an integer, got {_kind(value)}", key)
        if not low <= value <= high:
            raise invalid(f"{key}: {value} is out of range [{low}, {high}]", key)
        return value

    def number(self, key: str, low: float, high: float, default: float | None = None,
               low_open: bool = False) -> float | None:
        value = self.body.get(key)
        if value is None:
            return default
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise invalid(f"{key}: expected a number, got {_kind(value)}", key)
        if not (low < value if low_open else low <= value) or value > high:
            raise invalid(f"{key}: {value} is out of range {'(' if low_open else '['}{low}, {high}]", key)
        return float(value)

    def unsupported(self, key: str, neutral: tuple[Any, ...]) -> None:
        """An OpenAI field lmtune accepts only with its neutral value (e.g. n=1, echo=false)."""
        value = self.body.get(key)
        if value is not None and value not in neutral:
            raise invalid(f"{key}: {value!r} is not supported by this server (only {neutral[0]!r})", key)


def _within_count(items: list, param: str, noun: str, limits: Limits) -> None:
    """413 for a request list longer than --max-inputs."""
    if len(items) > limits.max_inputs:
        raise ApiError(413, f"{param}: {len(items)} {noun}, over the limit of {limits.max_inputs} (--max-inputs)",
                       param)


def model_name(body: Body) -> str | None:
    return body.string("model")


# ---- /v1/predict and /v1/explain ----------------------------------------------------------------------

@dataclass(frozen=True)
class PredictRequest:
    model: str | None
    inputs: list[dict[str, str]]
    """Each input's fields (`Task.input_fields`); a bare string is the main text."""
    truncate: bool


def predict_request(raw: dict[str, Any], fields: tuple[str, ...] | None, limits: Limits) -> PredictRequest:
    """``fields``: the input fields of the addressed run (None: not known yet; checked later)."""
    body = Body(raw, ("model", "inputs", "truncate"))
    inputs = raw.get("inputs")
    if inputs is None:
        raise invalid("inputs: missing; expected a string or an array of inputs", "inputs")
    if isinstance(inputs, (str, dict)):
        inputs = [inputs]
    if not isinstance(inputs, list):
        raise invalid(f"inputs: expected a string or an array, got {_kind(inputs)}", "inputs")
    if not inputs:
        raise invalid("inputs: empty; expected at least one input", "inputs")
    _within_count(inputs, "inputs", "items", limits)
    return PredictRequest(model_name(body), [_input(item, i, fields) for i, item in enumerate(inputs)],
                          body.boolean("truncate"))


def _input(item: Any, index: int, fields: tuple[str, ...] | None) -> dict[str, str]:
    where = f"inputs[{index}]"
    if isinstance(item, str):
        return {(fields or ("text",))[0]: item}
    if not isinstance(item, dict):
        raise invalid(f"{where}: expected a string or an object, got {_kind(item)}", "inputs")
    for key, value in item.items():
        if fields is not None and key not in fields:
            raise invalid(f"{where}.{key}: unknown field; this run's inputs have {', '.join(fields)}", "inputs")
        if not isinstance(value, str):
            raise invalid(f"{where}.{key}: expected a string, got {_kind(value)}", "inputs")
    if not item:
        raise invalid(f"{where}: empty object; expected {', '.join(fields or ('text',))}", "inputs")
    return item


@dataclass(frozen=True)
class ExplainRequest:
    model: str | None
    text: str
    text_pair: str | None
    method: str
    target: str | None
    steps: int


def explain_request(raw: dict[str, Any], methods: tuple[str, ...]) -> ExplainRequest:
    body = Body(raw, ("model", "text", "text_pair", "method", "target", "steps"))
    method = body.string("method", default="ig")
    if method not in methods:
        raise invalid(f"method: {method!r} is not one of {', '.join(methods)}", "method")
    text = body.string("text", required=True)
    if not text.strip():
        raise invalid("text: empty; expected text to explain", "text")
    return ExplainRequest(model_name(body), text, body.string("text_pair"), method, body.label("target"),
                          body.integer("steps", 1, 200, 50))


# ---- OpenAI-compatible generation -----------------------------------------------------------------------

@dataclass(frozen=True)
class GenerationRequest:
    model: str | None
    prompts: list[Any]
    """Texts (completions) or one list of chat messages (chat)."""
    max_tokens: int
    temperature: float
    top_p: float | None
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    truncate: bool


_COMMON = ("model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "n", "user",
           "presence_penalty", "frequency_penalty", "logit_bias", "truncate")


def completion_request(raw: dict[str, Any], limits: Limits) -> GenerationRequest:
    body = Body(raw, (*_COMMON, "prompt", "echo", "logprobs", "best_of", "suffix"))
    prompt = raw.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    else:
        raise invalid("prompt: expected a string or a non-empty array of strings", "prompt")
    _within_count(prompts, "prompt", "prompts", limits)
    body.unsupported("echo", (False,))
    body.unsupported("best_of", (1,))
    body.unsupported("suffix", ("",))
    body.unsupported("logprobs", (0,))
    return _generation(body, prompts, limits, default_max_tokens=16)


def chat_request(raw: dict[str, Any], limits: Limits) -> GenerationRequest:
    body = Body(raw, (*_COMMON, "messages", "max_completion_tokens", "logprobs", "top_logprobs"))
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: expected a non-empty array of {role, content}", "messages")
    _within_count(messages, "messages", "items", limits)
    body.unsupported("logprobs", (False,))
    body.unsupported("top_logprobs", (0,))
    if raw.get("max_completion_tokens") is not None and raw.get("max_tokens") is None:
        raw = {**raw, "max_tokens": raw["max_completion_tokens"]}
        body = Body(raw, (*_COMMON, "messages", "max_completion_tokens", "logprobs", "top_logprobs"))
    return _generation(body, [[_message(m, i) for i, m in enumerate(messages)]], limits, default_max_tokens=None)


def _message(message: Any, index: int) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid(f"{where}: expected an object with role and content", "messages")
    unknown = [key for key in message if key not in ("role", "content", "name")]
    if unknown:
        raise invalid(f"{where}.{unknown[0]}: unknown field; expected role and content", "messages")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise invalid(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}", "messages")
    if isinstance(content, list):  # OpenAI's content parts: only text parts are meaningful here
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise invalid(f"{where}.content: only text parts ({{type: text, text}}) are supported", "messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise invalid(f"{where}.content: expected a string, got {_kind(content)}", "messages")
    return {"role": role, "content": content}


def _generation(body: Body, prompts: list[Any], limits: Limits, default_max_tokens: int | None) -> GenerationRequest:
    body.unsupported("n", (1,))
    body.unsupported("presence_penalty", (0, 0.0))
    body.unsupported("frequency_penalty", (0, 0.0))
    body.unsupported("logit_bias", ({},))
    stop = body.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOPS:
        raise invalid(f"stop: expected a non-empty string or up to {MAX_STOPS} of them", "stop")
    options = body.get("stream_options", {})
    if not isinstance(options, dict) or any(key != "include_usage" for key in options):
        raise invalid("stream_options: expected {include_usage: boolean}", "stream_options")
    include_usage = Body(options, ("include_usage",)).boolean("include_usage")
    return GenerationRequest(
        model=model_name(body),
        prompts=prompts,
        max_tokens=body.integer("max_tokens", 1, limits.max_new_tokens, default_max_tokens or limits.max_new_tokens),
        temperature=body.number("temperature", 0.0, 2.0, 1.0),
        top_p=body.number("top_p", 0.0, 1.0, None, low_open=True),
        stop=tuple(stop),
        seed=body.integer("seed", -(2 ** 63), 2 ** 63 - 1),
        stream=body.boolean("stream"),
        include_usage=include_usage,
        truncate=body.boolean("truncate"),
    )
