"""The ``lmtune`` command line."""
