"""An exported ONNX model on onnxruntime, called like the transformers model it came from.

`OrtModel(path)(**inputs)` takes the batch's tensors (input_ids, attention_mask, token_type_ids) and returns an
object with the graph's outputs as torch tensors under their names (``logits``; QA: ``start_logits`` and
``end_logits``), so the tasks' scoring code and the one evaluation loop run on it unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from lmtune.errors import LmtuneError

ONNX_DIR, GRAPH, INT8_GRAPH, CHECKS = "onnx", "model.onnx", "model.int8.onnx", "onnx.json"
"""Where `lmtune export RUN --format onnx` writes: RUN/onnx/model.onnx (and model.int8.onnx, onnx.json)."""


def onnx_graph(run_dir: str | Path, int8: bool = False) -> Path:
    """The exported graph of a run, or a one-line error saying how to make it."""
    path = Path(run_dir) / ONNX_DIR / (INT8_GRAPH if int8 else GRAPH)
    if not path.is_file():
        how = " --quantize int8" if int8 else ""
        raise LmtuneError(f"{run_dir}: no {ONNX_DIR}/{path.name}; run `lmtune export {run_dir} --format onnx{how}` "
                          "first")
    return path


class OrtModel(torch.nn.Module):
    """An onnxruntime session behind a module's call (CPU; the threads torch would use)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise LmtuneError("--backend onnx needs onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads() or os.cpu_count() or 1
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable files
            raise LmtuneError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0][:200]})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        # the evaluation loop asks a module for its device and precision: one empty parameter answers
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, **inputs: torch.Tensor) -> Any:
        feed = {name: inputs[name].detach().cpu().numpy() for name in self.inputs if name in inputs}
        missing = [name for name in self.inputs if name not in feed]
        if missing:
            raise LmtuneError(f"the ONNX model needs inputs {', '.join(missing)}")
        values = self.session.run(self.outputs, feed)
        return SimpleNamespace(**{name: torch.from_numpy(v) for name, v in zip(self.outputs, values, strict=True)})
