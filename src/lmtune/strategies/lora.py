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
    "ForCausalLM": "CAUSAL_LM",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
    "EncoderDecoderModel": "SEQ_2_SEQ_LM",
}
HEADS = ("classifier", "score", "qa_outputs")
"""Task heads of encoder models, trained in full and saved with the adapter. PEFT's SEQ_CLS and QUESTION_ANS
wrappers would do this too, but their forward drops ``token_type_ids`` (PEFT 0.21), so a sentence-pair or QA
run trained and evaluated as if every token were in the first segment, and its merged model disagreed with it:
such models get PEFT's generic wrapper, which passes every input through."""
_ATTENTION_NAMES = (("query", "value"), ("q_proj", "v_proj"), ("c_attn",), ("q", "v"), ("qkv_proj",),
                    ("query_key_value",), ("Wqkv",))
"""Attention projections by family (BERT, Llama/OPT, GPT-2, T5; fused query-key-value: Phi-3, GPT-NeoX, MPT):
the fallback when PEFT has no default for the architecture."""


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
    saves_base = False

    def apply(self, model: torch.nn.Module, new: frozenset[str] = frozenset()) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        targets = _targets(self.target_modules) if self.target_modules else _default_targets(model)
        config = LoraConfig(
            task_type=_task_type(model),
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            # GPT-2's projections are Conv1D, whose weight is stored transposed
            fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in model.modules()),
            # weights that start random (a new head, BERT2BERT's cross-attention) train in full and are saved
            # with the adapter; PEFT's task types cover only their own heads
            modules_to_save=sorted(set(_new_modules(model, new)) | set(_heads(model))) or None,
        )
        return get_peft_model(model, config)

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)  # adapter_config.json + adapter_model.safetensors (+ the head)


def _targets(names: tuple[str, ...]) -> list[str] | str:
    """The configured module names; PEFT takes its every-linear-layer shorthand as a bare string."""
    return "all-linear" if list(names) == ["all-linear"] else list(names)


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


def _heads(model: torch.nn.Module) -> list[str]:
    children = {name for name, _ in model.named_children()}
    return [name for name in HEADS if name in children] if _task_type(model) is None else []


def _new_modules(model: torch.nn.Module, new: frozenset[str]) -> list[str]:
    """The smallest set of whole modules holding every ``new`` parameter, by their full names: the highest
    module all of whose parameters are new (a head, a cross-attention block), else the parameter's own."""
    if not new:
        return []
    params = {name for name, _ in model.named_parameters()}
    chosen: set[str] = set()
    for name in sorted(new & params):
        parts = name.split(".")[:-1]
        best = ".".join(parts)
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth]) + "."
            if all(p in new for p in params if p.startswith(prefix)):
                best = prefix[:-1]
                break
        chosen.add(best)
    return sorted(chosen)


def _task_type(model: torch.nn.Module) -> str | None:
    """PEFT's task type for generating models (their wrappers add generation); None: the generic wrapper."""
    name = type(model).__name__
    for suffix, task_type in _TASK_TYPES.items():
        if name.endswith(suffix):
            return task_type
    return None


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_adapter_model(path: Path, build_base: callable, as_trained: bool = True) -> torch.nn.Module:
    """The base model (built by ``build_base(base_path, **from_pretrained_options)``) with the saved adapter and
    head loaded. ``as_trained``: a QLoRA adapter's base loads quantized as in training; False loads it in full
    precision (what merging into plain weights needs)."""
    from peft import PeftModel

    from lmtune.strategies.qlora import keep_4bit_layout, saved_quantization

    options = saved_quantization(path) if as_trained else {}
    base = build_base(adapter_base(path), **options)
    return PeftModel.from_pretrained(keep_4bit_layout(base) if options else base, str(path))


def adapter_base(path: Path) -> str:
    """The base model a saved adapter was trained on (its adapter_config's ``base_model_name_or_path``)."""
    from lmtune.integrity import read_json_object

    config = read_json_object(Path(path) / "adapter_config.json", "a PEFT adapter config", ["base_model_name_or_path"])
    return str(config["base_model_name_or_path"])


def merge_adapter(model: torch.nn.Module) -> torch.nn.Module:
    """Fold the adapter into the base weights: a plain transformers model, same predictions."""
    return model.merge_and_unload()
