"""Run configuration: the typed schema and YAML + override reading, checked field by field.

This package is a leaf: it imports no task or strategy. `lmtune.loader.load_config` adds the checks that need
them (is this a task? does it take this strategy's knob?) and is what users call.
"""

from lmtune.config.load import MOVED, config_to_dict, parse_config, read_config, resolve_paths
from lmtune.config.schema import (
    AugmentationConfig,
    DataConfig,
    EarlyStoppingConfig,
    RegularizationConfig,
    RepliesConfig,
    RunConfig,
    StrategyConfig,
    TrainConfig,
)

__all__ = ["MOVED", "AugmentationConfig", "DataConfig", "EarlyStoppingConfig", "RegularizationConfig",
           "RepliesConfig", "RunConfig", "StrategyConfig", "TrainConfig", "config_to_dict", "parse_config",
           "read_config", "resolve_paths"]
