"""The few places lmtune leans on a library's internals, because no public API does the job. Each test fails
loudly when the internal changes, instead of lmtune silently losing the behaviour.

- accelerate: `AcceleratorState._reset_state` (a second `train` in one process may choose another precision)
  and its fp32-output forward wrapper (`ConvertOutputsToFp32`, taken off so bf16 logits stay bf16);
- uvicorn: `Server.handle_exit` and `Server.on_tick`, overridden for the graceful drain of `lmtune serve`;
- bitsandbytes: `Linear4bit.support_avx512bf16_for_cpu`, turned off so a QLoRA base keeps the layout it loaded in.
Optuna's trial and storage internals are no longer used: `Study.tell` and `Trial.set_user_attr` do the job.
"""

from __future__ import annotations

import inspect

import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Start from no accelerator (tests/conftest.py also clears it after every test)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_a_second_accelerator_in_one_process_can_change_precision():
    from accelerate import Accelerator

    from lmtune.pipeline import _release

    first = Accelerator(mixed_precision="bf16", cpu=True)
    assert first.mixed_precision == "bf16"
    _release(first)
    second = Accelerator(mixed_precision="no", cpu=True)  # without the reset accelerate refuses the change
    assert second.mixed_precision == "no"
    _release(second)


def test_bf16_outputs_stay_bf16_once_the_fp32_wrapper_is_taken_off():
    from accelerate import Accelerator
    from transformers import BertConfig, BertForSequenceClassification

    from lmtune.pipeline import _release
    from lmtune.training.loop import _keep_output_precision

    accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    try:
        model = accelerator.prepare(BertForSequenceClassification(BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)))
        ids = torch.tensor([[1, 2, 3]])
        assert model(input_ids=ids).logits.dtype == torch.float32  # accelerate's wrapper upcasts outputs
        _keep_output_precision(model)
        assert model(input_ids=ids).logits.dtype == torch.bfloat16  # unwrapped, still under autocast
    finally:
        _release(accelerator)


def test_uvicorn_server_hooks_that_the_drain_overrides():
    import uvicorn

    from lmtune.serving.server import _DrainingServer

    assert list(inspect.signature(uvicorn.Server.handle_exit).parameters) == ["self", "sig", "frame"]
    assert list(inspect.signature(uvicorn.Server.on_tick).parameters) == ["self", "counter"]
    assert inspect.iscoroutinefunction(uvicorn.Server.on_tick)
    assert _DrainingServer.handle_exit is not uvicorn.Server.handle_exit
    source = inspect.getsource(uvicorn.Server)
    assert "self.handle_exit" in source and "await self.on_tick(" in source  # uvicorn still calls both


def test_a_4bit_layer_keeps_its_layout_through_an_evaluation_and_a_save():
    """bitsandbytes repacks a 4-bit layer on a bf16 CPU at its first forward without gradients (block scales
    rounded to bf16) unless the flag is off; `keep_4bit_layout` turns it off, and a save leaves it as it was."""
    import bitsandbytes as bnb

    from lmtune.strategies.qlora import keep_4bit_layout

    def quantized() -> torch.nn.Module:
        torch.manual_seed(0)
        layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", compress_statistics=True)
        layer.load_state_dict(torch.nn.Linear(64, 64, bias=False).state_dict())
        return layer.to("cpu").eval()  # quantized here

    layer = quantized()
    assert hasattr(layer, "support_avx512bf16_for_cpu")  # the flag lmtune sets exists
    weights, scales = layer.weight.data.clone(), layer.weight.quant_state.absmax.clone()
    keep_4bit_layout(layer)
    x = torch.randn(3, 64)
    with torch.no_grad():
        before = layer(x)
        layer.state_dict()
        after = layer(x)
    assert torch.equal(layer.weight.data, weights) and torch.equal(layer.weight.quant_state.absmax, scales)
    assert torch.equal(before, after)

    from lmtune.training.precision import cpu_has_bf16

    if cpu_has_bf16():  # and without lmtune's setting, the repacking it prevents does happen here
        other = quantized()
        with torch.no_grad():
            other(x)
        assert getattr(other.weight.quant_state, "packing_format_for_cpu", False)
