"""The one exception type the data package raises for bad user input."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A data source, file or parameter is not what fednas expects.

    Messages are one line and name the file, key or parameter, the value found and what was
    expected, so the CLI can print them without a traceback.
    """
