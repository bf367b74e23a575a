"""`lmtune export RUN --format onnx`: the run's model as an ONNX graph, checked on onnxruntime before it is kept.

The model (LoRA merged) is traced in fp32 with dynamic batch and sequence axes, then run on onnxruntime over real
validation rows of the run (its own data, encoded as training encoded them); the largest absolute difference of
any output (logits; QA: start and end logits) against PyTorch fp32 must be within ``TOLERANCE``, or nothing is
kept. With ``quantize="int8"`` a dynamically quantized copy is written as well, and the task's metrics on those
rows are stated for both, so the cost of int8 is a number, not a guess. ``RUN/onnx/onnx.json`` records the checks;
`lmtune predict RUN --backend onnx` runs the graph.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from lmtune.data.collate import model_inputs
from lmtune.errors import LmtuneError
from lmtune.evaluation import evaluate_examples
from lmtune.inference import OUTPUTS, LoadedRun, largest_difference, load, plain_model, validation_examples
from lmtune.integrity import staged_folder
from lmtune.onnx_model import CHECKS, GRAPH, INT8_GRAPH, ONNX_DIR, OrtModel

TOLERANCE = 1e-4
"""Largest absolute output difference (fp32 PyTorch vs fp32 onnxruntime) an export may have."""


def export_onnx(run_dir: str | Path, out_dir: str | Path | None = None, quantize: str | None = None,
                rows: int = 64) -> dict[str, Any]:
    """Export, check and (optionally) quantize; returns the checks (also written to ``onnx.json``).

    Raises:
        LmtuneError: an encoder-decoder model, no validation rows, or outputs that differ beyond ``TOLERANCE``.
    """
    if quantize not in (None, "int8"):
        raise LmtuneError(f"--quantize: ONNX takes int8, not {quantize!r} (f16 and q8_0 are GGUF's)")
    run = load(run_dir)
    target = Path(out_dir) if out_dir else run.run_dir / ONNX_DIR
    model = _fp32_model(run)
    examples = validation_examples(run, rows)
    batch = model_inputs(run.task.collate(examples, run.tokenizer.pad_token_id))
    names = _output_names(model, batch)
    with staged_folder(target) as tmp:
        _trace(model, batch, names, tmp / GRAPH)
        checks = {"outputs": names, "rows": len(examples),
                  "max_abs_diff": largest_difference(run, model, OrtModel(tmp / GRAPH), examples),
                  "tolerance": TOLERANCE}
        if checks["max_abs_diff"] > TOLERANCE:
            raise LmtuneError(f"export: onnxruntime's outputs differ from PyTorch's by {checks['max_abs_diff']:.2e} "
                              f"(more than {TOLERANCE:g}) on {len(examples)} validation rows; nothing was written")
        if quantize == "int8":
            checks["int8"] = _quantize(run, model, tmp, examples)
        run.tokenizer.save_pretrained(tmp)
        (tmp / CHECKS).write_text(json.dumps(checks, indent=2))
    return {**checks, "out": str(target)}


def _fp32_model(run: LoadedRun) -> torch.nn.Module:
    model = plain_model(run)
    if getattr(model.config, "is_encoder_decoder", False):
        raise LmtuneError(f"export: {run.run_dir} is an encoder-decoder model; ONNX export takes encoders (one "
                          "forward pass per input) and decoders")
    # SDPA's mask handling is traced for the example's shapes; eager attention traces for any batch and length
    model.set_attn_implementation("eager")
    return model.float().eval()


def _output_names(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[str]:
    with torch.inference_mode():
        out = model(**batch)
    return [name for name in OUTPUTS if getattr(out, name, None) is not None]


class _Outputs(torch.nn.Module):
    """The model with tensor inputs in a fixed order and a tuple of the named outputs (what tracing needs)."""

    def __init__(self, model: torch.nn.Module, inputs: list[str], outputs: list[str]):
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.inputs, tensors, strict=True)), use_cache=False)
        return tuple(getattr(out, name) for name in self.outputs)


def _trace(model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: list[str], path: Path) -> None:
    inputs = list(batch)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*inputs, *outputs]}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes about Python control flow on shapes
        # in eval mode: the exporter restores the wrapper's mode afterwards, and a new module starts in training
        torch.onnx.export(_Outputs(model, inputs, outputs).eval(), tuple(batch[name] for name in inputs), str(path),
                          input_names=inputs, output_names=outputs, dynamic_axes=axes, opset_version=17,
                          dynamo=False)


def _quantize(run: LoadedRun, model: torch.nn.Module, folder: Path, examples: list[dict]) -> dict[str, Any]:
    """int8 weights (dynamic quantization) and the task's metrics on the rows: PyTorch fp32 vs onnxruntime int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a line per tensor it leaves in fp32, and advice
    try:
        # per output channel: one scale per row keeps MiniLM's accuracy (one per matrix lost 6 points of 64 rows)
        quantize_dynamic(str(folder / GRAPH), str(folder / INT8_GRAPH), weight_type=QuantType.QInt8,
                         per_channel=True)
    finally:
        root.setLevel(level)
    if run.task.capabilities.reference:  # its metrics need the starting model's scores: the logits stand for it
        return {"graph": INT8_GRAPH}
    pad = run.tokenizer.pad_token_id
    torch_metrics = evaluate_examples(model, examples, run.task, run.config.train.eval_batch, pad)
    int8_metrics = evaluate_examples(OrtModel(folder / INT8_GRAPH), examples, run.task, run.config.train.eval_batch,
                                     pad)
    shown = [m.name for m in run.task.metrics if isinstance(torch_metrics.get(m.name), (int, float))]
    return {"graph": INT8_GRAPH, "torch": {k: torch_metrics[k] for k in shown},
            "int8": {k: int8_metrics[k] for k in shown}}
