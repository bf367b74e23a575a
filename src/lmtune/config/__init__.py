"""Run configuration: typed schema and YAML + override loading."""

from lmtune.config.load import config_to_dict, load_config
from lmtune.config.schema import (
    DataConfig,
    EarlyStoppingConfig,
    RegularizationConfig,
    RunConfig,
    StrategyConfig,
    TrainConfig,
)

__all__ = ["DataConfig", "EarlyStoppingConfig", "RegularizationConfig", "RunConfig", "StrategyConfig",
           "TrainConfig", "config_to_dict", "load_config"]
