"""The verbs: train, evaluate, predict. The only module that wires the pieces together."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmtune import rundir
from lmtune.config import DataConfig, RunConfig, load_config
from lmtune.data import Table, read_table
from lmtune.errors import LmtuneError
from lmtune.evaluation import evaluate_examples, forward_all
from lmtune.integrity import read_json_object
from lmtune.models import from_hub_or_local, load_tokenizer, resolve_model
from lmtune.runlock import RunLock
from lmtune.strategies import anatomy, directory_size, trainable_parameters
from lmtune.strategies.lora import is_adapter_dir, load_adapter_model, merge_adapter
from lmtune.tasks import TASKS
from lmtune.training.checkpoint import latest_checkpoint
from lmtune.training.frozen_cache import attach_cache, detach_cache, remove_spill
from lmtune.training.precision import default_threads, resolve_precision

log = logging.getLogger("lmtune")


def train(
    config: RunConfig | str | Path, overrides: list[str] | tuple[str, ...] = (),
    on_eval: Callable[[int, dict], None] | None = None, show_diagnosis: bool = True,
) -> dict[str, Any]:
    """Fine-tune (or resume fine-tuning) as the config says; return the final metrics.

    Everything that can be checked (config, data, labels, output directory) is checked before
    anything is written, so bad input leaves nothing behind.

    Args:
        config: a RunConfig or a YAML path.
        overrides: ``key=value`` strings applied to a YAML config.
        on_eval: called with (step, validation metrics) after each evaluation; raising stops training.
        show_diagnosis: log the run's diagnosis at the end (it is written to RUN/diagnosis.json either way).
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    run_dir = rundir.check_output(cfg)
    # one writer per run directory; under torchrun the first process holds the lock for the whole job
    with RunLock(run_dir) if int(os.environ.get("RANK", "0")) == 0 else nullcontext():
        return _train_locked(cfg, on_eval, show_diagnosis)


def _train_locked(cfg: RunConfig, on_eval: Callable[[int, dict], None] | None,
                  show_diagnosis: bool) -> dict[str, Any]:
    run_dir, finished = rundir.prepare_run_dir(cfg)
    if finished:
        log.info("%s already holds this finished run; nothing to do", run_dir)
        return read_json_object(run_dir / rundir.FINAL_METRICS, "the run's final metrics")
    rundir.remove_partial_model(run_dir)
    task = make_task(cfg)
    watch = watched_metric(cfg, task)
    if watch not in task.metric_names:
        raise LmtuneError(f"early_stopping.metric: {watch!r} is not a validation metric of task {cfg.task!r}; "
                          f"allowed: {', '.join(task.metric_names)}")
    tables = load_tables(cfg.data, task)
    source = _model_source(cfg, tables["train"], run_dir)
    tokenizer = load_tokenizer(source)
    encoded = {name: task.encode(table, tokenizer, cfg.data, cfg.train.max_length) for name, table in tables.items()}
    batch_examples = _batch_examples(cfg, task, tables["train"], encoded["train"], tokenizer)
    # language models train on packed blocks; their train sample is scored per document, like validation
    packed = hasattr(task, "training_examples")
    train_examples = task.training_examples(encoded["train"], cfg.train.max_length) if packed else encoded["train"]

    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from lmtune.training.loop import FitInputs, fit

    use_cuda = torch.cuda.is_available()
    precision = resolve_precision(cfg.train.precision, use_cuda)
    # the scheduler is built in optimizer steps of one process; accelerate would otherwise step it once per
    # process at each optimizer step, and a 2-process run's learning rate reached 0 halfway through
    accelerator = Accelerator(mixed_precision=precision, cpu=not use_cuda, step_scheduler_with_optimizer=False)
    try:
        torch.set_num_threads(cfg.train.threads or default_threads(accelerator.num_processes))
        set_seed(cfg.train.seed)
        strategy, model, layers, lr_scales = _trainable_model(cfg, task, source)
        if accelerator.is_main_process:
            rundir.write_header(run_dir, cfg, task.state())
        accelerator.wait_for_everyone()
        # augmented (or re-masked) inputs change every epoch, so their frozen-layer outputs cannot be cached
        cache_mode = "off" if batch_examples is not None or packed else cfg.strategy.cache
        model, cache_info = attach_cache(
            model, strategy.frozen_bottom(layers), cache_mode, encoded, tokenizer.pad_token_id,
            cfg.train.eval_batch, accelerator, run_dir / ".frozen-cache",
        )
        sample = train_sample_indices(len(encoded["train"]), cfg.train.eval_train_samples, cfg.train.seed)
        if accelerator.is_main_process:
            rundir.write_text_atomic(run_dir / TRAIN_SAMPLE, json.dumps({"indices": sample}))
        inputs = FitInputs(
            task, train_examples, encoded.get("validation"), tokenizer.pad_token_id, run_dir,
            [run_dir / rundir.CONFIG, run_dir / rundir.VERSIONS],
            lr_scales=lr_scales, on_eval=on_eval, watch=watch,
            maximize=cfg.early_stopping.maximize(task.greater_is_better),
            patience=cfg.early_stopping.patience if cfg.early_stopping.metric else None,
            min_delta=cfg.early_stopping.min_delta, restore_best=cfg.early_stopping.restore_best,
            label_smoothing=cfg.regularization.label_smoothing, rdrop=cfg.regularization.rdrop,
            weight_decay=cfg.regularization.weight_decay, max_grad_norm=cfg.regularization.max_grad_norm,
            batch_examples=batch_examples, train_sample=[encoded["train"][i] for i in sample] or None,
        )
        state = fit(accelerator, model, inputs, cfg.train)
        final = _finish(accelerator, model, tokenizer, task, strategy, cfg, encoded, state, run_dir, cache_info)
    finally:
        main_process = accelerator.is_main_process  # read before _release resets accelerate's state
        remove_spill(run_dir / ".frozen-cache")
        _release(accelerator)
    if main_process:
        _diagnose(run_dir, show_diagnosis)
    return final


def _diagnose(run_dir: Path, show: bool) -> None:
    """Diagnose the finished run (RUN/diagnosis.json) and tell the user."""
    from lmtune.diagnosis import diagnose

    try:
        diagnosis = diagnose(run_dir)
    except Exception as err:  # noqa: BLE001 - the trained model is saved; a diagnosis bug must not fail the run
        log.warning("could not diagnose the run (%s: %s); try `lmtune diagnose %s`", type(err).__name__, err, run_dir)
        return
    if show:
        log.info("%s", diagnosis.text())


def make_task(cfg: RunConfig) -> Any:
    """The task object for a new run, with its settings from the config."""
    task = TASKS.get(cfg.task)()
    if hasattr(task, "configure"):
        task.configure(cfg)
    if cfg.regularization.rdrop and not hasattr(task, "predictions"):
        raise LmtuneError(f"regularization.rdrop: R-Drop is implemented for classification, not task {cfg.task!r}")
    return task


TRAIN_SAMPLE = "train_sample.json"
"""Indices (into the training rows) of the fixed sample scored at each evaluation."""


def train_sample_indices(n_train: int, size: int, seed: int) -> list[int]:
    """A seeded, sorted sample of training rows; the same one on every process and after resume."""
    return sorted(random.Random(seed).sample(range(n_train), min(size, n_train)))


def _model_source(cfg: RunConfig, train: Table, run_dir: Path) -> str:
    """What ``from_pretrained`` loads: the resolved ``model:``, or for ``scratch:SIZE`` the run's ``base``
    folder (config and a tokenizer trained on the training text, made once)."""
    from lmtune import scratch

    if not scratch.is_scratch(cfg.model):
        return resolve_model(cfg.model)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LmtuneError(f"output: cannot create {run_dir} ({err.strerror or err})") from None
    base = scratch.prepare_base(cfg.model, train.texts(cfg.data.text), cfg.lm.vocab_size, cfg.train.max_length,
                                run_dir / scratch.BASE)
    return str(base)


def _batch_examples(cfg: RunConfig, task: Any, table: Table, examples: list[dict], tokenizer: Any) -> Any:
    """The per-epoch batch builder when training inputs change every epoch (augmentation, masked-LM
    masking), else None."""
    if hasattr(task, "training_batches"):
        if cfg.augmentation.methods:
            raise LmtuneError(f"augmentation.methods: task {cfg.task!r} does not support text augmentation")
        return task.training_batches(examples, tokenizer)
    if not cfg.augmentation.methods:
        return None
    if not getattr(task, "augmentable", False):
        raise LmtuneError(f"augmentation.methods: task {cfg.task!r} does not support text augmentation")
    from lmtune.data.augment import Augmenter, augmented_batches, load_filler

    filler = load_filler(cfg.augmentation.mlm_model) if "mlm" in cfg.augmentation.methods else None
    augmenter = Augmenter(cfg.augmentation, cfg.train.seed, table.texts(cfg.data.text), filler)
    return augmented_batches(augmenter, table, examples, tokenizer, cfg.data, cfg.train.max_length)


def watched_metric(cfg: RunConfig, task: Any) -> str:
    """The validation metric that picks the best checkpoint: early_stopping.metric, else the task's own."""
    return cfg.early_stopping.metric or task.primary_metric


_DROPOUT_KEYS = {
    "dropout": ("hidden_dropout_prob", "resid_pdrop", "embd_pdrop", "hidden_dropout", "dropout"),
    "attention_dropout": ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"),
    "classifier_dropout": ("classifier_dropout", "summary_first_dropout"),
}
"""regularization.* → the names model configs use for them (BERT, GPT-2, Llama and others)."""


def _dropout_overrides(cfg: RunConfig, source: str) -> dict[str, float]:
    """``from_pretrained`` config overrides for the regularization's dropout settings."""
    from transformers import AutoConfig

    wanted = {k: getattr(cfg.regularization, k) for k in _DROPOUT_KEYS if getattr(cfg.regularization, k) is not None}
    if not wanted:
        return {}
    model_config = from_hub_or_local(AutoConfig.from_pretrained, source)
    return {name: value for key, value in wanted.items() for name in _DROPOUT_KEYS[key] if hasattr(model_config, name)}


def _trainable_model(cfg: RunConfig, task: Any, source: str) -> tuple[Any, torch.nn.Module, int, dict[int, float]]:
    """(strategy, the model it made trainable, its block count, learning-rate scale per parameter id)."""
    strategy = cfg.strategy.build()
    base = from_hub_or_local(task.build_model, source, attn_implementation=cfg.train.attention,
                             **_dropout_overrides(cfg, source))
    layers = anatomy.num_layers(base)
    model = strategy.apply(base)
    lr_scales = {id(p): strategy.lr_scale(name, layers) for name, p in model.named_parameters()}
    return strategy, model, layers, lr_scales


def _release(accelerator: Any) -> None:
    """Tear down the process group and accelerate's process-wide state.

    Without the explicit teardown about 1 in 4 torchrun exits abort; without the reset, a second
    `train` in the same process (Python API, `compare`) could not choose another precision.
    """
    from accelerate.state import AcceleratorState, GradientState

    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _finish(accelerator: Any, model: Any, tokenizer: Any, task: Any, strategy: Any, cfg: RunConfig,
            encoded: dict, state: Any, run_dir: Path, cache_info: dict[str, Any]) -> dict[str, Any]:
    """Save the final model and write metrics.json (validation and test metrics, throughput, sizes)."""
    unwrapped = accelerator.unwrap_model(model)  # may still run on cached states: evaluation below does
    results: dict[str, Any] = {}
    if state.last_validation_step == state.step:
        results["validation"] = state.last_validation
    for split in ("validation", "test"):
        if encoded.get(split) and split not in results:
            results[split] = evaluate_examples(
                model, encoded[split], task, cfg.train.eval_batch, tokenizer.pad_token_id, accelerator
            )
    unwrapped = detach_cache(unwrapped)
    trainable, total = trainable_parameters(unwrapped)
    results.update({
        "step": state.step, "best_step": state.best_step, "best_" + watched_metric(cfg, task): state.best_metric,
        "stopped_early": state.stopped_early, "restored_step": state.restored_step,
        "train_samples_per_s": round(state.samples / max(state.train_seconds, 1e-9), 2),
        "train_seconds": round(state.train_seconds, 2), "train_rows": len(encoded["train"]),
        "processes": accelerator.num_processes,
        "precision": accelerator.mixed_precision, "trainable_parameters": trainable, "parameters": total,
        **cache_info,
    })
    if hasattr(task, "training_examples"):  # packed blocks of max_length tokens
        results["train_tokens_per_s"] = round(results["train_samples_per_s"] * cfg.train.max_length, 1)
    if accelerator.is_main_process:

        def save(out: Path) -> None:
            strategy.save(unwrapped, out)
            tokenizer.save_pretrained(out)

        results["strategy"] = cfg.strategy.name
        results["model_bytes"] = directory_size(rundir.save_model_atomic(run_dir, save))
        latest = latest_checkpoint(run_dir)
        results["checkpoint_bytes"] = directory_size(latest) if latest else None
        rundir.write_text_atomic(run_dir / rundir.FINAL_METRICS, json.dumps(results, indent=2))
    accelerator.wait_for_everyone()
    return results


def load_tables(data: DataConfig, task: Any) -> dict[str, Table]:
    """Read train/validation/test, carving a seeded validation split from train when none is given."""
    read = getattr(task, "reader", read_table)  # language models read plain text as documents
    train = read(data.train, "train").head(data.max_train_samples)
    task.fit(train, data)
    tables = {"train": train}
    if data.validation:
        tables["validation"] = read(data.validation, "validation").head(data.max_eval_samples)
    else:
        order = list(range(len(train)))
        random.Random(data.split_seed).shuffle(order)
        n_val = max(1, round(len(train) * data.validation_split))
        if len(train) - n_val < 1:
            from lmtune.errors import DataError

            raise DataError(f"{train.source}: {len(train)} rows are too few to hold out a validation split")
        tables["validation"] = train.take(sorted(order[:n_val])).head(data.max_eval_samples)
        tables["train"] = train.take(sorted(order[n_val:]))
    if data.train_fraction < 1:
        order = list(range(len(tables["train"])))
        random.Random(data.split_seed).shuffle(order)
        keep = max(1, round(len(order) * data.train_fraction))
        tables["train"] = tables["train"].take(sorted(order[:keep]))
    if data.test:
        tables["test"] = read(data.test, "test").head(data.max_eval_samples)
    return tables


@dataclass
class Run:
    """A finished run loaded for inference: ``lmtune.load(RUN).predict([...])``."""

    run_dir: Path
    config: RunConfig
    task: Any
    model: Any
    tokenizer: Any

    def predict(self, texts: list[str] | list[tuple[str, str]] | Table, batch_size: int = 64) -> list[dict]:
        """Predictions for raw texts (or (text, pair) tuples), in input order."""
        data = self.config.data
        if hasattr(self.task, "prompt_ids"):  # language models continue (or answer) each input
            table = texts if isinstance(texts, Table) else _texts_table(texts, data)
            return [{"generated": self.generate(prompt)} for prompt in self.task.prompts(table, data)]
        table = _input_table(texts, data) if isinstance(texts, Table) else _texts_table(texts, data)
        examples = self.task.encode(table, self.tokenizer, _unlabelled(self.config.data),
                                    self.config.train.max_length)
        device = next(self.model.parameters()).device
        if hasattr(self.task, "predict_model"):  # generation tasks
            return self.task.predict_model(self.model, examples, batch_size, self.tokenizer.pad_token_id, device)
        extract = getattr(self.task, "extract", None)
        indices, logits, _ = forward_all(self.model, examples, batch_size, self.tokenizer.pad_token_id,
                                         device=device, autocast=self._autocast(), extract=extract)
        if extract is not None:  # span tasks: one answer per input row, from all of its windows
            scores = dict(zip(indices, logits, strict=True))
            return self.task.predict_outputs([scores[i] for i in range(len(examples))], examples, len(table))
        by_index = dict(zip(indices, self.task.predictions(logits), strict=True))
        return [by_index[i] for i in range(len(examples))]

    def generate(self, prompt: str | dict, settings: Any = None, on_text: Callable[[str], None] | None = None,
                 **options: Any) -> str:
        """A language model's continuation of ``prompt`` (sft: its response to an instruction).

        Args:
            prompt: text; for sft also a row (``instruction``/``input``, or chat ``messages``).
            settings: a `lmtune.generation.GenerationSettings`; or give its fields as ``options``
                (max_new_tokens, temperature (0: greedy), top_k, top_p, repetition_penalty, seed).
            on_text: called with each new piece of text as it is generated (streaming).
        """
        from lmtune.generation import GenerationSettings, generate

        if not hasattr(self.task, "prompt_ids"):
            raise LmtuneError(f"{self.run_dir}: task {self.config.task!r} does not generate text; "
                              "generation needs a causal_lm or sft run")
        settings = settings or GenerationSettings(**options)
        ids = self.task.prompt_ids(prompt, self.tokenizer)
        return generate(self.model, self.tokenizer, ids, settings, on_text)

    def evaluate(self, data: str | Table, max_samples: int | None = None) -> dict[str, Any]:
        """Loss and task metrics on labelled data (a file path or a Table)."""
        read = getattr(self.task, "reader", read_table)
        table = (data if isinstance(data, Table) else read(data, "test")).head(max_samples)
        if getattr(self.task, "labelled", True):
            table.require(self.config.data.label)
        examples = self.task.encode(table, self.tokenizer, self.config.data, self.config.train.max_length)
        return evaluate_examples(self.model, examples, self.task, self.config.train.eval_batch,
                                 self.tokenizer.pad_token_id, autocast=self._autocast())

    def _autocast(self) -> Any:
        precision = resolve_precision(self.config.train.precision, torch.cuda.is_available())
        if precision == "no":
            return nullcontext()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def load(run_dir: str | Path) -> Run:
    """Load a finished run directory for prediction and evaluation."""
    path, cfg, task_state = rundir.read_run(run_dir)
    task = TASKS.get(cfg.task).from_state(task_state)
    source = str(path / rundir.MODEL)
    if is_adapter_dir(path / rundir.MODEL):
        model = load_adapter_model(path / rundir.MODEL, lambda base: from_hub_or_local(task.build_model, base))
    else:
        model = from_hub_or_local(task.build_model, source)
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    return Run(path, cfg, task, model, load_tokenizer(source))


def _texts_table(texts: list, data: DataConfig) -> Table:
    rows = []
    for item in texts:
        if isinstance(item, (tuple, list)):
            rows.append({data.text: item[0], data.text_pair: item[1]})
        else:
            rows.append({data.text: item})
    columns = [data.text] + ([data.text_pair] if data.text_pair else [])
    return Table("<input>", columns, rows)


def _input_table(table: Table, data: DataConfig) -> Table:
    """Accept prediction inputs whose text column is called ``text`` (plain lines, simple JSONL)."""
    if data.text in table.columns or "text" not in table.columns:
        table.require(data.text, data.text_pair)
        return table
    rows = [{**row, data.text: row["text"]} for row in table.rows]
    renamed = Table(table.source, [*table.columns, data.text], rows, table.lines)
    renamed.require(data.text_pair)
    return renamed


def _unlabelled(data: DataConfig) -> DataConfig:
    from dataclasses import replace

    return replace(data, label="\0no-label")  # predictions never read a label column


def export(run_dir: str | Path, out_dir: str | Path | None = None, merge: bool = False) -> Path:
    """Write the run's model as a plain transformers directory (LoRA adapters merged when ``merge``).

    Returns:
        The directory written (default ``RUN/merged``).
    """
    run = load(run_dir)
    target = Path(out_dir) if out_dir else run.run_dir / "merged"
    model = run.model
    if is_adapter_dir(run.run_dir / rundir.MODEL):
        if not merge:
            raise LmtuneError(f"{run.run_dir}: the model is a LoRA adapter; pass --merge to fold it into the weights")
        model = merge_adapter(model)
    if target.exists() and any(target.iterdir()):
        raise LmtuneError(f"--out: {target} is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    run.tokenizer.save_pretrained(tmp)
    if target.exists():
        target.rmdir()
    tmp.replace(target)
    return target
