"""Polling for a condition that another process brings about."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_for"]


def wait_for(predicate: Callable[[], bool], timeout: float = 180.0, poll: float = 0.2) -> None:
    """Return once ``predicate()`` is true; raise ``TimeoutError`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll)
    raise TimeoutError(f"condition not reached in {timeout:g} s")
