"""Run configuration: typed schema and YAML + override loading."""

from lmtune.config.load import config_to_dict, load_config
from lmtune.config.schema import (
    AugmentationConfig,
    DataConfig,
    EarlyStoppingConfig,
    RegularizationConfig,
    RunConfig,
    StrategyConfig,
    TrainConfig,
)

__all__ = ["AugmentationConfig", "DataConfig", "EarlyStoppingConfig", "RegularizationConfig", "RunConfig",
           "StrategyConfig", "TrainConfig", "config_to_dict", "load_config"]
