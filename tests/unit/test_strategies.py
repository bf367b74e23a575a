"""Every strategy on a tiny BERT: which parameters train, at what learning rate, what is saved."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from lmtune.config import StrategyConfig
from lmtune.strategies import anatomy, build_strategy, trainable_parameters
from lmtune.training.optim import build_optimizer


def _tiny() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config)


def _trainable(strategy: StrategyConfig) -> set[str]:
    model = build_strategy(strategy).apply(_tiny())
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _all() -> set[str]:
    return {name for name, _ in _tiny().named_parameters()}


def test_full_trains_everything():
    assert _trainable(StrategyConfig("full")) == _all()


def test_freeze_keeps_embeddings_and_bottom_blocks_fixed_with_dropout_off():
    names = _trainable(StrategyConfig("freeze", layers=0.5))
    assert not any(n.startswith("bert.embeddings.") for n in names)
    assert not any(".layer.0." in n or ".layer.1." in n for n in names)
    assert any(".layer.2." in n for n in names) and "classifier.weight" in names
    model = build_strategy(StrategyConfig("freeze", layers=3)).apply(_tiny())
    dropouts = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert dropouts["bert.embeddings.dropout"] == 0 and dropouts["bert.encoder.layer.2.output.dropout"] == 0
    assert dropouts["bert.encoder.layer.3.output.dropout"] == 0.1 and dropouts["dropout"] == 0.1


def test_head_trains_only_classifier_and_pooler():
    assert _trainable(StrategyConfig("head")) == {
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}


def test_bitfit_trains_biases_and_head():
    names = _trainable(StrategyConfig("bitfit"))
    assert all(n.endswith(".bias") or "classifier" in n or "pooler" in n for n in names)
    assert "bert.encoder.layer.0.attention.self.query.bias" in names
    assert "bert.encoder.layer.0.attention.self.query.weight" not in names


def test_lora_adds_small_adapters_and_trains_the_head():
    model = build_strategy(StrategyConfig("lora", r=2)).apply(_tiny())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n and "query" in n for n in names) and any("lora_B" in n and "value" in n for n in names)
    assert any("classifier" in n for n in names)
    assert not any("key" in n for n in names)
    trainable, total = trainable_parameters(model)
    assert trainable < 0.1 * total


def test_llrd_rates_shrink_geometrically_downwards():
    strategy = build_strategy(StrategyConfig("llrd", decay=0.5))
    model = strategy.apply(_tiny())
    layers = anatomy.num_layers(model)
    assert strategy.lr_scale("classifier.weight", layers) == 1.0
    assert strategy.lr_scale("bert.encoder.layer.3.output.dense.weight", layers) == 0.5
    assert strategy.lr_scale("bert.encoder.layer.0.output.dense.weight", layers) == 0.5**4
    assert strategy.lr_scale("bert.embeddings.word_embeddings.weight", layers) == 0.5**5
    scales = {id(p): strategy.lr_scale(n, layers) for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, 1.0, lr_scales=scales)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [0.5**k for k in range(5, -1, -1)]


def test_freeze_with_decay_combines():
    strategy = build_strategy(StrategyConfig("freeze", layers=2, decay=0.5))
    assert strategy.lr_scale("bert.encoder.layer.2.output.dense.weight", 4) == 0.25


@pytest.mark.parametrize(("name", "lr"), [("full", 5e-5), ("freeze", 1e-4), ("head", 1e-3), ("lora", 5e-4),
                                          ("bitfit", 1e-3), ("llrd", 1e-4)])
def test_each_strategy_has_its_own_default_learning_rate(name, lr):
    from lmtune.loader import load_config

    assert load_config({"data": {"train": "a.csv"}, "strategy": {"name": name}}).train.lr == lr
    assert load_config({"data": {"train": "a.csv"}, "strategy": {"name": name}, "train": {"lr": 0.1}}).train.lr == 0.1


def test_qlora_without_bitsandbytes_is_refused_in_one_line(monkeypatch):
    import sys

    from lmtune.errors import LmtuneError

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an interpreter without the package gives
    expected = r"^strategy.name: qlora needs bitsandbytes \(pip install 'lmtune\[qlora\]'\)"
    with pytest.raises(LmtuneError, match=expected):
        build_strategy(StrategyConfig(name="qlora")).load_options(bf16=False)


def test_qlora_knobs_are_checked_and_only_qlora_takes_them():
    from lmtune.errors import LmtuneError
    from lmtune.loader import load_config

    with pytest.raises(LmtuneError, match="strategy.quant_type: 'int4' is not one of nf4, fp4"):
        load_config({"data": {"train": "a.csv"}, "strategy": {"name": "qlora", "quant_type": "int4"}})
    with pytest.raises(LmtuneError, match="strategy.quant_type"):
        load_config({"data": {"train": "a.csv"}, "strategy": {"name": "lora", "quant_type": "nf4"}})
    options = build_strategy(StrategyConfig(name="qlora", quant_type="fp4", double_quant=False)).load_options(True)
    config = options["quantization_config"]
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant, config.bnb_4bit_compute_dtype) == (
        "fp4", False, torch.bfloat16)
    assert set(config.llm_int8_skip_modules) >= {"lm_head", "classifier", "score"}  # heads stay trainable


def test_a_damaged_quantization_record_is_named(tmp_path):
    from lmtune.integrity import FileCheckError
    from lmtune.strategies.qlora import QUANTIZATION, saved_quantization

    assert saved_quantization(tmp_path) == {}  # a plain LoRA adapter
    (tmp_path / QUANTIZATION).write_text('{"load_in_4bit": true}')
    with pytest.raises(FileCheckError, match="lacks 'bnb_4bit_quant_type', 'bnb_4bit_compute_dtype'"):
        saved_quantization(tmp_path)
    (tmp_path / QUANTIZATION).write_text("{not json")
    with pytest.raises(FileCheckError, match=str(tmp_path / QUANTIZATION)):
        saved_quantization(tmp_path)
