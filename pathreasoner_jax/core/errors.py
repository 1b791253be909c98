"""The expected failures: printed by the console script as one line, exit code 2, no traceback."""
from __future__ import annotations


class UserError(RuntimeError):
    """An expected failure the user can fix (bad input, a missing file or stage)."""


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key and its source."""
