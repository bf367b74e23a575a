"""Preference tuning of a causal LM (DPO, IPO, SimPO, ORPO): learn to prefer one reply to a prompt over another.

Each example is a pair: the prompt followed by the chosen reply, and the prompt followed by the rejected one,
with loss-carrying labels on the reply tokens only (`lmtune.tasks.preference_rows` reads the three input forms).
A batch holds the chosen rows first, then the rejected rows; the loss compares each reply's summed
log-probability under the model with the same under the *reference* (the model training started from), which
the pipeline computes once before training (`lmtune.evaluation.reference`): no second model is in memory.

Reward accuracy (the share of pairs whose chosen reply gets the higher implicit reward) decides, as the
preference literature reports it; the margin, both replies' log-probabilities and a KL estimate to the
reference show how it got there (the diagnosis reads them).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmtune.config import DataConfig
from lmtune.config.schema import PreferenceConfig
from lmtune.data import Table
from lmtune.data.collate import IGNORE_INDEX, collate, model_inputs
from lmtune.errors import DataError, LmtuneError
from lmtune.tasks.base import LOSS, TASKS, Capabilities, Metric, Observation, Scoring, Task
from lmtune.tasks.language_model import load_causal_lm, text_prompt_ids
from lmtune.tasks.losses import token_log_probs
from lmtune.tasks.preference_losses import PairLogps, preference_loss
from lmtune.tasks.preference_rows import Pair, read_pairs
from lmtune.tasks.preference_signs import preference_signs
from lmtune.tasks.sft import InstructionTuning

log = logging.getLogger("lmtune")


def _logp(name: str, greater: bool) -> Metric:
    return Metric(name, greater, "log_prob", 0.01)


@TASKS.register("preference")
class PreferenceTuning(Task):
    name = "preference"
    metrics = (
        LOSS,
        Metric("reward_accuracy", True, "fraction", 0.01),
        _logp("reward_margin", True),
        _logp("chosen_logp", True), _logp("rejected_logp", False),
        _logp("chosen_logp_sum", True), _logp("rejected_logp_sum", False),
        Metric("kl", False, "nats", 0.001),
    )
    """reward_margin: the chosen reply's log-ratio to the reference minus the rejected one's, in nats (DPO's implicit
    reward without beta: one definition for every loss and beta, so runs compare); reward_accuracy: the share of
    pairs whose margin is > 0. chosen/rejected_logp: per reply token; _sum: per reply. kl: per token, the model's
    drift from the reference on the pairs' replies (Schulman's k3 estimator on each reply's mean log-ratio; 0 at
    the start)."""
    secondary_metric = "reward_margin"
    chart_groups = (("chosen_logp", "rejected_logp"), ("reward_margin",), ("kl",))
    primary_metric = "reward_accuracy"
    capabilities = Capabilities(labelled=False, generates=True, low_precision_logits=True, pairs=True,
                                reference=True, replies=True)
    default_columns = {"text": "prompt"}
    stabilizers = ("a smaller preference.beta", "train.precision=fp32")
    input_fields = ("prompt",)

    def __init__(self, settings: PreferenceConfig | None = None, chat_template: str | None = None,
                 chat: bool | None = None):
        self.settings = settings or PreferenceConfig()
        self.renderer = InstructionTuning(chat_template)
        """Renders chat pairs with the chat template, exactly as sft does (and saves the template)."""
        self.chat = chat
        """Whether the pairs are chat conversations (rendered with the template) or text; set from the rows."""
        self.on_bad_rows = "skip"
        self.bad_pairs: dict[str, dict[str, int]] = {}

    # ---- settings and saved state ---------------------------------------------------------------

    def configure(self, cfg: Any) -> None:
        self.settings = cfg.preference
        self.renderer.chat_template = cfg.lm.chat_template
        self.on_bad_rows = cfg.data.on_bad_rows

    @classmethod
    def from_state(cls, state: dict[str, Any], cfg: Any) -> PreferenceTuning:
        task = cls(PreferenceConfig(**state.get("preference", {})), state.get("chat_template"), state.get("chat"))
        task.on_bad_rows = cfg.data.on_bad_rows if cfg is not None else "skip"
        return task

    def state(self) -> dict[str, Any]:
        return {"chat_template": self.renderer.chat_template, "chat": self.chat,
                "preference": asdict(self.settings), "bad_pairs": self.bad_pairs}

    def build_model(self, source: str | Path, **kwargs: Any) -> torch.nn.Module:
        return load_causal_lm(source, **kwargs)

    # ---- rows → pairs → examples ----------------------------------------------------------------

    def pairs(self, table: Table) -> list[Pair]:
        """The table's usable pairs; bad ones are counted by kind (and logged), or an error (on_bad_rows)."""
        pairs, bad = read_pairs(table, self.on_bad_rows)
        if bad.counts:
            counts = self.bad_pairs.setdefault(table.source, {})  # a held-out split of the same file adds to it
            for kind, n in bad.counts.items():
                counts[kind] = counts.get(kind, 0) + n
            log.warning("%s: %d of %d pairs left out: %s", table.source, sum(bad.counts.values()), len(table),
                        bad.summary())
        if not pairs:
            raise DataError(f"{table.source}: no usable preference pair (expected prompt/chosen/rejected texts, "
                            "chat message lists, or HH dialogues)")
        kinds = {pair.chat for pair in pairs}
        if len(kinds) > 1 or (self.chat is not None and kinds != {self.chat}):
            raise DataError(f"{table.source}: mixes chat pairs and text pairs; a preference run takes one form "
                            f"(this run's is {'chat' if self.chat else 'text'})")
        return pairs

    def learn_from_rows(self, train: Table, data: DataConfig) -> None:
        """Check every row and learn the form (chat or text); `encode` counts and reports the bad pairs."""
        pairs, _ = read_pairs(train, self.on_bad_rows)
        if not pairs:
            raise DataError(f"{train.source}: no usable preference pair")
        self.chat = pairs[0].chat

    def encode(self, table: Table, tokenizer: Any, data: DataConfig, max_length: int) -> list[dict]:
        if not any("chosen" in row for row in table.rows[:1]):  # prediction inputs: prompts only
            return [{"input_ids": self.prompt_ids(p, tokenizer), "row": i}
                    for i, p in enumerate(self.prompts(table, data))]
        examples, cut = [], 0
        for pair in self.pairs(table):
            example, truncated = self._encode_pair(pair, tokenizer, max_length)
            cut += truncated
            if example is not None:
                examples.append(example)
        if cut:
            log.warning("%s: %d of %d pairs were longer than train.max_length=%d: their prompts were cut from the "
                        "left (and replies from the right)", table.source, cut, len(examples), max_length)
        if not examples:
            raise DataError(f"{table.source}: no pair keeps a reply token within train.max_length={max_length}")
        return examples

    def _encode_pair(self, pair: Pair, tokenizer: Any, max_length: int) -> tuple[dict | None, bool]:
        prompt = self.prompt_ids(list(pair.prompt) if pair.chat else pair.prompt, tokenizer)
        replies = [self._reply_ids(pair, reply, tokenizer) for reply in (pair.chosen, pair.rejected)]
        longest = max(map(len, replies))
        truncated = len(prompt) + longest > max_length
        if truncated:
            keep = max(max_length - longest, max_length // 2)
            prompt = prompt[len(prompt) - keep:] if len(prompt) > keep else prompt
            replies = [reply[: max_length - len(prompt)] for reply in replies]
        if len(prompt) == 0 or min(map(len, replies)) == 0:  # a reply token needs a token before it
            return None, truncated
        mask = [IGNORE_INDEX] * len(prompt)
        return {"input_ids": prompt + replies[0], "labels": mask + replies[0],
                "rejected_ids": prompt + replies[1], "rejected_labels": mask + replies[1],
                "row": pair.row}, truncated

    def _reply_ids(self, pair: Pair, reply: str, tokenizer: Any) -> list[int]:
        if not pair.chat:
            return tokenizer(reply, add_special_tokens=False)["input_ids"]
        messages = list(pair.prompt)
        before = self.renderer.render(messages, tokenizer, True)
        after = self.renderer.render([*messages, {"role": "assistant", "content": reply}], tokenizer, False)
        if not after.startswith(before):
            raise LmtuneError("lm.chat_template: the rendered reply must extend the rendered prompt; this template "
                              "rewrites earlier turns")
        return tokenizer(after[len(before):], add_special_tokens=False)["input_ids"]

    def example_length(self, example: dict) -> int:
        return max(len(example["input_ids"]), len(example.get("rejected_ids", ())))

    def collate(self, examples: list[dict], pad_id: int, bucket_limit: int | None = None) -> dict[str, torch.Tensor]:
        """The chosen sequences, then the rejected ones (2 × pairs rows), and the reference scores (pairs, 2)."""
        if "rejected_ids" not in examples[0]:  # prompts (prediction)
            return collate(examples, pad_id, bucket_limit)
        rows = [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in examples]
        rows += [{"input_ids": ex["rejected_ids"], "labels": ex["rejected_labels"]} for ex in examples]
        batch = collate(rows, pad_id, bucket_limit)
        if "reference" in examples[0]:
            batch["reference"] = torch.tensor([ex["reference"] for ex in examples], dtype=torch.float64)
        return batch

    def attach_reference(self, examples: list[dict], records: list[tuple[float, ...]]) -> None:
        for example, (chosen, _, rejected, _) in zip(examples, records, strict=True):
            example["reference"] = [chosen, rejected]

    # ---- loss and metrics -----------------------------------------------------------------------

    def sequence_logps(self, outputs: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed log-probability of each row's reply, its token count), each (rows,)."""
        logits, labels = outputs.logits, F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
        logp = token_log_probs(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))  # chunked, no fp32 copy
        return logp.view(labels.shape).sum(-1), (labels != IGNORE_INDEX).sum(-1)

    def _pair_logps(self, total: torch.Tensor, count: torch.Tensor, reference: torch.Tensor | None) -> PairLogps:
        half = total.shape[0] // 2
        if reference is None:
            raise LmtuneError("preference: the batch has no reference scores; they are computed before training "
                              "(lmtune.evaluation.reference)")
        reference = reference.to(total.dtype)
        return PairLogps(total[:half], total[half:], count[:half], count[half:], reference[:, 0], reference[:, 1])

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean preference loss over the batch's pairs; label smoothing is conservative DPO's (dpo and simpo)."""
        total, count = self.sequence_logps(outputs, batch)
        pairs = self._pair_logps(total, count, batch.get("reference"))
        return preference_loss(pairs, self.settings, label_smoothing).mean()

    def score_batch(self, model: Any, batch: dict[str, torch.Tensor], examples: list[dict], indices: list[int],
                    scoring: Scoring) -> list[tuple[float, ...]]:
        """(chosen summed log-probability, its tokens, rejected summed log-probability, its tokens) per pair."""
        outputs = model(**model_inputs(batch))
        total, count = (t.double().cpu() for t in self.sequence_logps(outputs, batch))
        half = total.shape[0] // 2
        return list(zip(total[:half].tolist(), count[:half].tolist(), total[half:].tolist(), count[half:].tolist(),
                        strict=True))

    def aggregate(self, records: list[tuple[float, ...]], examples: list[dict],
                  example_losses: bool = False) -> dict[str, Any]:
        values = torch.tensor(records, dtype=torch.float64)
        reference = torch.tensor([ex["reference"] for ex in examples], dtype=torch.float64)
        pairs = PairLogps(values[:, 0], values[:, 2], values[:, 1], values[:, 3], reference[:, 0], reference[:, 1])
        losses, margin = preference_loss(pairs, self.settings), pairs.margin
        drift = torch.cat([(pairs.chosen - pairs.ref_chosen) / pairs.chosen_tokens.clamp(min=1),
                           (pairs.rejected - pairs.ref_rejected) / pairs.rejected_tokens.clamp(min=1)])
        result: dict[str, Any] = {
            "loss": losses.mean(), "reward_accuracy": (margin > 0).double().mean(), "reward_margin": margin.mean(),
            "chosen_logp": pairs.chosen_mean.mean(), "rejected_logp": pairs.rejected_mean.mean(),
            "chosen_logp_sum": pairs.chosen.mean(), "rejected_logp_sum": pairs.rejected.mean(),
            "kl": (torch.exp(-drift) - 1 + drift).mean(),
        }
        result = {k: round(float(v), 6) for k, v in result.items()}
        result["pairs"] = len(records)
        if example_losses:
            result["example_losses"] = [round(float(v), 5) for v in losses]
        return result

    def predictions(self, records: list[tuple[float, ...]], examples: list[dict], rows: int) -> list[dict[str, Any]]:
        """Per pair: both replies' log-probabilities per token and which one the model prefers."""
        out: list[dict[str, Any]] = [{} for _ in range(rows)]
        for (chosen, n_chosen, rejected, n_rejected), example in zip(records, examples, strict=True):
            c, r = chosen / max(n_chosen, 1), rejected / max(n_rejected, 1)
            out[example["row"]] = {"chosen_logp": round(c, 5), "rejected_logp": round(r, 5),
                                   "prefers": "chosen" if c > r else "rejected"}
        return out

    def observations(self, validation: list[tuple[int, dict]], sample: dict[int, dict], cfg: Any) -> list[Observation]:
        """Over-optimization: both replies pushed down, training pairs learned while validation stalls, drift from
        the reference without gain (`lmtune.tasks.preference_signs`)."""
        return preference_signs(validation, sample, cfg)

    # ---- generation -----------------------------------------------------------------------------

    def prompts(self, table: Table, data: DataConfig) -> list[Any]:
        """The prompts of prediction rows: a ``prompt`` column (text or chat messages) or each pair's prompt."""
        out = []
        for i, row in enumerate(table.rows):
            if "chosen" in row:
                out.append(self._row_prompt(table, i))
                continue
            prompt = row.get(data.text, row.get("prompt", row.get("text")))
            if not isinstance(prompt, (str, list)):
                raise DataError(f"{table.where(i)}: expected a {data.text!r} text (or chat messages); got {prompt!r}")
            out.append(prompt)
        return out

    def _row_prompt(self, table: Table, index: int) -> Any:
        pairs, _ = read_pairs(Table(table.source, table.columns, [table.rows[index]]), "skip")
        if not pairs:
            raise DataError(f"{table.where(index)}: this pair has no usable prompt")
        return list(pairs[0].prompt) if pairs[0].chat else pairs[0].prompt

    def prompt_ids(self, prompt: str | list[dict], tokenizer: Any) -> list[int]:
        """A chat prompt through the chat template (text: one user turn); a text prompt as written, after BOS."""
        if self.chat or isinstance(prompt, list):
            return self.renderer.prompt_ids(prompt, tokenizer)
        return text_prompt_ids(prompt, tokenizer)  # as causal_lm runs read a prompt: generation sees the same
