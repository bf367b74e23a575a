"""LoRA (Hu et al., 2021) through PEFT: low-rank adapters on the attention projections, plus the task head.

The run saves the adapter in PEFT format (small); `lmtune export RUN --merge` writes merged weights that
plain transformers loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune.strategies.base import STRATEGIES, StrategyBase

_TASK_TYPES = {
    "ForSequenceClassification": "SEQ_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForCausalLM": "CAUSAL_LM",
    "ForMaskedLM": "FEATURE_EXTRACTION",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
    "EncoderDecoderModel": "SEQ_2_SEQ_LM",
}
_ATTENTION_NAMES = (("query", "value"), ("q_proj", "v_proj"), ("c_attn",), ("q", "v"))
"""Attention projections by family (BERT, Llama/OPT, GPT-2, T5): the fallback when PEFT has no default."""


@STRATEGIES.register("lora")
@dataclass(frozen=True)
class Lora(StrategyBase):
    r: int = 8
    """Rank of the update matrices."""
    alpha: int = 16
    """Scaling numerator (PEFT's ``lora_alpha``): the update is scaled by alpha / r."""
    dropout: float = 0.1
    """Dropout on the adapter input (PEFT's ``lora_dropout``)."""
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt; None uses PEFT's defaults for the architecture (BERT: query, value;
    GPT-2: c_attn; Llama: q_proj, v_proj)."""
    default_lr = 5e-4

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            task_type=_task_type(model),
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules) if self.target_modules else _default_targets(model),
        )
        return get_peft_model(model, config)

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)  # adapter_config.json + adapter_model.safetensors (+ the head)


def _default_targets(model: torch.nn.Module) -> list[str] | None:
    """PEFT's per-architecture default (None), or for composite models it does not know (BERT2BERT) the
    attention projections found by name."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known

    if getattr(model.config, "model_type", None) in known:
        return None
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for names in _ATTENTION_NAMES:
        if all(n in leaves for n in names):
            return list(names)
    return None


def _task_type(model: torch.nn.Module) -> str:
    name = type(model).__name__
    for suffix, task_type in _TASK_TYPES.items():
        if name.endswith(suffix):
            return task_type
    return "FEATURE_EXTRACTION"


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_adapter_model(path: Path, build_base: callable) -> torch.nn.Module:
    """The base model (built by ``build_base(base_path)``) with the saved adapter and head loaded."""
    from peft import PeftModel

    from lmtune.integrity import read_json_object

    config = read_json_object(Path(path) / "adapter_config.json", "a PEFT adapter config", ["base_model_name_or_path"])
    base_path = config["base_model_name_or_path"]
    return PeftModel.from_pretrained(build_base(base_path), str(path))


def merge_adapter(model: torch.nn.Module) -> torch.nn.Module:
    """Fold the adapter into the base weights: a plain transformers model, same predictions."""
    return model.merge_and_unload()
