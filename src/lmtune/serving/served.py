"""The runs a server holds: loaded once, named, their shared weights stored once, and the work each kind of
request does on them (a batch at a time, in the server's compute lanes).

Tokenizers have one owner each, by construction: a fast tokenizer mutated by one thread (its truncation
settings) while another uses it fails with "Already borrowed" (tokenizers#537). The model thread owns the
run's tokenizer; the request side (the event loop and the request threads, which take turns through a lock)
owns `request_tokenizer`, a copy; the explain lane owns the tokenizer of its own copy of the run.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lmtune.data import Table
from lmtune.data.collate import ADAPTER_INDEX
from lmtune.errors import LmtuneError
from lmtune.evaluation import score_examples
from lmtune.generation import Job, generate_batch
from lmtune.inference import LoadedRun, load
from lmtune.serving.adapters import AdapterGroup, AdapterRouter, group_key, join, own_copy

log = logging.getLogger("lmtune")


class OwnedTokenizer:
    """A tokenizer copy that one side of the server owns; its threads take turns with `borrow`."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self) -> Iterator[Any]:
        with self._lock:
            yield self._tokenizer


@dataclass
class ServedRun:
    name: str
    loaded: LoadedRun
    """The model thread's: its model and tokenizer are used there only."""
    backend: str = "torch"
    """What computes: torch, or onnx / onnx-int8 (onnxruntime on the exported graph)."""
    group: AdapterGroup | None = None
    """The runs served from one base with this one (its predictions queue and batch with theirs), if any."""
    adapter: str | None = None
    """This run's adapter in the group's model."""
    request_tokenizer: OwnedTokenizer = field(init=False)
    """The request side's copy of the tokenizer (checking and encoding inputs before they queue)."""
    explainers: dict[tuple[str, int], Any] = field(default_factory=dict)
    """Per (method, IG steps), built on first use in the explain lane (they share that lane's run)."""
    _explained: LoadedRun | None = None
    """The explain lane's own copy of the run (explaining switches attention kernels and hooks the embeddings,
    which must not happen under a prediction running meanwhile); made at the first explanation."""
    model_lane: Executor | None = None
    """The model thread: the explain copy is taken there, between batches, never while a batch has swapped the
    weights for their bf16 copies (the server sets it; None: copy in the calling thread)."""

    def __post_init__(self) -> None:
        self.request_tokenizer = OwnedTokenizer(self.loaded.tokenizer)

    @property
    def generates(self) -> bool:
        return self.loaded.task.capabilities.generates

    @property
    def explains(self) -> bool:
        # attributions take gradients through the torch model; an ONNX graph only answers predictions
        return self.loaded.task.capabilities.explains and self.backend == "torch"

    def info(self) -> dict[str, Any]:
        task, config = self.loaded.task, self.loaded.config
        out: dict[str, Any] = {
            "name": self.name, "task": task.name, "run_dir": str(self.loaded.run_dir), "model": config.model,
            "strategy": config.strategy.name, "backend": self.backend,
            "input_fields": task.accepted_fields(config.data), "max_length": config.train.max_length,
            "endpoints": (["/v1/predict", "/v1/completions", "/v1/chat/completions"] if self.generates
                          else ["/v1/predict"]) + (["/v1/explain"] if self.explains else []),
        }
        if task.capabilities.class_labels:
            out["labels"] = task.label_names()
        if self.group is not None:
            out["adapter_group"] = self.group.runs
        return out

    def queue(self, kind: str) -> str:
        """The name of the queue this run's ``kind`` of work waits in: its group's for predictions."""
        return self.group.name if self.group is not None and kind == "predict" else self.name

    # ---- work, in the worker thread -------------------------------------------------------------------

    def generate(self, payloads: list[list[Job]], feed: Any) -> list[Any]:
        """Requests' jobs decoded together, continuously: requests queued meanwhile join between steps (a
        `lmtune.serving.batcher.Feed`), and each request is answered with its jobs as soon as they end."""
        request_of: dict[int, list[Job]] = {}
        left: dict[int, int] = {}

        def register(requests: list[list[Job]]) -> list[Job]:
            for request in requests:
                left[id(request)] = len(request)
                request_of.update((id(job), request) for job in request)
            return [job for request in requests for job in request]

        def finished(job: Job) -> None:
            request = request_of.pop(id(job))
            left[id(request)] -= 1
            if not left[id(request)]:
                del left[id(request)]
                feed.done(request, request)

        generate_batch(self.loaded.model, self.loaded.tokenizer, register(payloads),
                       admit=lambda room: register(feed.admit(room)), finished=finished, max_rows=feed.room)
        return payloads

    def explain(self, payloads: list[Any]) -> list[Any]:
        out = []
        for request in payloads:
            try:
                out.append(self._explain(request))
            except Exception as err:  # noqa: BLE001 - handed back to the request's own future
                out.append(err)
        return out

    def _explain(self, request: Any) -> dict[str, Any]:
        from lmtune.explanation.core import Explainer

        key = (request.method, request.steps)
        explainer = self.explainers.get(key)
        if explainer is None:
            if self._explained is None:
                lane = self.model_lane
                self._explained = lane.submit(self._copy).result() if lane else self._copy()
            explainer = Explainer(self._explained, (request.method,), steps=request.steps, checks=False,
                                  compare_base=False)
            self.explainers[key] = explainer
        results = explainer.explain_all(request.text, request.text_pair, request.target)
        return {"model": self.name, "method": request.method,
                "explanations": [_explanation(e, request.method, encoder=not self.generates) for e in results]}


    def _copy(self) -> LoadedRun:
        """The run with a model and tokenizer of its own (and its own bf16 cache); a grouped run's model holds its
        own adapter only."""
        model = own_copy(self.loaded.model, self.adapter) if self.group else copy.deepcopy(self.loaded.model)
        return replace(self.loaded, model=model, tokenizer=copy.deepcopy(self.loaded.tokenizer), bf16_copies={})


Prediction = tuple[ServedRun, list[dict], int]
"""A /v1/predict request's work: the run it is for, its encoded examples and its number of input rows."""


def predict(payloads: list[Prediction], model: Any, batch_size: int, bf16_copies: dict) -> list[Any]:
    """Predictions for several requests at once (to one run, or to the runs of one adapter group through
    ``model``, its router), one list of rows per request."""
    grouped = isinstance(model, AdapterRouter)
    examples = []
    for served, request, _ in payloads:
        index = served.group.runs.index(served.name) if grouped else None
        examples += [{**example, ADAPTER_INDEX: index} for example in request] if grouped else request
    run = payloads[0][0].loaded  # a group's runs share the task, precision and padding
    try:
        records = score_examples(model, examples, run.task, batch_size, run.tokenizer.pad_token_id,
                                 autocast=run.autocast(), purpose="predict", bf16_cache=bf16_copies)
    except Exception:  # noqa: BLE001 - find the one request that breaks the batch; the others still get answers
        if len(payloads) == 1:
            raise
        return [_one(predict, payload, model, batch_size, bf16_copies) for payload in payloads]
    out, start = [], 0
    for served, request, rows in payloads:
        out.append(served.loaded.task.predictions(records[start:start + len(request)], request, rows))
        start += len(request)
    return out


def _one(work: Any, *args: Any) -> Any:
    """``work`` on one request alone: its result, or the exception that fails only that request."""
    try:
        return work([args[0]], *args[1:])[0]
    except Exception as err:  # noqa: BLE001 - handed back to the request's own future
        return err


def _explanation(e: Any, method: str, encoder: bool) -> dict[str, Any]:
    out = {"text": e.text, "predicted": e.predicted, "target": e.target, "probability": round(e.probability, 6),
           "tokens": e.tokens, "words": e.words,
           "token_attributions": [round(float(s), 6) for s in e.attributions[method]],
           "word_attributions": [round(float(s), 6) for s in e.word_attributions(method)]}
    if encoder:  # how much each token feeds the first ([CLS]) position through all layers
        out["rollout"] = [round(float(s), 6) for s in e.rollout[0].tolist()]
    return out


def names_and_paths(specs: list[str]) -> list[tuple[str, Path]]:
    """``RUN`` or ``NAME=RUN`` → (name, path); the name defaults to the directory's name and must be unique."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name or spec, spec
        if not name or any(name == n for n, _ in out):
            raise LmtuneError(f"serve: two runs are named {name!r}; name them with NAME=RUN")
        out.append((name, Path(path)))
    if not out:
        raise LmtuneError("serve: no run given; pass one or more run directories")
    return out


def load_runs(specs: list[str], backend: str = "torch") -> tuple[list[ServedRun], int]:
    """Load every run (on ``backend``: torch, or onnx / onnx-int8 for the graphs `lmtune export --format onnx`
    wrote). LoRA runs of one base that score inputs are loaded into one model (`lmtune.serving.adapters`); other
    weights identical across runs (a base under generating LoRA runs, frozen layers) are kept once in memory.
    Returns the runs and the bytes that sharing saved."""
    pairs = names_and_paths(specs)
    keys = {name: group_key(path, backend) for name, path in pairs}
    firsts: dict[tuple, ServedRun] = {}
    served = []
    for name, path in pairs:
        key = keys[name]
        if key is None or list(keys.values()).count(key) < 2:
            served.append(ServedRun(name, load(path, backend), backend))
        elif key not in firsts:
            loaded = load(path, backend)
            group = AdapterGroup(f"adapters:{name}", AdapterRouter(loaded.model, ["default"]), [name])
            firsts[key] = ServedRun(name, loaded, backend, group, "default")
            served.append(firsts[key])
        else:
            first = firsts[key]
            adapter = f"adapter{len(first.group.runs)}"
            served.append(ServedRun(name, join(first.loaded, path, adapter), backend, first.group, adapter))
            first.group.runs.append(name)
            first.group.router.adapters.append(adapter)
    distinct = list({id(s.loaded.model): s.loaded.model for s in served}.values())
    saved = share_weights(distinct)
    for first in firsts.values():
        log.info("serve: %s served from one copy of their base", ", ".join(first.group.runs))
    if saved:
        log.info("serve: %d MB of weights are shared between runs", saved // 2**20)
    return served, saved


def share_weights(models: list[torch.nn.Module]) -> int:
    """Make tensors that are equal across models one tensor in memory; returns the bytes saved.

    Tensors are matched by name (PEFT's wrapping prefixes removed), shape, dtype and value, so only weights
    that are truly the same are shared: a LoRA run's base weights, never its adapters or heads.
    """
    seen: dict[tuple[str, tuple[int, ...], torch.dtype], list[torch.Tensor]] = {}
    saved = 0
    for model in models:
        for module_name, module in model.named_modules():
            for name, param in list(module.named_parameters(recurse=False)):
                key = (_plain_name(f"{module_name}.{name}"), tuple(param.shape), param.dtype)
                twin = next((t for t in seen.get(key, []) if torch.equal(t, param.data)), None)
                if twin is None:
                    seen.setdefault(key, []).append(param.data)
                elif twin.data_ptr() != param.data.data_ptr():
                    param.data = twin
                    saved += param.numel() * param.element_size()
    return saved


def _plain_name(name: str) -> str:
    for prefix in ("base_model.model.",):
        name = name.removeprefix(prefix)
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def table_of(rows: list[dict[str, str]]) -> Table:
    """Request inputs (already in the run's column names) as a table, as `lmtune predict` reads a file."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return Table("request", columns, rows)
