"""The one decoding loop: batched rows decode exactly as alone, each row's sampling is its own, stop strings
end the text without leaking a prefix into the stream, and a cancelled row stops."""

from __future__ import annotations

import threading

import pytest
import torch

from lmtune.errors import LmtuneError
from lmtune.generation import GenerationSettings, Job, _held_back, generate_batch


@pytest.fixture(scope="module")
def lm():
    """A small random Llama and a character-level tokenizer stand-in (ids are bytes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         bos_token_id=256, eos_token_id=257, pad_token_id=258)
    return LlamaForCausalLM(config).eval(), _Bytes()


class _Bytes:
    """Token i < 256 is byte i; 256-259 are special."""

    eos_token_id, pad_token_id = 257, 258

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def _greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_a_batch_of_different_lengths_decodes_each_row_as_a_plain_greedy_loop(lm):
    model, tok = lm
    prompts = [[256, 72, 105], [256, 65, 66, 67, 68, 69, 70], [256]]
    jobs = [Job(p, GenerationSettings(max_new_tokens=10)) for p in prompts]
    generate_batch(model, tok, jobs)
    for job, prompt in zip(jobs, prompts, strict=True):
        expected = _greedy_reference(model, prompt, 10)
        if tok.eos_token_id in expected:
            expected = expected[: expected.index(tok.eos_token_id)]
        assert job.text == tok.decode(expected)
        assert job.finish_reason == ("length" if len(expected) == 10 else "stop")


def test_a_seed_samples_the_same_text_alone_or_in_any_batch_and_leaves_the_global_generator(lm):
    model, tok = lm
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95, seed=5)
    alone = Job([256, 80], settings)
    generate_batch(model, tok, [alone])
    state = torch.get_rng_state()
    crowd = [Job([256, 81, 82, 83], GenerationSettings(max_new_tokens=12, temperature=1.0)), Job([256, 80], settings)]
    generate_batch(model, tok, crowd)
    assert crowd[1].text == alone.text and crowd[1].completion_tokens == alone.completion_tokens
    assert torch.equal(torch.get_rng_state(), state)


def test_stop_strings_cut_the_text_and_the_stream_never_shows_their_start(lm):
    model, tok = lm
    free = Job([256, 72], GenerationSettings(max_new_tokens=20))
    generate_batch(model, tok, [free])
    text = free.text
    assert len(text) > 6
    stop = text[3:6]
    pieces: list[str] = []
    job = Job([256, 72], GenerationSettings(max_new_tokens=20), stop=(stop,), on_text=pieces.append)
    generate_batch(model, tok, [job])
    assert job.text == text[: text.index(stop)] and job.finish_reason == "stop"
    assert "".join(pieces) == job.text


def test_held_back_is_the_longest_suffix_that_starts_a_stop_string():
    assert _held_back("hello wor", ("world",)) == 3
    assert _held_back("hello", ("xyz",)) == 0
    assert _held_back("ab", ("abc", "b!")) == 2


def test_a_cancelled_row_stops_while_the_others_finish(lm):
    model, tok = lm
    cancel = threading.Event()
    counted = []

    def on_text(piece: str) -> None:
        counted.append(piece)
        if len(counted) == 2:
            cancel.set()

    leaving = Job([256, 72], GenerationSettings(max_new_tokens=40), stop=("\u2603",), on_text=on_text,
                  cancelled=cancel)
    staying = Job([256, 73], GenerationSettings(max_new_tokens=15))
    generate_batch(model, tok, [leaving, staying])
    assert leaving.finish_reason == "cancelled" and leaving.completion_tokens < 40
    alone = Job([256, 73], GenerationSettings(max_new_tokens=15))
    generate_batch(model, tok, [alone])
    assert (staying.text, staying.finish_reason) == (alone.text, alone.finish_reason)  # untouched by the other


def test_a_prompt_must_leave_room_in_the_context(lm):
    model, tok = lm
    with pytest.raises(LmtuneError, match="64 tokens do not fit the model's context of 64"):
        generate_batch(model, tok, [Job([65] * 64)])
    with pytest.raises(LmtuneError, match="empty"):
        generate_batch(model, tok, [Job([])])


def test_rows_join_a_running_batch_and_leave_it_as_they_end_each_as_if_alone(lm):
    model, tok = lm
    prompts = {"first": [256, 72, 105], "second": [256, 65, 66, 67, 68, 69, 70, 71], "third": [256, 90]}
    lengths = {"first": 12, "second": 5, "third": 9}
    alone = {}
    for name, prompt in prompts.items():
        job = Job(prompt, GenerationSettings(max_new_tokens=lengths[name]))
        generate_batch(model, tok, [job])
        alone[name] = job.text
    jobs = {name: Job(prompt, GenerationSettings(max_new_tokens=lengths[name])) for name, prompt in prompts.items()}
    waiting = [[], [jobs["second"]], [], [jobs["third"]]]  # joining after the 1st and the 3rd step
    offered, ended = [], []

    def admit(free: int) -> list:
        offered.append(free)
        return waiting.pop(0) if waiting else []

    generate_batch(model, tok, [jobs["first"]], admit=admit, finished=lambda job: ended.append(job), max_rows=2)
    assert {name: job.text for name, job in jobs.items()} == alone  # the same text as decoded alone
    assert ended[0] is jobs["second"]  # the shortest ends first, while the others go on
    assert 1 <= min(offered) and max(offered) <= 2  # never more rows than max_rows

