"""The user-facing error of fednas: one line naming the file, key or value (CLI exit code 2)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""
