"""Preference tuning's parts, checked against independent computations: the losses from known log-probabilities,
the three input forms, the bad-pair counts, and the reference scores (cached, recomputed, adapters off)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmtune.config.schema import PreferenceConfig
from lmtune.data import Table
from lmtune.errors import DataError
from lmtune.tasks.preference import PreferenceTuning
from lmtune.tasks.preference_losses import PairLogps, preference_loss
from lmtune.tasks.preference_rows import read_pairs
from tests.conftest import SHARED_DATA, shared

# two pairs: summed log-probabilities of the chosen and rejected replies, their token counts, and the reference's
POLICY_C, POLICY_R, TOKENS_C, TOKENS_R = [-10.0, -4.0], [-12.0, -3.0], [5, 2], [4, 3]
REF_C, REF_R = [-11.0, -4.5], [-11.5, -2.0]


def _logps() -> PairLogps:
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return PairLogps(t(POLICY_C), t(POLICY_R), t(TOKENS_C), t(TOKENS_R), t(REF_C), t(REF_R))


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _expected(loss: str, beta: float, i: int, smoothing: float = 0.0, margin: float = 0.5) -> float:
    """The papers' formulas, written out in plain floats for pair ``i``."""
    pc, pr, nc, nr, rc, rr = POLICY_C[i], POLICY_R[i], TOKENS_C[i], TOKENS_R[i], REF_C[i], REF_R[i]
    if loss == "dpo":
        z = beta * ((pc - rc) - (pr - rr))
        return -(1 - smoothing) * _log_sigmoid(z) - smoothing * _log_sigmoid(-z)
    if loss == "ipo":
        return ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2
    if loss == "simpo":
        z = beta * (pc / nc - pr / nr) - margin
        return -(1 - smoothing) * _log_sigmoid(z) - smoothing * _log_sigmoid(-z)
    mc, mr = pc / nc, pr / nr  # orpo
    odds = lambda m: m - math.log(1 - math.exp(m))  # noqa: E731
    return -mc - beta * _log_sigmoid(odds(mc) - odds(mr))


@pytest.mark.parametrize(("loss", "beta", "smoothing"),
                         [("dpo", 0.1, 0.0), ("dpo", 0.5, 0.2), ("ipo", 0.1, 0.0), ("simpo", 2.0, 0.0),
                          ("simpo", 2.0, 0.1), ("orpo", 0.1, 0.0)])
def test_each_loss_matches_its_formula(loss, beta, smoothing):
    out = preference_loss(_logps(), PreferenceConfig(loss=loss, beta=beta), smoothing)
    for i in range(2):
        assert float(out[i]) == pytest.approx(_expected(loss, beta, i, smoothing), rel=1e-9)


def test_the_margin_and_the_sft_term():
    assert _logps().margin.tolist() == pytest.approx([(-10 + 11) - (-12 + 11.5), (-4 + 4.5) - (-3 + 2)])
    out = preference_loss(_logps(), PreferenceConfig(loss="dpo", beta=0.1))
    with_sft = preference_loss(_logps(), PreferenceConfig(loss="dpo", beta=0.1, sft_weight=0.5))
    assert (with_sft - out).tolist() == pytest.approx([0.5 * 10 / 5, 0.5 * 4 / 2])


def test_dpo_at_the_reference_is_log_two():
    same = PairLogps(*(torch.tensor([-3.0]),) * 2, torch.tensor([2]), torch.tensor([2]), *(torch.tensor([-3.0]),) * 2)
    assert float(preference_loss(same, PreferenceConfig())) == pytest.approx(math.log(2))


# ---- input forms --------------------------------------------------------------------------------------------

HH = {"chosen": "\n\nHuman: hi there\n\nAssistant: hello, how can I help?\n\nHuman: a joke\n\nAssistant: Why did "
                "the cat sit on the computer?",
      "rejected": "\n\nHuman: hi there\n\nAssistant: hello, how can I help?\n\nHuman: a joke\n\nAssistant: No."}
HH_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '\\n\\nHuman: ' }}{% else %}"
               "{{ '\\n\\nAssistant: ' }}{% endif %}{{ m['content'] }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}")
"""The HH transcript as a chat template (a block tag's own newline is trimmed, so the newlines are strings)."""


def _table(*rows: dict) -> Table:
    return Table("pairs.jsonl", sorted({k for r in rows for k in r}), list(rows), list(range(1, len(rows) + 1)))


def test_the_text_and_hh_forms_read_as_the_same_pair():
    cut = HH["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
    text = {"prompt": HH["chosen"][:cut], "chosen": " Why did the cat sit on the computer?", "rejected": " No."}
    (from_hh,), _ = read_pairs(_table(HH), "error")
    (from_text,), _ = read_pairs(_table(text), "error")
    assert (from_hh.prompt, from_hh.chosen, from_hh.rejected) == (from_text.prompt, from_text.chosen,
                                                                  from_text.rejected)


def test_the_chat_form_renders_as_the_hh_form_under_an_hh_template(stories260k):
    from lmtune.models import load_tokenizer

    tokenizer = load_tokenizer(str(stories260k / "model"))
    turns = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello, how can I help?"},
             {"role": "user", "content": "a joke"}]
    chat = {"chosen": [*turns, {"role": "assistant", "content": "Why did the cat sit on the computer?"}],
            "rejected": [*turns, {"role": "assistant", "content": "No."}]}
    (as_chat,), _ = read_pairs(_table(chat), "error")
    (as_hh,), _ = read_pairs(_table(HH), "error")
    assert as_chat.prompt == tuple(turns) and (as_chat.chosen, as_chat.rejected) == (
        "Why did the cat sit on the computer?", "No.")
    task = PreferenceTuning(chat_template=HH_TEMPLATE)
    assert task.renderer.render(turns, tokenizer, True) == as_hh.prompt
    example = task.encode(_table(chat), tokenizer, None, 512)[0]
    # the loss is on the last reply only (the earlier assistant turn is prompt), tokenized as that reply's text
    for labels, reply in (("labels", as_hh.chosen), ("rejected_labels", as_hh.rejected)):
        assert [t for t in example[labels] if t != -100] == tokenizer(reply, add_special_tokens=False)["input_ids"]


def test_bad_pairs_are_counted_by_kind(tmp_path):
    rows = [HH, {"chosen": HH["chosen"], "rejected": HH["chosen"]},  # identical
            {"prompt": "p", "chosen": "  ", "rejected": "x"},  # empty
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},  # prompts differ
            {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
             "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "c"}]},
            {"prompt": "p", "chosen": "x", "rejected": "x "}]  # identical after whitespace
    pairs, bad = read_pairs(_table(*rows), "skip")
    assert [p.row for p in pairs] == [0]
    assert bad.counts == {"identical": 2, "empty": 1, "prompts_differ": 2}
    assert bad.first["identical"] == "pairs.jsonl:2"
    with pytest.raises(DataError, match=r"^pairs.jsonl:2: the two replies are identical \(data.on_bad_rows=error"):
        read_pairs(_table(*rows), "error")


def test_the_shared_hh_pairs_have_the_quirks_their_readme_names():
    path = shared(SHARED_DATA / "preference" / "hh_harmless_base_test.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    pairs, bad = read_pairs(Table(str(path), ["chosen", "rejected"], rows), "skip")
    assert bad.counts["prompts_differ"] == 5 and bad.counts["empty"] == 4
    assert len(pairs) + sum(bad.counts.values()) == 2312


@pytest.mark.parametrize(("row", "message"), [
    ({"chosen": "a"}, "expected 'chosen' and 'rejected' as texts or as lists of chat messages; got a str"),
    ({"chosen": "a", "rejected": "b"}, "must be whole dialogues"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "'prompt' is a int"),
    ({"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "'chosen' must end with the assistant's reply"),
])
def test_malformed_rows_are_errors_naming_the_row(row, message):
    with pytest.raises(DataError, match="^pairs.jsonl:1: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        read_pairs(_table(row), "skip")


# ---- the reference ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoded(stories260k):
    from lmtune.models import load_tokenizer

    tokenizer = load_tokenizer(str(stories260k / "model"))
    rows = [{"prompt": f"Once upon a time there was a {w}.", "chosen": " It was happy.", "rejected": " It was sad."}
            for w in ("cat", "dog", "girl", "boy", "bird")]
    task = PreferenceTuning()
    task.learn_from_rows(_table(*rows), None)
    return task, tokenizer, task.encode(_table(*rows), tokenizer, None, 64)


def _model(stories260k):
    from lmtune.tasks.language_model import load_causal_lm

    return load_causal_lm(str(stories260k / "model")).eval()


def _by_hand(model, example: dict, key: str, labels: str) -> float:
    """The summed log-probability of the labelled tokens, from a plain forward pass."""
    ids = torch.tensor([example[key]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(float(logp[t - 1, tok]) for t, tok in enumerate(example[labels]) if tok != -100)


def test_cached_reference_equals_a_recomputation(stories260k, encoded, tmp_path):
    from lmtune.evaluation.reference import REFERENCE_FILE, attach_reference

    task, tokenizer, examples = encoded
    model = _model(stories260k)
    first = [dict(e) for e in examples]
    assert attach_reference(model, {"train": first}, task, 8, tokenizer.pad_token_id, run_dir=tmp_path).startswith(
        "computed")
    for example in first:  # the scores are the replies' log-probabilities, by an independent computation
        assert example["reference"] == pytest.approx([_by_hand(model, example, "input_ids", "labels"),
                                                      _by_hand(model, example, "rejected_ids", "rejected_labels")],
                                                     abs=1e-4)
    again = [dict(e) for e in examples]
    assert "reused" in attach_reference(model, {"train": again}, task, 8, tokenizer.pad_token_id, run_dir=tmp_path)
    assert [e["reference"] for e in again] == [e["reference"] for e in first]
    saved = json.loads((tmp_path / REFERENCE_FILE).read_text())
    saved["scores"]["train"][0][0] += 1.0  # damaged: the checksum no longer matches
    (tmp_path / REFERENCE_FILE).write_text(json.dumps(saved))
    third = [dict(e) for e in examples]
    done = attach_reference(model, {"train": third}, task, 8, tokenizer.pad_token_id, run_dir=tmp_path)
    assert done.endswith(f"({REFERENCE_FILE} is damaged; recomputed)")
    assert [e["reference"] for e in third] == [e["reference"] for e in first]


def test_the_adapters_off_reference_is_the_base_model(stories260k, encoded):
    from peft import LoraConfig, get_peft_model

    from lmtune.evaluation.reference import score_reference

    task, tokenizer, examples = encoded
    base = score_reference(_model(stories260k), {"train": examples}, task, 8, tokenizer.pad_token_id)["train"]
    tuned = get_peft_model(_model(stories260k), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained adapter: it changes the model's scores
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    from lmtune.evaluation.evaluate import score_examples

    with_adapters = score_examples(tuned, examples, task, 8, tokenizer.pad_token_id)
    assert with_adapters[0][0] != pytest.approx(base[0][0], abs=1e-3)
    off = score_reference(tuned, {"train": examples}, task, 8, tokenizer.pad_token_id)["train"]
    assert off == pytest.approx(base, abs=1e-5)


# ---- warning signs ------------------------------------------------------------------------------------------

def _evals(*rows: tuple[float, float, float, float, float]) -> list[tuple[int, dict]]:
    """(step, metrics) per evaluation from (reward_accuracy, reward_margin, chosen_logp, rejected_logp, kl)."""
    names = ("reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp", "kl")
    return [(10 * (i + 1), dict(zip(names, row, strict=True))) for i, row in enumerate(rows)]


def _cfg(**preference):
    from lmtune.loader import load_config

    return load_config({"task": "preference", "model": "m", "data": {"train": "t.jsonl"}, "preference": preference,
                        "train": {"lr": 1e-3}})


def test_signs_of_over_optimization_are_read_from_the_curves():
    from lmtune.tasks.preference_signs import preference_signs

    healthy = _evals((0.55, 0.1, -2.0, -2.1, 0.001), (0.62, 0.4, -1.98, -2.3, 0.004), (0.70, 0.8, -1.97, -2.6, 0.006))
    assert preference_signs(healthy, {30: {"reward_accuracy": 0.8}}, _cfg()) == []

    pushed = _evals((0.55, 0.1, -2.0, -2.1, 0.001), (0.62, 0.9, -2.3, -3.2, 0.004), (0.70, 1.5, -2.6, -4.0, 0.006))
    (sign,) = preference_signs(pushed, {}, _cfg())
    assert sign.title.startswith("both replies are pushed down")
    assert sign.evidence[0] == "validation chosen log-probability per token fell from -2.000 to -2.600"
    assert sign.suggestions[0] == ("keep the chosen reply likely with an SFT term on it", ["preference.sft_weight=0.5"])

    stalled = _evals((0.55, 0.1, -2.0, -2.1, 0.001), (0.60, 0.3, -2.0, -2.2, 0.002), (0.61, 0.4, -2.0, -2.3, 0.003),
                     (0.60, 0.5, -2.0, -2.4, 0.004))
    (sign,) = preference_signs(stalled, {40: {"reward_accuracy": 0.98}}, _cfg(loss="ipo"))
    assert sign.title.startswith("over-optimization")
    assert ("stop where validation was best", ["train.max_steps=30"]) in sign.suggestions
    assert ("a stronger pull toward the reference", ["preference.beta=0.2"]) in sign.suggestions

    drift = _evals((0.55, 0.1, -2.0, -2.1, 0.002), (0.70, 0.3, -2.0, -2.2, 0.004), (0.62, 0.4, -2.0, -2.3, 0.05))
    (sign,) = preference_signs(drift, {30: {"reward_accuracy": 0.9}}, _cfg())
    assert sign.evidence[0].startswith("KL to the reference grew from 0.0040 (step 20")


def test_chunked_token_log_probs_match_log_softmax_in_value_and_gradient():
    from lmtune.tasks.losses import token_log_probs

    torch.manual_seed(0)
    logits = torch.randn(1100, 37, dtype=torch.float64, requires_grad=True)  # more rows than one chunk
    targets = torch.randint(0, 37, (1100,))
    targets[::3] = -100
    weights = torch.randn(1100, dtype=torch.float64)
    mine = token_log_probs(logits, targets)
    (mine.double() * weights).sum().backward()
    got = logits.grad.clone()
    logits.grad = None
    keep = targets != -100
    expected = torch.log_softmax(logits, -1).gather(1, targets.clamp(min=0)[:, None]).squeeze(1) * keep
    (expected * weights).sum().backward()
    assert torch.allclose(mine.double(), expected, atol=1e-5)
    assert torch.allclose(got, logits.grad, atol=1e-5)
