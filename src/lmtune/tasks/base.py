"""The task contract: WHAT is learned (data encoding, head, loss, metrics, predictions).

A task is the only place that knows its inputs, model head, loss, metrics and outputs. It offers them
through `Task` below and nothing else: consumers (train, eval, predict, compare, diagnose, report,
explain, serve) call these members and read `Capabilities` for what varies between tasks; none probes a
task with ``hasattr``. A new task is one module with one `Task` subclass registered in `TASKS`
(`tests/unit/test_task_contract.py` checks every registered one).

Evaluation and prediction go through one loop (`lmtune.evaluation.evaluate`): it batches, shards and
gathers; the task scores a batch (`score_batch`, one record per example) and turns all records into
metrics (`aggregate`) or predictions (`predictions`).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from lmtune.config import DataConfig, EarlyStoppingConfig
from lmtune.data import Table, collate, read_table
from lmtune.data.collate import IGNORE_INDEX
from lmtune.registry import Registry

Purpose = Literal["evaluate", "predict"]


@dataclass(frozen=True)
class Metric:
    """A metric a task reports, and how to compare two values of it."""

    name: str
    greater_is_better: bool
    scale: Literal["fraction", "percent", "nats", "perplexity", "log_prob"]
    """fraction: in [0, 1]; percent: in [0, 100]; nats: a loss (≥ 0, unbounded); perplexity: e^loss (≥ 1);
    log_prob: a log-probability or a difference of them, in nats (any sign)."""
    min_delta: float
    """The smallest difference that means something, in the metric's own units (below it: noise)."""
    majority_baseline: bool = False
    """A rate of correct class predictions: always predicting the most frequent class is its floor (diagnosis
    compares the two to tell a model that learned nothing)."""

    @property
    def unit(self) -> float:
        """How many of the metric's units make one 'whole' (100 for percent, else 1): thresholds written for a
        [0, 1] metric are multiplied by it."""
        return 100.0 if self.scale == "percent" else 1.0

    @property
    def axis(self) -> tuple[str, tuple[float, float] | None]:
        """(axis label, the range the values cannot leave) for charts."""
        return {"fraction": (f"{self.name} (0-1)", (0.0, 1.0)), "percent": (f"{self.name} (%)", (0.0, 100.0)),
                "nats": (f"{self.name} (nats)", (0.0, math.inf)),
                "perplexity": (self.name, (1.0, math.inf)), "log_prob": (f"{self.name} (nats)", None)}[self.scale]

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is better than ``b`` (strictly)."""
        return a > b if self.greater_is_better else a < b


LOSS = Metric("loss", greater_is_better=False, scale="nats", min_delta=0.01)


@dataclass(frozen=True)
class Capabilities:
    """What varies between tasks, declared rather than discovered."""

    labelled: bool = True
    """Evaluation data needs a target column (False: language models, whose targets are the text)."""
    class_labels: bool = False
    """A fixed label set: confusion matrix and label checks (imbalance, contradictions, label noise)."""
    generates: bool = False
    """The model writes text from a prompt (`prompt_ids`, `prompts`; `lmtune generate`)."""
    packed: bool = False
    """Training packs documents into blocks of max_length tokens (`training_examples`)."""
    remasked: bool = False
    """Training inputs are made anew each epoch (`training_batches`: masked LM)."""
    augmentable: bool = False
    """Word-level edits of the training text keep the target (augmentation)."""
    explains: bool = False
    """`lmtune explain` and the report's explanations apply (`explanation_targets`)."""
    rdrop: bool = False
    """R-Drop's KL between two dropout passes applies to its outputs (a distribution over classes)."""
    from_scratch: bool = False
    """Can train a new model from nothing (``model: scratch:SIZE``: a new decoder and tokenizer)."""
    low_precision_logits: bool = False
    """The loss accepts bf16 logits (it upcasts chunk by chunk), so the loop may skip accelerate's fp32 copy."""
    pairs: bool = False
    """Each example is two sequences (a preference pair): `collate` makes two rows of it, and no frozen-layer
    cache applies (it keeps one sequence per example)."""
    replies: bool = False
    """An example's labelled tail is a reply to its unlabelled prompt (`reply_of`): replies can be generated and
    scored against it during training (``replies.samples``)."""
    reference: bool = False
    """The loss and metrics compare the model with where it started: before training, the pipeline scores the
    train and validation examples with the starting model (its adapters switched off, or the weights as loaded)
    and hands the records to `attach_reference` (`lmtune.evaluation.reference`)."""


@dataclass(frozen=True)
class Observation:
    """A warning sign in a run's curves that only its task can read (`Task.observations`); the diagnosis shows it
    as an over-optimization finding, with the evidence and the settings to try."""

    title: str
    evidence: list[str]
    suggestions: list[tuple[str, list[str]]]
    """(the next step in words, the ``key=value`` overrides that do it)."""


@dataclass(frozen=True)
class Scoring:
    """What `Task.score_batch` knows about the evaluation it is part of."""

    purpose: Purpose
    started: float
    """`time.monotonic()` when the evaluation began (for time-bounded generation)."""


class Task(abc.ABC):
    """Base of every task. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[Metric, ...]]
    """Every validation metric, loss first. Early stopping, compare, diagnosis and report read these."""
    primary_metric: ClassVar[str]
    """The metric that picks the best checkpoint when early_stopping.metric is not set."""
    chart_groups: ClassVar[tuple[tuple[str, ...], ...]] = ()
    """Further validation metrics the report charts over the run, each group on one chart."""
    secondary_metric: ClassVar[str | None] = None
    """Breaks ties of the deciding metric when `lmtune compare` ranks its candidates (always higher is better)."""
    capabilities: ClassVar[Capabilities] = Capabilities()
    default_columns: ClassVar[dict[str, str]] = {}
    """Column names used when the config names none (e.g. QA: question / context / answers)."""
    stabilizers: ClassVar[tuple[str, ...]] = ()
    """Settings to suggest, besides a lower learning rate, when the training loss stops being finite."""
    input_fields: ClassVar[tuple[str, ...]] = ("text",)
    """The fields of one input in an HTTP request (`lmtune serve`), the main text first; a bare string is the
    main text. `input_row` turns them into a row of the run's columns."""

    # ---- construction and saved state -------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: dict[str, Any], cfg: Any) -> Task:
        """The task of a saved run, from what `state` returned and the run's config (for settings that runs
        written by older versions did not save)."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild this task for eval/predict (labels, options, seeds); saved in task.json."""

    def configure(self, cfg: Any) -> None:  # noqa: B027 - optional: most tasks have no settings
        """Take the task's settings from a run config (before `learn_from_rows`)."""

    # ---- data -------------------------------------------------------------------------------------

    def read(self, source: str, split: str) -> Table:
        """Read a data file (language models read plain text as documents)."""
        return read_table(source, split)

    @abc.abstractmethod
    def learn_from_rows(self, train: Table, data: DataConfig) -> None:
        """Learn what the task needs from the training data (e.g. the label set); validate every row."""

    @abc.abstractmethod
    def encode(self, table: Table, tokenizer: Any, data: DataConfig, max_length: int) -> list[dict]:
        """Tokenized examples, with targets when the table has them."""

    def input_row(self, fields: dict[str, str], data: DataConfig) -> dict[str, str]:
        """A prediction row (the run's column names) from one request input's ``fields`` (`input_fields`).

        The fields map in order onto the text and pair columns: a field whose column the run has is required,
        one whose column it lacks is refused (a pair given to a run trained on single texts).
        """
        from lmtune.errors import DataError

        accepted = self.accepted_fields(data)
        row = {}
        for name, column in zip(self.input_fields, (data.text, data.text_pair), strict=False):
            if name not in accepted and name in fields:
                raise DataError(f"{name}: this {self.name} run takes no {name} (it was trained without one)")
            if name in accepted and name not in fields:
                raise DataError(f"{name}: missing; this {self.name} run needs {' and '.join(accepted)}")
            if name in accepted:
                row[column] = fields[name]
        return row

    def accepted_fields(self, data: DataConfig) -> list[str]:
        """The `input_fields` a run with these data columns takes (all of them required by default)."""
        return [name for name, column in zip(self.input_fields, (data.text, data.text_pair), strict=False)
                if column is not None]

    def training_examples(self, examples: list[dict], max_length: int) -> list[dict]:
        """What training iterates over (packed tasks: blocks of documents); evaluation uses ``examples``."""
        return examples

    def packs(self) -> bool:
        """Whether training rows hold several examples (no per-example cache applies to them)."""
        return self.capabilities.packed

    def collate(self, examples: list[dict], pad_id: int, bucket_limit: int | None = None) -> dict[str, torch.Tensor]:
        """A batch of encoded examples as padded tensors (`lmtune.data.collate`; pairs: two rows each)."""
        return collate(examples, pad_id, bucket_limit)

    def example_length(self, example: dict) -> int:
        """The tokens an example is padded to (what batches are sorted and sized by)."""
        return len(example["input_ids"])

    def reply_of(self, example: dict) -> tuple[list[int], list[int]] | None:
        """(prompt ids, reply ids) of an encoded example (`Capabilities.replies`): the reply is its last run of
        tokens that carry loss, the prompt everything before it; None when no token carries loss."""
        labels = example["labels"]
        end = max((i for i, t in enumerate(labels) if t != IGNORE_INDEX), default=None)
        if end is None:
            return None
        start = end
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        return list(example["input_ids"][:start]), list(labels[start:end + 1])

    def attach_reference(self, examples: list[dict], records: list[Any]) -> None:
        """Keep with each example what the starting model scored for it (capabilities.reference)."""
        raise NotImplementedError(f"task {self.name!r} compares with no reference model")

    def training_batches(self, examples: list[dict], tokenizer: Any) -> Any:
        """(epoch, indices) → that batch's training examples, for tasks whose inputs change per epoch; None."""
        return None

    # ---- model and loss ---------------------------------------------------------------------------

    @abc.abstractmethod
    def build_model(self, source: str | Path, **kwargs: Any) -> torch.nn.Module:
        """The model with this task's head, loaded from a path or Hub id (kwargs go to from_pretrained)."""

    @abc.abstractmethod
    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean loss of a training batch (``label_smoothing`` is used in training only)."""

    # ---- evaluation and prediction (called by the one loop) ---------------------------------------

    @abc.abstractmethod
    def score_batch(self, model: Any, batch: dict[str, torch.Tensor], examples: list[dict],
                    indices: list[int], scoring: Scoring) -> list[Any]:
        """One record per example of a collated batch (on the model's device, under autocast, eval mode).

        Args:
            model: the model (unwrapped from DDP; may run on cached frozen-layer states).
            batch: the collated batch, targets included.
            examples: the batch's examples; ``indices`` their positions in the evaluated list.
            scoring: evaluation or prediction, and when it started.
        """

    @abc.abstractmethod
    def aggregate(self, records: list[Any], examples: list[dict], example_losses: bool = False) -> dict[str, Any]:
        """Metrics (every name in `metrics`, and any tables) from all examples' records, in example order.

        ``example_losses``: also return ``example_losses``, each example's loss (label-noise evidence).
        """

    @abc.abstractmethod
    def predictions(self, records: list[Any], examples: list[dict], rows: int) -> list[dict[str, Any]]:
        """One JSON-ready prediction per input row (``rows`` of them) from all examples' records."""

    def label_names(self) -> list[str]:
        """The class labels as text, in head order (class-label tasks); empty for other tasks."""
        return []

    def explanation_targets(self, outputs: Any, label: str | None, example: Any, tokenizer: Any) -> list[Any]:
        """What to explain for one input (capabilities.explains): scalar outputs from `lmtune.tasks.explained`.

        Args:
            outputs: the model's output for the input (batch of one).
            label: the user's ``--target`` (a class label, a token), or None for the prediction.
            example: the encoded input (``tokens``, ``sequence``, from `lmtune.explanation`).
            tokenizer: the run's tokenizer (to name tokens).

        Raises:
            LmtuneError: the task explains nothing, or ``label`` is not one it can explain.
        """
        from lmtune.errors import LmtuneError

        raise LmtuneError(f"explain: task {self.name!r} has no explanation; explain supports "
                          f"{task_names_with('explains')} runs")

    def observations(self, validation: list[tuple[int, dict]], sample: dict[int, dict], cfg: Any) -> list[Observation]:
        """Warning signs in the curves: ``validation`` is [(step, metrics)] of each evaluation, ``sample`` the
        training sample's metrics by step, ``cfg`` the run's config. None by default."""
        return []

    def gold(self, example: dict) -> Any:
        """An encoded example's target in the form of a prediction's ``label`` (class-label tasks), else None."""
        return None

    # ---- text generation (capabilities.generates) -------------------------------------------------

    def prompts(self, table: Table, data: DataConfig) -> list[Any]:
        """The prompts of a prediction table, one per row."""
        raise NotImplementedError(f"task {self.name!r} does not generate text")

    def prompt_ids(self, prompt: Any, tokenizer: Any) -> list[int]:
        """The token ids of one prompt, as training tokenized the same context."""
        raise NotImplementedError(f"task {self.name!r} does not generate text")

    # ---- derived from the declarations ------------------------------------------------------------

    metric_names: ClassVar[tuple[str, ...]]
    greater_is_better: ClassVar[bool]
    """Of the primary metric."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "metrics" in cls.__dict__ or "primary_metric" in cls.__dict__:
            cls.metric_names = tuple(m.name for m in cls.metrics)
            if getattr(cls, "primary_metric", None) in cls.metric_names:
                cls.greater_is_better = cls.metric(cls.primary_metric).greater_is_better

    @classmethod
    def metric(cls, name: str) -> Metric:
        """The declaration of metric ``name`` (a KeyError names the task's metrics)."""
        for metric in cls.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"task {cls.name!r} has no metric {name!r}; it has {', '.join(cls.metric_names)}")


TASKS: Registry[type[Task]] = Registry("task")


def task_names_with(capability: str) -> str:
    """The registered tasks that declare ``capability``, for messages ("classification, qa or causal_lm")."""
    names = [name for name in TASKS.names() if getattr(TASKS.get(name).capabilities, capability)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class DecidingMetric:
    """The metric that counts for a run, and which way is better."""

    metric: Metric
    maximize: bool

    @property
    def name(self) -> str:
        return self.metric.name

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a > b if self.maximize else a < b


def deciding_metric(task: Task | type[Task], early_stopping: EarlyStoppingConfig) -> DecidingMetric:
    """The one rule for the metric that counts: ``early_stopping.metric`` when set, else the task's primary metric;
    better is ``early_stopping.mode`` when not auto, else the direction the task declares for that metric.

    It picks the checkpoint a run keeps (restore_best) and when training stops early, ranks and prunes the trials
    of `lmtune compare`, and is what the diagnosis, the data curve, the report and `lmtune runs` judge a run by.

    Raises:
        LmtuneError: ``early_stopping.metric`` is not one of the task's validation metrics.
    """
    name = early_stopping.metric or task.primary_metric
    if name not in task.metric_names:
        from lmtune.errors import LmtuneError

        raise LmtuneError(f"early_stopping.metric: {name!r} is not a validation metric of task {task.name!r}; "
                          f"allowed: {', '.join(task.metric_names)}")
    metric = task.metric(name)
    return DecidingMetric(metric, early_stopping.maximize(metric.greater_is_better))
