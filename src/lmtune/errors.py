"""User-facing errors: one clear line, exit code 2, no traceback (unless --debug)."""

from __future__ import annotations


class LmtuneError(Exception):
    """A problem with the user's input (config, data, paths) rather than a bug in lmtune.

    The CLI prints ``str(error)`` on one line of stderr and exits with code 2.
    """


class ConfigError(LmtuneError):
    """The config (YAML or overrides) is invalid; carries every problem found at once."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class DataError(LmtuneError):
    """A data file is missing, unreadable or does not have the expected shape."""


class Stopped(LmtuneError):
    """Training stopped on a signal (SIGTERM) after writing a checkpoint; the same command resumes it.

    The CLI exits with 128 + the signal number, as a process killed by it would.
    """

    def __init__(self, signum: int, step: int):
        import signal

        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step} (checkpoint step-{step} "
                         "written); run the same command again to resume")
