"""The parts of `lmtune serve` with logic of their own: micro-batching, request validation, token limits and
weight sharing."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from lmtune.serving.batcher import Batcher
from lmtune.serving.errors import ApiError
from lmtune.serving.limits import Limits
from lmtune.serving.metrics import Metrics
from lmtune.serving.requests import Body, chat_request, completion_request, predict_request
from lmtune.serving.served import share_weights


class _Pool:
    """A stand-in for the model thread: runs the work inline and records each batch."""

    def __init__(self, delay: float = 0.0):
        self.batches: list[list] = []
        self.delay = delay

    def __call__(self, payloads: list) -> list:
        self.batches.append(list(payloads))
        time.sleep(self.delay)
        return [p * 10 if p >= 0 else ValueError(f"bad {p}") for p in payloads]


def _run(limits: Limits, pool: _Pool, submit):
    async def main():
        from concurrent.futures import ThreadPoolExecutor

        batcher = Batcher("m", "predict", pool, limits, ThreadPoolExecutor(1), Metrics())
        batcher.start()
        try:
            return await submit(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_requests_that_wait_together_run_in_one_batch_and_a_failure_stays_in_its_request():
    pool = _Pool(delay=0.05)

    async def submit(batcher):
        first = batcher.submit(0, 1, 4)  # runs at once: the model is idle
        await asyncio.sleep(0.01)
        rest = [batcher.submit(p, 1, 4) for p in (1, 2, -3, 4)]  # queue while the first batch computes
        results = await asyncio.gather(first.future, *(i.future for i in rest), return_exceptions=True)
        return results

    results = _run(Limits(max_wait_ms=1), pool, submit)
    assert pool.batches == [[0], [1, 2, -3, 4]]
    assert results[:3] == [0, 10, 20] and isinstance(results[3], ValueError) and results[4] == 40


def test_batches_respect_the_size_and_padded_token_budgets():
    pool = _Pool(delay=0.05)

    async def submit(batcher):
        blocker = batcher.submit(0, 1, 1)
        await asyncio.sleep(0.01)
        items = [batcher.submit(p, 1, 100) for p in range(1, 8)]
        await asyncio.gather(blocker.future, *(i.future for i in items))

    _run(Limits(max_batch_size=3, max_batch_tokens=250, max_wait_ms=1), pool, submit)
    assert [len(b) for b in pool.batches] == [1, 2, 2, 2, 1]  # 2 × 100 tokens fit 250, 3 do not


def test_a_full_queue_answers_429_with_retry_after_and_cancelled_work_is_dropped():
    pool = _Pool(delay=0.1)

    async def submit(batcher):
        running = batcher.submit(0, 1, 1)
        await asyncio.sleep(0.02)
        queued = batcher.submit(1, 2, 1)
        gone = batcher.submit(2, 1, 1)
        gone.cancelled.set()
        with pytest.raises(ApiError) as refused:
            batcher.submit(3, 2, 1)
        await asyncio.gather(running.future, queued.future)
        return refused.value

    refused = _run(Limits(max_queue=3, max_wait_ms=1), pool, submit)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert pool.batches == [[0], [1]]


def test_request_bodies_are_checked_field_by_field():
    limits = Limits()
    assert predict_request({"inputs": "hi"}, ("text",), limits).inputs == [{"text": "hi"}]
    request = predict_request({"inputs": [{"question": "q", "context": "c"}]}, ("question", "context"), limits)
    assert request.inputs == [{"question": "q", "context": "c"}]
    cases = [
        ({"inputs": ["x"], "other": 1}, 422, "other: unknown field"),
        ({"inputs": []}, 422, "inputs: empty"),
        ({"inputs": [{"text": 1}]}, 422, "inputs[0].text: expected a string, got a number"),
        ({"inputs": ["x"] * 300}, 413, "inputs: 300 items, over the limit of 256"),
        ({"inputs": ["x"], "truncate": 1}, 422, "truncate: expected true or false"),
    ]
    for body, status, message in cases:
        with pytest.raises(ApiError) as err:
            predict_request(body, ("text",), limits)
        assert err.value.status == status and err.value.message.startswith(message), err.value.message
    generation = completion_request({"prompt": "x", "max_tokens": 5.0, "stop": "\n", "seed": 3}, limits)
    assert (generation.max_tokens, generation.stop, generation.seed, generation.temperature) == (5, ("\n",), 3, 1.0)
    for body, message in [({"prompt": "x", "top_p": 0}, "top_p: 0 is out of range (0.0, 1.0]"),
                          ({"prompt": "x", "max_tokens": True}, "max_tokens: expected an integer, got a boolean"),
                          ({"prompt": 5}, "prompt: expected a string"),
                          ({"prompt": "x", "echo": True}, "echo: True is not supported")]:
        with pytest.raises(ApiError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            completion_request(body, limits)
    chat = chat_request({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                         "max_completion_tokens": 7}, limits)
    assert chat.prompts == [[{"role": "user", "content": "hi"}]] and chat.max_tokens == 7
    with pytest.raises(ApiError, match=r"messages\[0\].role: 'robot' is not one of"):
        chat_request({"messages": [{"role": "robot", "content": "x"}]}, limits)
    with pytest.raises(ApiError, match="unknown field"):
        Body({"x": 1}, ("y",))


def test_token_limits_count_special_tokens_and_truncate_the_last_field_first():
    from lmtune.models import load_tokenizer, resolve_model
    from lmtune.serving.jobs import _within_limit

    tokenizer = load_tokenizer(resolve_model("bundled:minilm"))
    fields = {"question": "who won?", "context": "word " * 50}
    whole = len(tokenizer(fields["question"], fields["context"])["input_ids"])  # the count, independently
    with pytest.raises(ApiError, match=rf"inputs\[2\]: {whole} tokens, over the limit of 20"):
        _within_limit(tokenizer, fields, ("question", "context"), 20, False, 2)
    cut = _within_limit(tokenizer, fields, ("question", "context"), 20, True, 0)
    assert cut["question"] == "who won?" and cut["context"] == "word " * 13 + "word"
    assert len(tokenizer(cut["question"], cut["context"])["input_ids"]) == 20


def test_equal_weights_of_several_models_are_stored_once():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    twin = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    twin.load_state_dict(base.state_dict())
    with torch.no_grad():
        twin[1].weight += 1  # a different head
    saved = share_weights([base, twin])
    assert twin[0].weight.data_ptr() == base[0].weight.data_ptr()
    assert twin[1].weight.data_ptr() != base[1].weight.data_ptr()
    assert saved == (8 * 8 + 8 + 2) * 4  # the first layer, and the second bias that the edit left equal


def test_limits_refuse_nonsense():
    from lmtune.errors import LmtuneError

    with pytest.raises(LmtuneError, match="--max-batch-size: 0 must be a number > 0"):
        Limits(max_batch_size=0)
    assert "padded tokens" in Limits.field_docs()["max_batch_tokens"].lower()


def test_each_side_of_the_server_owns_its_tokenizer(tmp_path):
    """The model thread, the request side and the explain lane never share a fast tokenizer (tokenizers#537)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmtune.inference import LoadedRun
    from lmtune.serving.served import ServedRun
    from tests.conftest import make_tiny_bert

    path = make_tiny_bert(tmp_path / "bert")
    tokenizer = AutoTokenizer.from_pretrained(path)
    run = LoadedRun(tmp_path, None, None, AutoModelForSequenceClassification.from_pretrained(path), tokenizer)
    served = ServedRun("cls", run)
    with served.request_tokenizer.borrow() as request_side:
        assert request_side is not tokenizer and request_side.backend_tokenizer is not tokenizer.backend_tokenizer
        assert request_side("a fine film")["input_ids"] == tokenizer("a fine film")["input_ids"]


def test_max_tokens_defaults_as_openai_documents():
    """Completions default to 16 new tokens; chat completions to as many as the server allows."""
    from lmtune.serving.limits import Limits
    from lmtune.serving.requests import chat_request, completion_request

    limits = Limits(max_new_tokens=300)
    assert completion_request({"prompt": "x"}, limits).max_tokens == 16
    assert chat_request({"messages": [{"role": "user", "content": "hi"}]}, limits).max_tokens == 300


def test_the_python_serve_takes_paths_strings_and_lists(tmp_path):
    """`lmtune.serve` builds the app for one run (a str or a Path) or several; runs load at startup."""
    import lmtune

    assert lmtune.serve(tmp_path / "a").state.lmtune.specs == [str(tmp_path / "a")]
    assert lmtune.serve(str(tmp_path / "a")).state.lmtune.specs == [str(tmp_path / "a")]
    assert lmtune.serve([tmp_path / "a", f"b={tmp_path / 'b'}"]).state.lmtune.specs == [
        str(tmp_path / "a"), f"b={tmp_path / 'b'}"]
