"""The one number formatter of tables, status lines, hovers and model cards."""

from __future__ import annotations

from typing import Any

__all__ = ["number"]


def number(value: Any, *, digits: int = 4, fixed: bool = False) -> str:
    """Format a value for people: ``12,345`` for counts, ``0.9620`` (``fixed``) or ``0.962`` otherwise.

    Integers (and floats holding an integer of 1,000 or more) get thousands separators;
    other floats ``digits`` decimals (``fixed``) or significant digits; booleans are
    ``true``/``false``; anything else is ``str(value)``.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.{digits}f}" if fixed else f"{value:.{digits}g}"
    return str(value)
