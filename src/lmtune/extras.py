"""Optional packages: a feature that needs one checks for it before any work, and a missing one is one line
naming what to install, instead of an ImportError from deep inside a library."""

from __future__ import annotations

import importlib
from pathlib import Path

from lmtune.errors import LmtuneError

_DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000", "asyncpg": "asyncpg",
    "mysqldb": "mysqlclient", "pymysql": "pymysql", "mysqlconnector": "mysql-connector-python",
    "pysqlite": "(part of Python: sqlite3)",
}
"""SQLAlchemy driver name → the PyPI package that provides it."""


def require(module: str, feature: str, package: str | None = None, extra: str | None = None) -> None:
    """Raise a one-line `LmtuneError` unless ``module`` imports.

    Args:
        module: the import name (``captum``).
        feature: what needs it, as the user named it (``--method ig``).
        package: the PyPI name, when it differs from ``module``.
        extra: the ``lmtune[...]`` extra that installs it.
    """
    try:
        importlib.import_module(module)
    except ImportError:
        install = f"pip install '{package or module}'" + (f" (or pip install 'lmtune[{extra}]')" if extra else "")
        raise LmtuneError(f"{feature}: needs the {package or module} package, which is not installed: "
                          f"{install}") from None


def check_storage(url: str, option: str = "--storage") -> None:
    """A storage Optuna can open: ``journal:PATH`` whose folder exists, or a database URL whose dialect
    SQLAlchemy knows and whose driver is installed."""
    if url.startswith("journal:"):
        folder = Path(url.removeprefix("journal:")).absolute().parent
        if not url.removeprefix("journal:") or not folder.is_dir():
            raise LmtuneError(f"{option}: {url!r}: expected journal:PATH with PATH a file in an existing folder")
        return
    require("sqlalchemy", option, "sqlalchemy")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except ArgumentError:
        raise LmtuneError(f"{option}: {url!r} is not a database URL; expected e.g. sqlite:///study.db or "
                          "postgresql://user@host/db") from None
    except NoSuchModuleError:
        raise LmtuneError(f"{option}: unknown database {url.split(':', 1)[0]!r}; expected sqlite, postgresql "
                          "or mysql") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        driver = parsed.get_driver_name()
        package = _DRIVER_PACKAGES.get(driver, driver)
        raise LmtuneError(f"{option}: {parsed.get_backend_name()} through the {driver} driver needs the "
                          f"{package} package, which is not installed ({err.name or err}): "
                          f"pip install '{package}'") from None
