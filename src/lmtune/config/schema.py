"""Typed run configuration: one dataclass per YAML section.

Each ``validate`` returns a list of problems (rather than raising) so that the loader can
report every problem in the config at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ATTENTIONS = ("eager", "sdpa")


BAD_ROWS = ("skip", "error")


@dataclass(frozen=True)
class DataConfig:
    train: str | None = None
    """Training data: a CSV/TSV/JSONL/Parquet file, or ``hf:NAME[:CONFIG][@SPLIT]`` for a Hub dataset."""
    validation: str | None = None
    """Validation data; when absent, ``validation_split`` of the training rows are held out (seeded)."""
    test: str | None = None
    """Optional test data, evaluated once at the end of training."""
    text: str = "text"
    """Column holding the input text."""
    text_pair: str | None = None
    """Column holding the second text of a sentence pair (NLI, paraphrase), if any."""
    label: str = "label"
    """Column holding the label (strings or integers)."""
    validation_split: float = 0.1
    """Fraction of training rows held out for validation when ``validation`` is not given."""
    split_seed: int = 0
    """Seed of that hold-out; separate from train.seed so that runs with different seeds share one split."""
    max_train_samples: int | None = None
    """Use only the first N training rows (quick experiments, tests)."""
    max_eval_samples: int | None = None
    """Use only the first N validation/test rows."""
    doc_stride: int = 128
    """qa: overlap, in tokens, between the windows of a context longer than train.max_length."""
    train_fraction: float = 1.0
    """Train on a seeded random fraction of the training rows (learning curves over data size)."""
    on_bad_rows: str = "skip"
    """preference: pairs that cannot teach anything (no shared prompt, identical or empty replies). skip: leave
    them out, counted by kind in the log and in task.json; error: stop at the first, naming its row."""

    def validate(self) -> list[str]:
        problems = []
        if self.train is None:
            problems.append("data.train: missing; expected a data file path or hf:NAME")
        if not 0.0 < self.validation_split < 1.0:
            problems.append(f"data.validation_split: {self.validation_split} is not in (0, 1)")
        if not 0 < self.train_fraction <= 1:
            problems.append(f"data.train_fraction: {self.train_fraction} is not in (0, 1]")
        if self.doc_stride <= 0:
            problems.append(f"data.doc_stride: {self.doc_stride} must be > 0")
        if self.on_bad_rows not in BAD_ROWS:
            problems.append(f"data.on_bad_rows: {self.on_bad_rows!r} is not one of {', '.join(BAD_ROWS)}")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                problems.append(f"data.{key}: {value} must be a positive integer")
        return problems


STRATEGY_KNOBS = ("layers", "decay", "r", "alpha", "dropout", "target_modules", "quant_type", "double_quant")
"""The strategy settings; each strategy takes the ones that are fields of its class (`lmtune.strategies`), and a
knob set for another strategy is a config error (checked by `lmtune.loader`)."""
CACHE_MODES = ("auto", "off", "memory", "disk")


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "full"
    """Which parameters train: full | freeze | head | lora | qlora | bitfit | llrd."""
    layers: int | float | None = None
    """freeze: how many bottom blocks are frozen with the embeddings: an integer is a count (0 to all blocks),
    a number strictly between 0 and 1 a fraction of the blocks, rounded (default 0.5)."""
    decay: float | None = None
    """llrd (default 0.9), full and freeze (default none): learning-rate factor per block going down."""
    r: int | None = None
    """lora, qlora: rank (default 8)."""
    alpha: int | None = None
    """lora, qlora: scaling numerator, PEFT's lora_alpha (default 16)."""
    dropout: float | None = None
    """lora, qlora: dropout on the adapter input (default 0.1)."""
    target_modules: tuple[str, ...] | None = None
    """lora: module names to adapt (default: PEFT's choice for the architecture); qlora: default every linear layer
    of the blocks (``[all-linear]``)."""
    quant_type: str | None = None
    """qlora: the base's 4-bit data type, nf4 (default) or fp4."""
    double_quant: bool | None = None
    """qlora: quantize the quantization constants too (default true)."""
    cache: str = "auto"
    """Frozen-layer caching for freeze/head: auto (RAM if it fits the budget, else disk) | memory | disk | off."""

    def validate(self) -> list[str]:
        problems = []
        if self.layers is not None and (self.layers < 0 or (isinstance(self.layers, float) and self.layers >= 1)):
            problems.append(f"strategy.layers: {self.layers} is neither a block count (an integer >= 0) nor a "
                            "fraction of the blocks (strictly between 0 and 1)")
        if self.decay is not None and not 0 < self.decay <= 1:
            problems.append(f"strategy.decay: {self.decay} is not in (0, 1]")
        for knob in ("r", "alpha"):
            if getattr(self, knob) is not None and getattr(self, knob) <= 0:
                problems.append(f"strategy.{knob}: {getattr(self, knob)} must be > 0")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            problems.append(f"strategy.dropout: {self.dropout} is not in [0, 1)")
        if self.quant_type is not None and self.quant_type not in ("nf4", "fp4"):
            problems.append(f"strategy.quant_type: {self.quant_type!r} is not one of nf4, fp4")
        if self.cache not in CACHE_MODES:
            problems.append(f"strategy.cache: {self.cache!r} is not one of {', '.join(CACHE_MODES)}")
        return problems

    def knobs(self) -> dict[str, Any]:
        """The strategy settings that were set (the others keep the strategy's defaults)."""
        return {k: getattr(self, k) for k in STRATEGY_KNOBS if getattr(self, k) is not None}


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 3
    """Passes over the training data (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; takes precedence over ``epochs``."""
    batch_size: int = 32
    """Examples per forward pass on each process."""
    batch_tokens: int | None = None
    """Size training batches by tokens instead: as many examples as fit in this many padded tokens (rows × the
    batch's longest example), so short examples go in large batches and long ones in small batches;
    ``batch_size`` then only sets the length-sorting window (50 × batch_size examples). Default: off."""
    eval_batch_size: int | None = None
    """Examples per evaluation forward pass (default: 2 × batch_size)."""
    grad_accum: int = 1
    """Forward passes accumulated into one optimizer step."""
    lr: float | None = None
    """Peak learning rate (after warmup); default: the strategy's (full 5e-5, freeze/llrd 1e-4, lora 5e-4,
    head/bitfit 1e-3)."""
    warmup: float = 0.06
    """Warmup length: a fraction of all steps if < 1, else a number of steps; then linear decay to 0."""
    precision: str = "auto"
    """auto (bf16 where the CPU/GPU supports it, else fp32) | bf16 | fp16 (GPU only) | fp32."""
    seed: int = 42
    """Seeds data order, head initialisation, dropout and the validation split."""
    eval_every: int = 0
    """Evaluate (and checkpoint) every N optimizer steps; 0 means only at the end of each epoch."""
    log_every: int = 10
    """Write a training-loss line to metrics.jsonl every N optimizer steps."""
    max_length: int = 128
    """Truncate inputs to this many tokens."""
    attention: str = "sdpa"
    """Attention kernel for training: sdpa (fused; as fast as eager or faster on CPU, measured) | eager."""
    gradient_checkpointing: bool = False
    """Keep only each block's input during the forward pass and recompute the rest in the backward pass:
    activation memory of one block instead of all, for about a third more compute (works under LoRA's frozen
    base: non-reentrant checkpointing)."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding, same randomness across epochs)."""
    sparse_embeddings: bool = True
    """Update only the word-embedding rows each batch uses (sparse gradients, lazy AdamW); false: dense AdamW
    over the whole vocabulary every step. Applies when the word embeddings train and are not tied to the
    output layer, on one process."""
    fast_dropout: bool = True
    """On CPU, build dropout masks from 16-bit lanes of 64-bit random draws (3x cheaper than torch's);
    false: torch's nn.Dropout."""
    bf16_weights: bool = True
    """Under bf16 precision, run forward and backward on bf16 copies of the weights (fp32 master weights in
    the optimizer, checkpoints and evaluation) instead of casting every weight at each use; false: plain
    autocast. Applies on one process."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep (the best one is always kept as well)."""
    threads: int | None = None
    """Torch intra-op threads per process (default: physical cores / processes)."""
    fsdp: bool = False
    """Shard the weights, their gradients and the optimizer state over the torchrun processes (FSDP2: each
    transformer block is one unit, gathered for its forward and backward) instead of a whole copy per process; for
    full fine-tuning (strategies full and llrd) under torchrun with 2 or more processes. Checkpoints hold each
    process's shard; the final model is saved as ordinary transformers weights."""

    eval_train_samples: int = 512
    """At each evaluation also score this many fixed training examples (the train/validation gap); 0: off."""

    def validate(self) -> list[str]:
        problems = []
        positive = ("batch_size", "grad_accum", "max_length", "log_every", "keep_checkpoints")
        for key in positive + ("batch_tokens", "eval_batch_size", "max_steps", "threads"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                problems.append(f"train.{key}: {value} must be > 0")
        for key in ("lr", "epochs"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                problems.append(f"train.{key}: {getattr(self, key)} must be > 0")
        for key in ("warmup", "eval_every", "eval_train_samples"):
            if getattr(self, key) < 0:
                problems.append(f"train.{key}: {getattr(self, key)} must be >= 0")
        if self.batch_tokens is not None and 0 < self.batch_tokens < self.max_length:
            problems.append(f"train.batch_tokens: {self.batch_tokens} must be >= train.max_length "
                            f"({self.max_length}), so that a batch holds at least one example of any length")
        if self.attention not in ATTENTIONS:
            problems.append(f"train.attention: {self.attention!r} is not one of {', '.join(ATTENTIONS)}")
        if self.precision not in PRECISIONS:
            problems.append(f"train.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        return problems

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size


@dataclass(frozen=True)
class RegularizationConfig:
    weight_decay: float = 0.01
    """AdamW weight decay (never applied to biases and LayerNorm weights)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value (null: no clipping)."""
    rdrop: float = 0.0
    """R-Drop: weight of the symmetric KL between two dropout passes of each batch (0: off; 0.5-5 typical)."""
    label_smoothing: float = 0.0
    """Training targets mix this much of the uniform distribution (evaluation loss stays plain)."""
    dropout: float | None = None
    """Hidden-state dropout of the model (BERT: hidden_dropout_prob); None keeps the model's own."""
    attention_dropout: float | None = None
    """Dropout on attention probabilities (BERT: attention_probs_dropout_prob); None keeps the model's own."""
    classifier_dropout: float | None = None
    """Dropout before the classification head; None keeps the model's own."""

    def validate(self) -> list[str]:
        problems = []
        if self.weight_decay < 0:
            problems.append(f"regularization.weight_decay: {self.weight_decay} must be >= 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            problems.append(f"regularization.max_grad_norm: {self.max_grad_norm} must be > 0 or null")
        if self.rdrop < 0:
            problems.append(f"regularization.rdrop: {self.rdrop} must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"regularization.label_smoothing: {self.label_smoothing} is not in [0, 1)")
        for key in ("dropout", "attention_dropout", "classifier_dropout"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < 1:
                problems.append(f"regularization.{key}: {value} is not in [0, 1)")
        return problems


@dataclass(frozen=True)
class QAConfig:
    max_answer_length: int = 30
    """Longest answer, in tokens, that prediction may return."""
    n_best: int = 20
    """Start and end candidates considered per window."""
    allow_no_answer: bool = False
    """SQuAD 2.0 style: answer "" when [CLS] scores above the best span."""

    def validate(self) -> list[str]:
        return [f"qa.{k}: {getattr(self, k)} must be > 0" for k in ("max_answer_length", "n_best")
                if getattr(self, k) <= 0]


ARCHITECTURES = ("auto", "encoder-decoder", "causal")


@dataclass(frozen=True)
class SummarizationConfig:
    architecture: str = "auto"
    """encoder-decoder (BERT2BERT, warm-started from an encoder on both sides) | causal (a decoder-only LM:
    document + prompt -> summary) | auto (causal for causal-LM checkpoints, else encoder-decoder)."""
    max_target_length: int = 64
    """Summary tokens kept for training; the most a generated summary may have."""
    num_beams: int = 4
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    min_length: int = 5
    """Fewest tokens a generated summary may have."""
    prompt: str = "\nSummary:"
    """causal: text between the document and its summary."""
    eval_generate: int = 0
    """Validation rows summarized (ROUGE) at each evaluation during training; 0: loss only."""
    eval_seconds: float | None = 120.0
    """Time bound of that generation per evaluation (null: none)."""

    def validate(self) -> list[str]:
        problems = []
        if self.architecture not in ARCHITECTURES:
            problems.append(f"summarization.architecture: {self.architecture!r} is not one of "
                            f"{', '.join(ARCHITECTURES)}")
        for key in ("max_target_length", "num_beams"):
            if getattr(self, key) <= 0:
                problems.append(f"summarization.{key}: {getattr(self, key)} must be > 0")
        for key in ("no_repeat_ngram_size", "min_length", "eval_generate"):
            if getattr(self, key) < 0:
                problems.append(f"summarization.{key}: {getattr(self, key)} must be >= 0")
        return problems


@dataclass(frozen=True)
class LanguageModelingConfig:
    vocab_size: int = 8192
    """causal_lm from scratch: size of the byte-level BPE vocabulary lmtune trains on the training text."""
    mlm_probability: float = 0.15
    """masked_lm: fraction of tokens (or of words, with whole_word_mask) masked in each example."""
    whole_word_mask: bool = False
    """masked_lm: mask every piece of a chosen word together, not single word pieces."""
    pseudo_perplexity_samples: int = 64
    """masked_lm: validation examples scored by pseudo-perplexity (one forward pass per token); 0: off."""
    chat_template: str | None = None
    """sft: a Jinja chat template; default: the tokenizer's own, else lmtune's "### Instruction / ### Response"."""
    packing: bool | None = None
    """Training rows holding several examples (up to train.max_length tokens), each attending only to itself with
    positions restarting at 0, no padding. sft: off unless true. causal_lm (whose rows are always full blocks of
    documents): on unless false, which lets a document attend to those before it in its block (the classic
    stream)."""

    def validate(self) -> list[str]:
        problems = []
        if self.vocab_size < 300:
            problems.append(f"lm.vocab_size: {self.vocab_size} is too small; expected >= 300 (256 bytes + merges)")
        if not 0 < self.mlm_probability < 1:
            problems.append(f"lm.mlm_probability: {self.mlm_probability} is not in (0, 1)")
        if self.pseudo_perplexity_samples < 0:
            problems.append(f"lm.pseudo_perplexity_samples: {self.pseudo_perplexity_samples} must be >= 0")
        return problems


PREFERENCE_LOSSES = ("dpo", "ipo", "simpo", "orpo")


@dataclass(frozen=True)
class PreferenceConfig:
    loss: str = "dpo"
    """dpo (sigmoid; Rafailov et al., 2023) | ipo (squared; Azar et al., 2023) | simpo (no reference,
    length-normalised, with a target margin; Meng et al., 2024) | orpo (no reference: the chosen reply's NLL plus an
    odds-ratio term; Hong et al., 2024)."""
    beta: float | None = None
    """Strength of the preference term (dpo/ipo: the KL-penalty scale; simpo: the reward scale; orpo: the
    odds-ratio weight). Default per loss: dpo 0.1, ipo 0.1, simpo 2.0, orpo 0.1."""
    sft_weight: float = 0.0
    """Weight of an added NLL term on the chosen reply (per token); orpo has its own, always 1."""
    margin: float = 0.5
    """simpo: the target reward margin (gamma)."""

    DEFAULT_BETA: ClassVar[dict[str, float]] = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "orpo": 0.1}

    @property
    def strength(self) -> float:
        """``beta``, or the loss's default."""
        return self.beta if self.beta is not None else self.DEFAULT_BETA.get(self.loss, 0.1)

    def validate(self) -> list[str]:
        problems = []
        if self.loss not in PREFERENCE_LOSSES:
            problems.append(f"preference.loss: {self.loss!r} is not one of {', '.join(PREFERENCE_LOSSES)}")
        if self.beta is not None and not self.beta > 0:
            problems.append(f"preference.beta: {self.beta} must be > 0")
        if self.sft_weight < 0:
            problems.append(f"preference.sft_weight: {self.sft_weight} must be >= 0")
        return problems


@dataclass(frozen=True)
class RepliesConfig:
    samples: int = 0
    """Validation rows whose replies are generated (greedy) and scored at each evaluation during training: exact
    match and ROUGE-L against the row's own reply (sft: the last assistant turn; preference: the chosen reply),
    logged as ``reply_*`` validation metrics; 0: off."""
    max_new_tokens: int = 64
    """Longest generated reply."""
    judge: str | None = None
    """A classification run that also scores each generated reply: its probability of ``judge_label``
    (``reply_judge``), on the reply alone."""
    judge_label: str | int | None = None
    """The judge's label whose probability is the score (YAML reads a label like 1 as a number: either is taken)."""

    def validate(self) -> list[str]:
        problems = []
        if self.samples < 0:
            problems.append(f"replies.samples: {self.samples} must be >= 0")
        if self.max_new_tokens <= 0:
            problems.append(f"replies.max_new_tokens: {self.max_new_tokens} must be > 0")
        if (self.judge is None) != (self.judge_label is None):
            problems.append("replies.judge and replies.judge_label: give both (a classification run and its label) "
                            "or neither")
        return problems


AUGMENTATIONS = ("delete", "swap", "insert", "mlm")


@dataclass(frozen=True)
class AugmentationConfig:
    methods: tuple[str, ...] = ()
    """Word-level edits applied to training text on the fly: delete | swap | insert | mlm (contextual
    replacement by a masked LM). Empty: no augmentation. Never applied to validation or test data."""
    rate: float = 0.1
    """Fraction of an example's words each edit touches (at least one word)."""
    probability: float = 0.5
    """Chance that a training example is augmented in a given epoch (otherwise it is seen as written)."""
    mlm_model: str | None = None
    """Masked LM proposing replacement words for ``mlm`` (required with it): a model with a trained MLM head,
    such as a masked_lm run directory or a Hub id like bert-base-uncased. The bundled MiniLM has none."""

    def validate(self) -> list[str]:
        problems = []
        for method in self.methods:
            if method not in AUGMENTATIONS:
                from lmtune.registry import did_you_mean

                problems.append(f"augmentation.methods: {method!r} is not one of {', '.join(AUGMENTATIONS)}"
                                f"{did_you_mean(method, list(AUGMENTATIONS))}")
        if "mlm" in self.methods and self.mlm_model is None:
            problems.append("augmentation.mlm_model: required by method 'mlm'; expected a masked LM with a trained "
                            "head (a masked_lm run directory, or a Hub id such as bert-base-uncased)")
        if not 0 < self.rate <= 1:
            problems.append(f"augmentation.rate: {self.rate} is not in (0, 1]")
        if not 0 < self.probability <= 1:
            problems.append(f"augmentation.probability: {self.probability} is not in (0, 1]")
        return problems


@dataclass(frozen=True)
class EarlyStoppingConfig:
    metric: str | None = None
    """Validation metric to watch (loss, accuracy, macro_f1, ...); None: no early stopping."""
    mode: str = "auto"
    """max | min | auto (min for loss-like metrics, max otherwise)."""
    patience: int = 3
    """Evaluations without improvement before training stops."""
    min_delta: float = 0.0
    """Smallest change that counts as an improvement."""
    restore_best: bool = True
    """Save the weights of the best evaluation as the final model (also without early stopping)."""

    def validate(self) -> list[str]:
        problems = []
        if self.mode not in ("auto", "max", "min"):
            problems.append(f"early_stopping.mode: {self.mode!r} is not one of auto, max, min")
        if self.patience <= 0:
            problems.append(f"early_stopping.patience: {self.patience} must be > 0")
        if self.min_delta < 0:
            problems.append(f"early_stopping.min_delta: {self.min_delta} must be >= 0")
        return problems

    def maximize(self, greater_is_better: bool) -> bool:
        """Whether larger values of the watched metric are better: ``mode``, or with ``auto`` the direction its
        task declares for it (``greater_is_better``)."""
        if self.mode != "auto":
            return self.mode == "max"
        return greater_is_better


TRACKERS = ("mlflow", "tensorboard", "wandb", "trackio")
ARTIFACTS = ("none", "final")


@dataclass(frozen=True)
class TrackingConfig:
    report_to: tuple[str, ...] = ()
    """Experiment trackers to log to: any of mlflow, tensorboard, wandb, trackio (none by default)."""
    project: str = "lmtune"
    """MLflow experiment / W&B and trackio project."""
    run_name: str | None = None
    """The tracker run's name; default: the run directory's name."""
    mlflow_uri: str | None = None
    """MLflow tracking URI; else MLFLOW_TRACKING_URI, else MLflow's own default (./mlruns)."""
    log_artifacts: str = "none"
    """none | final: report.html, metrics.json, diagnosis.json and config.yaml at the end of the run."""
    log_model: bool = False
    """With log_artifacts=final, also the final model folder."""

    def validate(self) -> list[str]:
        import importlib.util

        problems = [f"tracking.report_to: {name!r} is not one of {', '.join(TRACKERS)}"
                    for name in self.report_to if name not in TRACKERS]
        problems += [f"tracking.report_to: {name} needs the {name} package, which is not installed: "
                     f"pip install {name}" for name in self.report_to
                     if name in TRACKERS and importlib.util.find_spec(name) is None]
        if self.log_artifacts not in ARTIFACTS:
            problems.append(f"tracking.log_artifacts: {self.log_artifacts!r} is not one of {', '.join(ARTIFACTS)}")
        if self.log_model and self.log_artifacts != "final":
            problems.append("tracking.log_model: the model is an artifact; set tracking.log_artifacts=final too")
        return problems


@dataclass(frozen=True)
class RunConfig:
    task: str = "classification"
    """What is learned: classification | qa | summarization | causal_lm | masked_lm | sft | preference
    (see `lmtune.tasks`)."""
    model: str = "bundled:minilm"
    """bundled:minilm, scratch:tiny|mini|small (causal_lm: a new decoder and tokenizer), a local model
    directory, a run directory, or a Hugging Face Hub id."""
    data: DataConfig = field(default_factory=DataConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    summarization: SummarizationConfig = field(default_factory=SummarizationConfig)
    lm: LanguageModelingConfig = field(default_factory=LanguageModelingConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    replies: RepliesConfig = field(default_factory=RepliesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: str = "runs/run"
    """Run directory: config, checkpoints, metrics and the final model are written here."""

    def validate(self) -> list[str]:
        """Checks across sections that need no task or strategy (those are `lmtune.loader`'s)."""
        problems = []
        if self.augmentation.methods and self.strategy.cache in ("memory", "disk"):
            problems.append(f"strategy.cache: {self.strategy.cache!r} cannot be used with augmentation "
                            "(augmented inputs change every epoch); use auto or off")
        return problems
