"""QLoRA (Dettmers et al., 2023): the base loaded in 4 bits (NF4, through bitsandbytes) and frozen, LoRA adapters
on every linear layer in bf16/fp32 on top.

The base is quantized as it loads (transformers' bitsandbytes integration; the PyPI wheel ships a CPU library), so
its full-precision weights are never all resident. The run saves the adapter, as LoRA does, and beside it
``quantization.json``: what reloads the base the same way, so `lmtune eval`, `predict` and `serve` see the model that
trained. `lmtune export RUN --merge` folds the adapter into the full-precision base instead, which is what a plain
transformers model can hold; the adapter learned against the rounded base, so the merged model differs from the
trained one by that rounding, and the export says by how much.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmtune.errors import LmtuneError
from lmtune.integrity import FileCheckError, read_json_object
from lmtune.strategies.base import STRATEGIES
from lmtune.strategies.lora import HEADS, Lora

QUANTIZATION = "quantization.json"
"""Beside a QLoRA adapter: the bitsandbytes settings its base was loaded with."""
_KEPT_FULL = (*HEADS, "lm_head", "cls")
"""Modules loaded unquantized: the task heads train in full (a 4-bit weight has no gradient; BERT's masked-LM head
is ``cls``, and a checkpoint without one gives it new weights, which bitsandbytes cannot quantize after loading)
and the output projection is where rounding costs most (transformers keeps it too when it finds it)."""


# On a CPU with AVX512-BF16, importing bitsandbytes first tries to fetch a faster 4-bit kernel from the Hub (the
# `kernels` package) and warns when it cannot; its own CPU kernel then runs, which is all the user needs to know.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@STRATEGIES.register("qlora")
@dataclass(frozen=True)
class Qlora(Lora):
    target_modules: tuple[str, ...] | None = ("all-linear",)
    """Module names to adapt; the QLoRA default is every linear layer of the blocks (PEFT's ``all-linear``)."""
    quant_type: str = "nf4"
    """4-bit data type: ``nf4`` (normal float, for normally distributed weights) or ``fp4``."""
    double_quant: bool = True
    """Quantize the quantization constants too (about 0.4 bit per weight saved)."""

    def load_options(self, bf16: bool) -> dict[str, Any]:
        """The base loads quantized; the dequantized weights multiply in bf16 where the run computes in it."""
        from transformers import BitsAndBytesConfig

        return quantized_loading(BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.quant_type, bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
            llm_int8_skip_modules=list(_KEPT_FULL)))

    def apply(self, model: torch.nn.Module, new: frozenset[str] = frozenset()) -> torch.nn.Module:
        from peft import prepare_model_for_kbit_training

        if getattr(model.config, "quantization_config", None) is None:  # BERT2BERT is built, not loaded, whole
            raise LmtuneError(f"strategy.name: qlora cannot load this {type(model).__name__} in 4 bits "
                              "(transformers quantizes models it loads whole); use lora instead")
        # norms and other small weights to fp32; checkpointing stays lmtune's own setting
        model = prepare_model_for_kbit_training(keep_4bit_layout(model), use_gradient_checkpointing=False)
        return super().apply(model, new)

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        super().save(model, out_dir)
        record = model.config.quantization_config.to_dict()  # transformers' own form, read back by from_dict
        (Path(out_dir) / QUANTIZATION).write_text(json.dumps(record, indent=2) + "\n")


def keep_4bit_layout(model: torch.nn.Module) -> torch.nn.Module:
    """Keep every 4-bit layer in the layout it loaded in.

    On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer for speed at its first forward pass without
    gradients (an evaluation), rounding the block scales to bf16 on the way, and converts it back, re-quantizing
    the scales, whenever the model's state is saved. In a training run that evaluates and checkpoints, the frozen
    base drifted from the one a reload gives (validation loss 5.137545 logged, 5.137562 after reloading the same
    run). Its flag for this is an attribute, not an API: `tests/unit/test_upstream_internals.py` fails if it goes
    away.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def quantized_loading(config: Any) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load a base quantized as ``config`` (a BitsAndBytesConfig) says.

    Raises:
        LmtuneError: bitsandbytes is not installed.
    """
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LmtuneError("strategy.name: qlora needs bitsandbytes (pip install 'lmtune[qlora]'), which is not "
                          "installed") from None
    return {"quantization_config": config, "device_map": {"": "cuda" if torch.cuda.is_available() else "cpu"}}


def is_qlora_adapter(adapter_dir: Path) -> bool:
    """Whether a saved adapter was trained over a 4-bit base (it has the quantization record)."""
    return (Path(adapter_dir) / QUANTIZATION).is_file()


def saved_quantization(adapter_dir: Path) -> dict[str, Any]:
    """The ``from_pretrained`` arguments that reload a QLoRA adapter's base as it trained; {} for a LoRA adapter."""
    from transformers import BitsAndBytesConfig

    if not is_qlora_adapter(adapter_dir):
        return {}
    path = Path(adapter_dir) / QUANTIZATION
    record = read_json_object(path, "a QLoRA quantization record (transformers' BitsAndBytesConfig)",
                              ["load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype"])
    try:
        config = BitsAndBytesConfig.from_dict(record)
    except (TypeError, ValueError) as err:
        raise FileCheckError(path, f"not a valid BitsAndBytesConfig ({str(err).splitlines()[0]}); the file is "
                                   "damaged") from None
    return quantized_loading(config)
