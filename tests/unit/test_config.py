from pathlib import Path

import pytest

from lmtune.errors import ConfigError
from lmtune.loader import load_config

BASE = {"data": {"train": "x.csv"}, "output": "runs/x"}


def test_defaults_and_overrides_are_typed():
    cfg = load_config(BASE, ["train.lr=2e-5", "train.batch_size=8", "data.text=sentence", "train.max_steps=3"])
    assert cfg.train.lr == pytest.approx(2e-5) and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 8 and cfg.data.text == "sentence" and cfg.train.max_steps == 3
    assert cfg.model == "bundled:minilm" and cfg.task == "classification" and cfg.strategy.name == "full"
    assert Path(cfg.output).is_absolute() and Path(cfg.data.train).is_absolute()


def test_a_new_decoder_cannot_be_trained_into_adapters_alone():
    """Its random starting weights are saved nowhere: a LoRA run of it could never be loaded the same again."""
    scratch = {**BASE, "task": "causal_lm", "model": "scratch:tiny"}
    with pytest.raises(ConfigError, match="strategy.name: 'lora' saves adapters only, and scratch:tiny's random "
                                          "starting weights are saved nowhere"):
        load_config(scratch, ["strategy.name=lora"])
    assert load_config(scratch, ["strategy.name=freeze"]).strategy.name == "freeze"  # whole weights are saved


def test_yaml_float_written_without_dot_is_accepted(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {train: a.csv}\ntrain: {lr: 5e-5}\n")
    cfg = load_config(path)
    assert cfg.train.lr == pytest.approx(5e-5)
    assert Path(cfg.output).name == "run"  # defaults to runs/<config name>


def test_every_problem_is_reported_at_once_with_key_value_and_allowed():
    raw = {"task": "clasification", "data": {"train": "a.csv", "lable": "y"},
           "train": {"lr": "fast", "batch_size": 0, "precision": "fp8"}}
    with pytest.raises(ConfigError) as info:
        load_config(raw, ["train.epochs=-1"])
    message = str(info.value)
    assert "data.lable: unknown key (did you mean 'label'?)" in message
    assert "train.lr: 'fast' is not a number" in message
    assert "task: unknown task 'clasification' (did you mean 'classification'?)" in message
    assert "train.batch_size: 0 must be > 0" in message
    assert "train.precision: 'fp8' is not one of auto, bf16, fp16, fp32" in message
    assert "train.epochs: -1.0 must be > 0" in message
    with pytest.raises(ConfigError) as info:
        load_config({"task": "clasification", "data": {"train": "a.csv"},
                     "train": {"batch_size": 0, "precision": "fp8", "epochs": -1}})
    problems = " | ".join(info.value.problems)
    assert "task: unknown task 'clasification' (did you mean 'classification'?)" in problems
    assert "train.batch_size: 0 must be > 0" in problems
    assert "train.precision: 'fp8' is not one of auto, bf16, fp16, fp32" in problems
    assert "train.epochs: -1.0 must be > 0" in problems


def test_a_token_budget_must_hold_the_longest_example():
    with pytest.raises(ConfigError, match=r"train.batch_tokens: 100 must be >= train.max_length \(128\)"):
        load_config({"data": {"train": "a.csv"}, "train": {"batch_tokens": 100}})
    with pytest.raises(ConfigError, match=r"train.batch_tokens: 0 must be > 0"):
        load_config({"data": {"train": "a.csv"}, "train": {"batch_tokens": 0}})
    assert load_config({"data": {"train": "a.csv"}, "train": {"batch_tokens": 128}}).train.batch_tokens == 128


def test_wrong_types_name_the_expected_type():
    with pytest.raises(ConfigError, match=r"train.batch_size: 'big' is not an integer"):
        load_config(BASE, ["train.batch_size=big"])
    with pytest.raises(ConfigError, match=r"train.batch_size: 1.5 is not an integer"):
        load_config(BASE, ["train.batch_size=1.5"])
    with pytest.raises(ConfigError, match=r"train: expected a mapping"):
        load_config(BASE, ["train=3"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(BASE, ["train.lr"])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  train: a.csv\n  text: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+"):
        load_config(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="empty file"):
        load_config(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_missing_train_data_and_bad_split():
    with pytest.raises(ConfigError) as info:
        load_config({"data": {"validation_split": 1.5}})
    assert "data.train: missing" in str(info.value)
    assert "data.validation_split: 1.5 is not in (0, 1)" in str(info.value)


def test_hub_names_are_left_alone():
    cfg = load_config({"data": {"train": "hf:nyu-mll/glue:sst2", "validation": "imdb"}})
    assert cfg.data.train == "hf:nyu-mll/glue:sst2" and cfg.data.validation == "imdb"


def test_runs_saved_by_an_older_lmtune_still_load_and_resume(tmp_path):
    """A run directory from before keys moved (train.weight_decay) or were added (qa.*) stays usable."""
    import yaml

    from lmtune.config import config_to_dict
    from lmtune.rundir import _check_compatible, _upgrade

    cfg = load_config({"data": {"train": "t.csv"}, "output": str(tmp_path)})
    old = config_to_dict(cfg)
    old["train"]["weight_decay"] = old["regularization"].pop("weight_decay")
    for added in ("qa", "summarization", "augmentation"):
        old.pop(added)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    _check_compatible(tmp_path, cfg)  # no error: the same run
    assert load_config(_upgrade(old)) == cfg


def test_runs_from_before_a_setting_keep_the_behaviour_they_were_trained_with(tmp_path):
    """Runs written before early stopping ended with their last weights and scored no training sample: read
    or resumed today, they keep doing so (today's defaults would restore the best weights)."""
    import yaml

    from lmtune.config import config_to_dict
    from lmtune.rundir import prepare_run_dir, read_run

    cfg = load_config({"data": {"train": "t.csv"}, "output": str(tmp_path)})
    old = config_to_dict(cfg)
    old.pop("early_stopping")
    old["train"].pop("eval_train_samples")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "task.json").write_text('{"task": "classification", "labels": [0, 1]}')
    _, _, resumed = prepare_run_dir(cfg)  # the same config resumes it, with its own behaviour
    assert resumed.early_stopping.restore_best is False and resumed.train.eval_train_samples == 0
    _, loaded, _ = read_run(tmp_path, finished=False)
    assert loaded.early_stopping.restore_best is False and loaded.train.eval_train_samples == 0
    new = tmp_path / "new"
    _, _, fresh = prepare_run_dir(load_config({"data": {"train": "t.csv"}, "output": str(new)}))
    assert fresh.early_stopping.restore_best is True and fresh.train.eval_train_samples == 512


@pytest.mark.parametrize(("layers", "ok"), [(0, True), (2, True), (0.25, True), (1.0, False), (2.5, False),
                                             (-1, False)])
def test_strategy_layers_is_a_count_or_a_fraction(layers, ok):
    config = {"data": {"train": "t.csv"}, "strategy": {"name": "freeze", "layers": layers}}
    if ok:
        assert load_config(config).strategy.layers == layers
    else:
        with pytest.raises(ConfigError, match=r"strategy.layers: .* is neither a block count"):
            load_config(config)


def test_freezing_more_blocks_than_the_model_has_is_refused():
    from lmtune.errors import LmtuneError
    from lmtune.strategies.freeze import frozen_count

    assert frozen_count(0.5, 6) == 3 and frozen_count(6, 6) == 6
    with pytest.raises(LmtuneError, match="strategy.layers: 7 blocks to freeze, but the model has 6"):
        frozen_count(7, 6)


def test_mlm_augmentation_needs_a_named_masked_lm():
    with pytest.raises(ConfigError, match="augmentation.mlm_model: required by method 'mlm'"):
        load_config({"data": {"train": "t.csv"}, "augmentation": {"methods": ["mlm"]}})
