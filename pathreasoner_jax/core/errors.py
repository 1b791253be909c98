"""The expected failures: printed by the console script as one line, exit code 2, no traceback."""
from __future__ import annotations


class UserError(RuntimeError):
    """An expected failure the user can fix (bad input, a missing file or stage)."""


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key and its source."""


def one_line(e, limit: int = 0) -> str:
    """An exception (or a text) for a one-line message: whitespace collapsed; an exception
    with an empty message gives its class name; with `limit`, cut there and marked "…"."""
    text = " ".join(str(e).split()) or (type(e).__name__ if isinstance(e, BaseException) else "")
    return text[:limit] + "…" if limit and len(text) > limit else text
