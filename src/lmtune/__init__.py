"""lmtune: pretrain, fine-tune, compare strategies, diagnose and explain transformer language models."""

from lmtune.config import RunConfig, load_config
from lmtune.errors import ConfigError, DataError, LmtuneError

__version__ = "0.1.0"


def train(config, overrides=()):
    """Train as ``config`` (a RunConfig, YAML path or dict) says; see `lmtune.runs.train`."""
    from lmtune import runs

    if isinstance(config, dict):
        config = load_config(config, overrides)
        overrides = ()
    return runs.train(config, overrides)


def load(run_dir):
    """Load a finished run for ``.predict([...])`` and ``.evaluate(path)``; see `lmtune.runs.load`."""
    from lmtune import runs

    return runs.load(run_dir)


__all__ = ["ConfigError", "DataError", "LmtuneError", "RunConfig", "load", "load_config", "train"]
