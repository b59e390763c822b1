"""Stopping long runs cleanly on Ctrl-C (SIGINT) or SIGTERM.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread
happens to be: inside a weakref callback or ``__del__`` (where the interpreter prints
"Exception ignored" and the run goes on), halfway through a storage write, or somewhere
that leaves the interpreter's "unhandled KeyboardInterrupt" flag set so the process dies
by SIGINT even after the exception was handled. ``stop_at_safe_points`` replaces that:
the first signal only records a request, and :func:`checkpoint` - called between
training batches, client calls, rounds and trials - raises :class:`Interrupted` from
ordinary code. A second signal stops at once (the old behaviour).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "checkpoint", "requested_signal", "stop_at_safe_points"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised at a safe point after Ctrl-C or SIGTERM; ``signum`` names the signal."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_requested: int | None = None  # the first signal received while a guard is active


def requested_signal() -> int | None:
    """The signal that asked the current run to stop, or None."""
    return _requested


def checkpoint() -> None:
    """Raise :class:`Interrupted` if a stop was requested (cheap; call it often)."""
    if _requested is not None:
        raise Interrupted(_requested)


def _handler(on_request: Callable[[int], None] | None) -> Callable:
    def handle(signum: int, frame: object) -> None:
        global _requested
        again = _requested is not None
        if not again:
            _requested = signum
        if on_request is not None:
            on_request(signum)
        if again:  # asked twice: stop now
            raise Interrupted(signum)

    return handle


@contextmanager
def stop_at_safe_points(on_request: Callable[[int], None] | None = None) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM request a stop at the next :func:`checkpoint`.

    ``on_request(signum)`` runs in the handler on each signal (e.g. to forward it to worker
    processes). Only the main thread can install signal handlers; elsewhere, and for a
    signal whose handler a caller already replaced (including an enclosing block of this
    kind), the block leaves that signal alone. The previous handlers are restored on exit.
    """
    global _requested
    defaults = {signal.SIGINT: (signal.default_int_handler, signal.SIG_DFL), signal.SIGTERM: (signal.SIG_DFL,)}
    ours = []
    if threading.current_thread() is threading.main_thread():
        ours = [s for s in SIGNALS if signal.getsignal(s) in defaults[s]]
    if signal.SIGINT not in ours:  # not ours to handle (a thread, a host application, a nested block)
        yield
        return
    _requested = None
    previous = {s: signal.signal(s, _handler(on_request)) for s in ours}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _requested = None
