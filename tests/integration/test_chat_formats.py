"""SFT's data formats on real rows (HH-RLHF multi-turn dialogues, SQuAD, DialogSum), checked with
`lmtune data preview`: every assistant turn carries the loss, and nothing else does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmtune.data_preview import CLOSE, OPEN, preview
from tests.conftest import SHARED_DATA, shared

pytestmark = pytest.mark.integration


def _hh_dialogues(count: int) -> list[list[tuple[str, str]]]:
    """Real multi-turn chats: the chosen transcripts of HH-RLHF, as (speaker, text) turns ending with the assistant."""
    path = SHARED_DATA / "preference" / "hh_harmless_base_test.jsonl"
    shared(path)
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = re.split(r"\n\n(Human|Assistant): ", json.loads(line)["chosen"])
        turns = [(who, text.strip()) for who, text in zip(parts[1::2], parts[2::2], strict=True)]
        if len(turns) >= 4 and turns[-1][0] == "Assistant" and all(t for _, t in turns) and \
                sum(len(t) for _, t in turns) < 600:
            out.append(turns)
        if len(out) == count:
            return out
    raise AssertionError("too few short multi-turn dialogues")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _config(tmp_path: Path, model: Path, train: Path) -> tuple[Path, list[str]]:
    config = tmp_path / "sft.yaml"
    config.write_text("task: sft\n")
    return config, [f"model={model}", f"data.train={train}", f"data.validation={train}", "train.max_length=512"]


def _marked_spans(text: str) -> list[str]:
    return re.findall(re.escape(OPEN) + "(.*?)" + re.escape(CLOSE), text, flags=re.DOTALL)


@pytest.mark.parametrize("layout", ["sharegpt", "messages"])
def test_every_assistant_turn_of_a_real_chat_carries_loss(stories260k, tmp_path, layout):
    dialogues = _hh_dialogues(3)
    if layout == "sharegpt":
        rows = [{"conversations": [{"from": "human" if who == "Human" else "gpt", "value": text}
                                   for who, text in turns]} for turns in dialogues]
    else:
        rows = [{"messages": [{"role": "system", "content": "Be helpful and harmless."}] + [
            {"role": "user" if who == "Human" else "assistant", "content": text} for who, text in turns]}
            for turns in dialogues]
    config, overrides = _config(tmp_path, stories260k, _write(tmp_path / "chat.jsonl", rows))
    shown = preview(config, overrides, rows=3)
    assert len(shown) == 3
    for row, turns in zip(shown, dialogues, strict=True):
        [sequence] = row["sequences"]
        spans = _marked_spans(sequence["text"])
        answers = [text for who, text in turns if who == "Assistant"]
        assert [s.removesuffix("</s>").strip() for s in spans] == answers  # each reply, and nothing else
        assert all(s.endswith("</s>") for s in spans)  # each turn ends with EOS, which is learned too
        outside = re.sub(re.escape(OPEN) + ".*?" + re.escape(CLOSE), "", sequence["text"], flags=re.DOTALL)
        assert all(text in outside for who, text in turns if who == "Human")
        assert 0 < sequence["loss_tokens"] < sequence["tokens"]


def test_alpaca_and_prompt_completion_rows_from_squad_and_dialogsum(stories260k, tmp_path, cli):
    shared(SHARED_DATA / "squad" / "dev-v1.1.jsonl")
    squad = [json.loads(line) for line in
             (SHARED_DATA / "squad" / "dev-v1.1.jsonl").read_text(encoding="utf-8").splitlines()[:2]]
    alpaca = [{"instruction": r["question"], "input": r["context"][:300],
               "output": r["answers"]["text"][0] if isinstance(r["answers"], dict) else r["answers"][0]["text"]}
              for r in squad]
    dialogs = [json.loads(line) for line in (SHARED_DATA / "summarization" / "dialogsum" / "train.jsonl")
               .read_text(encoding="utf-8").splitlines()[:2]]
    completion = [{"prompt": d["document"][:400] + "\nSummary:", "completion": d["summary"]} for d in dialogs]
    for rows, answer_key in ((alpaca, "output"), (completion, "completion")):
        config, overrides = _config(tmp_path, stories260k, _write(tmp_path / f"{answer_key}.jsonl", rows))
        for shown, row in zip(preview(config, overrides, rows=2), rows, strict=True):
            spans = _marked_spans(shown["sequences"][0]["text"])
            assert [s.removesuffix("</s>").strip() for s in spans] == [row[answer_key].strip()]
    result = cli("data", "preview", config, *overrides, "--rows", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"--- {tmp_path / 'completion.jsonl'}:1: ") and " carry loss\n" in result.stdout
    assert result.stdout.rstrip().endswith("(the text between ⟦ and ⟧ carries the loss; special tokens are shown)")


def test_a_malformed_chat_row_is_one_line_naming_its_line(stories260k, tmp_path, cli):
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            {"conversations": [{"from": "robot", "value": "hi"}]}]
    config, overrides = _config(tmp_path, stories260k, _write(tmp_path / "bad.jsonl", rows))
    result = cli("data", "preview", config, *overrides)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'bad.jsonl'}:2: 'conversations' must be a list of {{'from': " in result.stderr
    text = tmp_path / "stories.txt"
    text.write_text("Once upon a time there was a cat.\nThe cat sat on a mat.\n")
    scratch = cli("data", "preview", config, "task=causal_lm", "model=scratch:tiny", f"data.train={text}")
    assert "trains its tokenizer at the start of the run" in scratch.stderr
