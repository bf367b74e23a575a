"""Explain one prediction: attention (all layers and heads, rollout), attributions, their checks,
and how the fine-tuned model differs from the base model it started from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lmtune.explanation.attention import attention_weights, rollout
from lmtune.explanation.attribution import IG_STEPS, METHODS, Example, attribute, encode, word_scores
from lmtune.explanation.quality import RANDOMIZATION_PASS, deletion_test, randomized_copy, rank_correlation
from lmtune.tasks import task_names_with


@dataclass
class Explanation:
    """Everything computed for one input; tensors for the Python API, ``to_dict`` for JSON."""

    text: str
    tokens: list[str]
    words: list[str]
    word_of: list[int | None]
    predicted: str | int
    target: str | int
    """The label explained (the predicted one unless another was asked for): a class as `predict` gives it (an
    integer label stays one), QA's answer start or end, a next token."""
    probability: float
    """The model's probability of ``target``."""
    attention: torch.Tensor
    """(layers, heads, seq, seq) attention probabilities."""
    rollout: torch.Tensor
    """(seq, seq) attention rollout."""
    attributions: dict[str, list[float]] = field(default_factory=dict)
    """Per method, one score per token (positive: pushes the target's probability up)."""
    deltas: dict[str, float] = field(default_factory=dict)
    """Integrated Gradients' convergence delta."""
    deletion: dict[str, dict[str, Any]] = field(default_factory=dict)
    randomization: dict[str, float] = field(default_factory=dict)
    """Per method, rank correlation with the attributions of a re-initialised model (low is good)."""
    base: dict[str, Any] | None = None
    """Before/after: the base model's probability, attention change per layer, attribution correlation."""

    def word_attributions(self, method: str) -> list[float]:
        return word_scores(_example_view(self), self.attributions[method])

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text, "tokens": self.tokens, "words": self.words, "word_of": self.word_of,
            "predicted": self.predicted, "target": self.target, "probability": round(self.probability, 6),
            "attention": _rounded(self.attention), "rollout": _rounded(self.rollout),
            "attributions": {m: {"tokens": _rounded(s), "words": _rounded(self.word_attributions(m)),
                                 "convergence_delta": self.deltas.get(m)} for m, s in self.attributions.items()},
            "deletion": self.deletion,
            # the verdict is taken on the correlation as shown, so the two can never disagree
            "randomization": {m: {"rank_correlation": round(r, 4), "passes": round(r, 4) < RANDOMIZATION_PASS}
                              for m, r in self.randomization.items()},
            "base_model": self.base,
        }


def _example_view(e: Explanation) -> Example:
    return Example(e.text, {}, e.tokens, e.word_of, e.words)  # enough for word_scores


class Explainer:
    """Explains inputs for a loaded run (``lmtune.load(RUN)``), in fp32 on the run's device."""

    def __init__(self, run: Any, methods: tuple[str, ...] = ("ig", "gradxinput", "occlusion"),
                 steps: int = IG_STEPS, checks: bool = True, compare_base: bool = False):
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            from lmtune.errors import LmtuneError

            raise LmtuneError(f"--method: {unknown[0]!r} is not one of {', '.join(METHODS)}")
        self.run = run
        self.model = run.model.float().eval()
        self.methods = methods
        self.steps = steps
        self.checks = checks
        if not run.task.capabilities.explains:
            from lmtune.errors import LmtuneError

            raise LmtuneError(f"explain: task {run.task.name!r} has no explanation; explain supports "
                              f"{task_names_with('explains')} runs")
        self._random_model = None
        self._base_model = None
        self.compare_base = compare_base and self._base_source() is not None

    def explain(self, text: str, pair: str | None = None, target: str | None = None) -> Explanation:
        """The explanation of the prediction for ``text`` (the first one, for tasks that explain several)."""
        return self.explain_all(text, pair, target)[0]

    def explain_all(self, text: str, pair: str | None = None, target: str | None = None) -> list[Explanation]:
        """One explanation per target of the input: the (chosen) class, or QA's answer start and end."""
        example = encode(self.run.tokenizer, text, self.run.config.train.max_length, pair)
        example.features = {k: v.to(self._device) for k, v in example.features.items()}
        with torch.no_grad():
            outputs = self.model(**example.features)
        attention = attention_weights(self.model, example.features).cpu()
        flow = rollout(attention)
        results = []
        for chosen in self.run.task.explanation_targets(outputs, target, example, self.run.tokenizer):
            result = Explanation(text, example.tokens, example.words, example.word_of, chosen.predicted, chosen.name,
                                 float(chosen.score(outputs)[0]), attention, flow)
            for method in self.methods:
                scores, delta = attribute(method, self.model, example, chosen.score, self.run.tokenizer, self.steps)
                result.attributions[method] = scores
                if delta is not None:
                    result.deltas[method] = delta
                if self.checks:
                    if chosen.deletable:
                        result.deletion[method] = deletion_test(self.model, example, chosen.score, scores)
                    random_scores, _ = attribute(method, self.random_model, example, chosen.score,
                                                 self.run.tokenizer, self.steps)
                    result.randomization[method] = _content_correlation(example, scores, random_scores)
            if self.compare_base:
                result.base = self._before_after(example, chosen, attention, result.attributions)
            results.append(result)
        return results

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def random_model(self) -> Any:
        if self._random_model is None:
            self._random_model = randomized_copy(self.model)
        return self._random_model

    @property
    def base_model(self) -> Any:
        """The model the run started from, with a freshly initialised (seeded) task head."""
        if self._base_model is None:
            from lmtune.models import from_hub_or_local

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.run.config.train.seed)
                model = from_hub_or_local(self.run.task.build_model, self._base_source())
            self._base_model = model.float().eval().to(self._device)
        return self._base_model

    def _base_source(self) -> str | None:
        """Where the run's starting model loads from (a scratch model: its config, so a seeded random
        initialisation); None when it cannot be loaded (an imported checkpoint)."""
        from lmtune import scratch
        from lmtune.errors import LmtuneError
        from lmtune.models import resolve_model

        if scratch.is_scratch(self.run.config.model):
            base = self.run.run_dir / scratch.BASE
            return str(base) if base.is_dir() else None
        try:
            return resolve_model(self.run.config.model)
        except LmtuneError:
            return None

    def _before_after(self, example: Example, target: Any, attention: torch.Tensor,
                      attributions: dict[str, list[float]]) -> dict[str, Any]:
        with torch.no_grad():
            probability = float(target.score(self.base_model(**example.features))[0])
        base_attention = attention_weights(self.base_model, example.features).cpu()
        change = (attention.mean(1) - base_attention.mean(1)).abs().sum(-1).mean(-1) / 2  # total variation
        correlations = {}
        for method, scores in attributions.items():
            base_scores, _ = attribute(method, self.base_model, example, target.score, self.run.tokenizer, self.steps)
            correlations[method] = round(_content_correlation(example, scores, base_scores), 4)
        return {"probability": round(probability, 6),
                "attention_change_per_layer": [round(float(c), 4) for c in change],
                "attribution_rank_correlation": correlations,
                "note": "the model the run started from (a scratch model: its seeded random initialisation)"
                if self.run.task.capabilities.generates else
                "the base model's task head is untrained (freshly initialised, seeded)"}


def _content_correlation(example: Example, a: list[float], b: list[float]) -> float:
    """Rank correlation of two attributions' magnitudes over the non-special tokens."""
    keep = [i for i, special in enumerate(example.special) if not special]
    return rank_correlation([abs(a[i]) for i in keep], [abs(b[i]) for i in keep])


def _rounded(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return round(value, 5) if isinstance(value, float) else value
