"""A finished run loaded for inference: ``lmtune.load(RUN).predict([...])``, ``.evaluate(path)``, ``.generate()``.

Prediction and evaluation go through the one evaluation loop with the run's own evaluation batch size and
precision, so `lmtune predict`, `lmtune eval` and validation during training score an input identically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lmtune import rundir
from lmtune.config import DataConfig, RunConfig
from lmtune.data import Table
from lmtune.errors import LmtuneError
from lmtune.evaluation import evaluate_examples, predict_examples
from lmtune.evaluation.low_precision import BF16Cache
from lmtune.integrity import FileCheckError
from lmtune.models import from_hub_or_local, load_tokenizer, resolve_model
from lmtune.strategies.lora import is_adapter_dir, load_adapter_model
from lmtune.tasks import TASKS, Task, task_names_with
from lmtune.training.precision import resolve_precision

OUTPUTS = ("logits", "start_logits", "end_logits")
"""The outputs a task's model gives that exports are checked on."""


@dataclass
class LoadedRun:
    """A finished run: its directory, config, task, model and tokenizer."""

    run_dir: Path
    config: RunConfig
    task: Task
    model: Any
    tokenizer: Any
    bf16_copies: BF16Cache = field(default_factory=dict, repr=False)
    """bf16 copies of the weights for scoring under bf16, made at the first pass (the weights never change)."""

    def predict(self, texts: list[str] | list[tuple[str, str]] | Table) -> list[dict]:
        """Predictions for raw texts (or (text, pair) tuples, or a Table of input rows), in input order."""
        data = self.config.data
        if self.task.capabilities.generates:  # language models continue (or answer) each input
            from lmtune.generation import GenerationSettings, Job, generate_batch

            table = texts if isinstance(texts, Table) else _texts_table(texts, data)
            jobs = [Job(self.task.prompt_ids(prompt, self.tokenizer), GenerationSettings())
                    for prompt in self.task.prompts(table, data)]
            for start in range(0, len(jobs), self.config.train.eval_batch):
                generate_batch(self.model, self.tokenizer, jobs[start:start + self.config.train.eval_batch])
            return [{"generated": job.text} for job in jobs]
        table = _input_table(texts, data) if isinstance(texts, Table) else _texts_table(texts, data)
        examples = self.encode_inputs(table)
        return predict_examples(self.model, examples, self.task, self.config.train.eval_batch,
                                self.tokenizer.pad_token_id, len(table), self.autocast(), self.bf16_copies)

    def encode_inputs(self, table: Table, tokenizer: Any = None) -> list[dict]:
        """The examples of unlabelled input rows, as prediction (CLI, Python or HTTP) scores them; ``tokenizer``:
        another copy of the run's tokenizer (a server's request side owns its own)."""
        return self.task.encode(table, tokenizer or self.tokenizer, _unlabelled(self.config.data),
                                self.config.train.max_length)

    def evaluate(self, data: str | Table, max_samples: int | None = None) -> dict[str, Any]:
        """Loss and task metrics on labelled data (a file path or a Table)."""
        table = (data if isinstance(data, Table) else self.task.read(data, "test")).head(max_samples)
        if self.task.capabilities.labelled:
            table.require(self.config.data.label)
        examples = self.task.encode(table, self.tokenizer, self.config.data, self.config.train.max_length)
        if self.task.capabilities.reference:
            self._attach_reference(examples)
        return evaluate_examples(self.model, examples, self.task, self.config.train.eval_batch,
                                 self.tokenizer.pad_token_id, autocast=self.autocast(), bf16_cache=self.bf16_copies)

    def _attach_reference(self, examples: list[dict]) -> None:
        """The starting model's scores of ``examples``: this model with its adapters off, or (the base weights
        changed) the model the run started from, loaded for the purpose and let go after."""
        from lmtune.evaluation.reference import attach_reference, has_adapters

        start = self.model if has_adapters(self.model) else load_model(self.task, resolve_model(self.config.model))
        attach_reference(start, {"evaluation": examples}, self.task, self.config.train.eval_batch,
                         self.tokenizer.pad_token_id, autocast=self.autocast())

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

        if not self.task.capabilities.generates:
            raise LmtuneError(f"{self.run_dir}: task {self.config.task!r} does not generate text; "
                              f"generation needs a {task_names_with('generates')} run")
        settings = settings or GenerationSettings(**options)
        ids = self.task.prompt_ids(prompt, self.tokenizer)
        return generate(self.model, self.tokenizer, ids, settings, on_text)

    def autocast(self) -> Any:
        """The mixed-precision context the run was trained (and validated) with."""
        precision = resolve_precision(self.config.train.precision, torch.cuda.is_available())
        if precision == "no":
            return nullcontext()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


BACKENDS = ("torch", "onnx", "onnx-int8")


def load(run_dir: str | Path, backend: str = "torch") -> LoadedRun:
    """Load a finished run directory for prediction and evaluation.

    ``backend``: torch (the run's model), or onnx / onnx-int8 (the graph `lmtune export RUN --format onnx` wrote,
    on onnxruntime, in fp32; for tasks that score inputs, not for those that generate text).
    """
    path, cfg, task_state = rundir.read_run(run_dir)
    task = restore_task(cfg, task_state, path)
    source = str(path / rundir.MODEL)
    if backend != "torch":
        return _onnx_run(path, cfg, task, source, backend)
    model = load_model(task, source)
    if torch.cuda.is_available():
        model.to("cuda")
    return LoadedRun(path, cfg, task, model, load_tokenizer(source))


def _onnx_run(path: Path, cfg: RunConfig, task: Task, source: str, backend: str) -> LoadedRun:
    from lmtune.onnx_model import OrtModel, onnx_graph

    if backend not in BACKENDS:
        raise LmtuneError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if task.capabilities.generates:
        raise LmtuneError(f"--backend {backend}: task {cfg.task!r} generates text, which runs on torch; the ONNX "
                          "export of a decoder gives its logits (checked at export)")
    model = OrtModel(onnx_graph(path, int8=backend == "onnx-int8"))
    # onnxruntime computes in fp32 whatever the run trained in: no autocast around it
    fp32 = replace(cfg, train=replace(cfg.train, precision="fp32"))
    return LoadedRun(path, fp32, task, model, load_tokenizer(source))


@contextmanager
def starting_model(run: LoadedRun) -> Iterator[Any]:
    """The model ``run`` started from, for before/after comparisons: the run's own model with its adapters off
    (LoRA: no second copy), else the config's model, loaded for the purpose and let go after. Yields the reason
    instead (a str) where there is none to load."""
    from lmtune.evaluation.reference import adapters_off, has_adapters
    from lmtune.scratch import is_scratch

    if has_adapters(run.model):
        with adapters_off(run.model):
            yield run.model
    elif is_scratch(run.config.model):
        yield f"none: the run started from random weights (model: {run.config.model})"
    elif not (run.run_dir / rundir.FINAL_METRICS).is_file():
        yield "none: the run was imported, not trained (its model is where it started)"
    else:
        model = load_model(run.task, resolve_model(run.config.model))
        if torch.cuda.is_available():
            model.to("cuda")
        yield model


def plain_model(run: LoadedRun, rows: int = 8) -> Any:
    """The run's model as plain transformers weights, for exports: LoRA adapters folded into the base. A QLoRA
    adapter is folded into its base reloaded in full precision (a 4-bit weight cannot hold the sum); it learned
    against the rounded base, so the result differs from the trained model, by an amount measured on ``rows``
    validation examples and logged as a warning."""
    import logging

    from lmtune.evaluation.reference import has_adapters
    from lmtune.strategies.lora import merge_adapter
    from lmtune.strategies.qlora import is_qlora_adapter

    if not has_adapters(run.model):
        return run.model
    adapter = run.run_dir / rundir.MODEL
    if not is_qlora_adapter(adapter):
        return merge_adapter(run.model)
    merged = merge_adapter(load_model(run.task, str(adapter), as_trained=False))
    examples = validation_examples(run, rows)
    logging.getLogger("lmtune").warning(
        "export: %s trained its adapter over a 4-bit base; merged into the full-precision base it gives outputs up "
        "to %.3g away from the trained model's (the base's rounding) on %d validation rows", run.run_dir,
        largest_difference(run, run.model, merged, examples), len(examples))
    return merged


def largest_difference(run: LoadedRun, first: Any, second: Any, examples: list[dict]) -> float:
    """Largest absolute difference between two models' outputs (every logits tensor) over ``examples``."""
    from lmtune.data.collate import model_inputs

    worst = 0.0
    size = run.config.train.eval_batch
    for start in range(0, len(examples), size):
        batch = model_inputs(run.task.collate(examples[start:start + size], run.tokenizer.pad_token_id))
        with torch.inference_mode():
            outputs = first(**batch), second(**batch)
        for name in OUTPUTS:
            a, b = (getattr(out, name, None) for out in outputs)
            if a is not None and b is not None:
                worst = max(worst, float((a.float() - b.float()).abs().max()))
    return worst


def validation_examples(run: LoadedRun, rows: int) -> list[dict]:
    """The first ``rows`` validation examples of the run's own data (else training), encoded as training encoded
    them: what an export is checked on.

    Raises:
        LmtuneError: the data gives no example.
    """
    from lmtune.data.splits import load_tables

    tables = load_tables(run.config.data, run.task)
    table = tables.get("validation") or tables["train"]
    examples = run.task.encode(table.head(rows), run.tokenizer, run.config.data, run.config.train.max_length)
    if not examples:
        raise LmtuneError(f"export: {table.source} gives no example to check the export on")
    return examples[:rows]


def load_model(task: Task, source: str, as_trained: bool = True) -> Any:
    """A model directory (an adapter on its base, or whole weights) or Hub id, in eval mode; ``as_trained``: see
    `load_adapter_model`."""
    if is_adapter_dir(Path(source)):
        model = load_adapter_model(Path(source), lambda base, **options: from_hub_or_local(
            task.build_model, base, **options), as_trained)
    else:
        model = from_hub_or_local(task.build_model, source)
    return model.eval()


def restore_task(cfg: RunConfig, task_state: dict[str, Any], run_dir: Path | None = None) -> Task:
    """The task of a saved run (its labels, options and seeds), for every consumer of a run directory.

    Raises:
        FileCheckError: the saved config names no registered task (``run_dir`` names the file).
    """
    problem = TASKS.check(cfg.task)
    if problem:
        where = Path(run_dir or cfg.output) / rundir.CONFIG
        raise FileCheckError(where, f"not a valid run config (task: {problem})")
    return TASKS.get(cfg.task).from_state(task_state, cfg)


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
    return replace(data, label="\0no-label")  # predictions never read a label column
