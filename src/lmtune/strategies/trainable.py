"""A task's model made trainable by a strategy: loaded (with the config's dropout), reported (weights the
checkpoint did not have), checked (the strategy leaves something to train), and scaled (layer-wise LR)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from lmtune.errors import LmtuneError
from lmtune.models import from_hub_or_local, loading_report
from lmtune.strategies import anatomy
from lmtune.strategies.base import build_strategy, trainable_parameters

log = logging.getLogger("lmtune")

_DROPOUT_KEYS = {
    "dropout": ("hidden_dropout_prob", "resid_pdrop", "embd_pdrop", "hidden_dropout", "dropout"),
    "attention_dropout": ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"),
    "classifier_dropout": ("classifier_dropout", "summary_first_dropout"),
}
"""regularization.* → the names model configs use for them (BERT, GPT-2, Llama and others)."""


def trainable_model(cfg: Any, task: Any, source: str, bf16: bool) -> tuple[Any, torch.nn.Module, int,
                                                                          dict[int, float]]:
    """(strategy, the model it made trainable, its block count, learning-rate scale per parameter id); ``bf16``:
    the run computes in bf16.

    Raises:
        LmtuneError: the strategy leaves nothing of this model to train, or asks for more blocks than it has.
    """
    strategy = build_strategy(cfg.strategy)
    with loading_report() as report:
        base = _load_base(cfg, task, source, strategy.load_options(bf16))
    if report.summary():
        log.info("model: %s; these train with every strategy", report.summary())
    layers = anatomy.num_layers(base)
    if cfg.train.gradient_checkpointing:
        _checkpoint_blocks(base)
    model = strategy.apply(base, frozenset(report.new + report.resized))
    if trainable_parameters(model)[0] == 0:
        raise LmtuneError(f"strategy.name: {cfg.strategy.name} leaves no parameter of this {cfg.task} model to "
                          f"train ({_why_nothing(base)}); use lora or full instead")
    lr_scales = {id(p): strategy.lr_scale(name, layers) for name, p in model.named_parameters()}
    return strategy, model, layers, lr_scales


def _checkpoint_blocks(model: torch.nn.Module) -> None:
    """Gradient checkpointing, non-reentrant: it needs no input that requires grad, so a frozen base under LoRA
    adapters still gets its adapters' gradients (the reentrant form gave none: transformers#26334)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise LmtuneError(f"train.gradient_checkpointing: {type(model).__name__} does not support it; set it to "
                          "false")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # a cache is useless in training and conflicts with recomputation


def _load_base(cfg: Any, task: Any, source: str, options: dict[str, Any]) -> torch.nn.Module:
    """The model with the configured attention kernel and the strategy's loading ``options``; one without SDPA
    (Gemma-2) falls back to eager, saying so."""
    overrides = {**_dropout_overrides(cfg, source), **options}
    log.info("model: loading %s", source)
    try:
        return from_hub_or_local(task.build_model, source, attn_implementation=cfg.train.attention, **overrides)
    except (LmtuneError, ValueError) as err:
        if cfg.train.attention != "sdpa" or "scaled_dot_product_attention" not in str(err):
            raise
    log.info("model: %s has no SDPA attention kernel; using eager attention (train.attention=eager)", source)
    return from_hub_or_local(task.build_model, source, attn_implementation="eager", **overrides)


def _why_nothing(model: torch.nn.Module) -> str:
    reasons = []
    if not any(name.endswith(".bias") for name, _ in model.named_parameters()):
        reasons.append("it has no bias terms")
    if getattr(model.config, "tie_word_embeddings", False) and not any(
            anatomy.is_head(name) for name, _ in model.named_parameters()):
        reasons.append("its output head is its input embedding matrix (tied), so there is no separate head")
    return " and ".join(reasons) or "no parameter matches what it trains"


def _dropout_overrides(cfg: Any, source: str) -> dict[str, float]:
    """``from_pretrained`` config overrides for the regularization's dropout settings."""
    from transformers import AutoConfig

    settings = cfg.regularization
    wanted = {key: getattr(settings, key) for key in _DROPOUT_KEYS if getattr(settings, key) is not None}
    if not wanted:
        return {}
    model_config = from_hub_or_local(AutoConfig.from_pretrained, source).to_dict()
    return {name: value for key, value in wanted.items() for name in _DROPOUT_KEYS[key] if name in model_config}
