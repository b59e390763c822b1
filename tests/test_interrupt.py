"""Ctrl-C and SIGTERM become a stop request honoured at safe points (fednas._interrupt)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from fednas._interrupt import Interrupted, checkpoint, requested_signal, stop_at_safe_points


def _raise_signal(signum: int) -> None:
    os.kill(os.getpid(), signum)
    # the handler runs at the next bytecode boundary of the main thread; give it some
    for _ in range(1000):
        pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_is_a_request_honoured_at_the_next_checkpoint(signum: int) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stop_at_safe_points():
        checkpoint()  # nothing requested yet
        _raise_signal(signum)  # no exception here, in the middle of "work"
        assert requested_signal() == signum
        with pytest.raises(Interrupted) as info:
            checkpoint()
        assert info.value.signum == signum and isinstance(info.value, KeyboardInterrupt)
    assert requested_signal() is None
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_second_signal_stops_at_once() -> None:
    with stop_at_safe_points():
        _raise_signal(signal.SIGINT)
        with pytest.raises(Interrupted):
            _raise_signal(signal.SIGINT)


def test_on_request_sees_every_signal() -> None:
    seen: list[int] = []
    with stop_at_safe_points(seen.append):
        _raise_signal(signal.SIGTERM)
        with pytest.raises(Interrupted):
            _raise_signal(signal.SIGINT)
    assert seen == [signal.SIGTERM, signal.SIGINT]


def test_leaves_signals_alone_outside_the_main_thread_and_under_a_host_handler() -> None:
    installed: list[object] = []

    def in_thread() -> None:
        with stop_at_safe_points():
            installed.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert installed == [signal.default_int_handler]

    calls: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
    try:
        with stop_at_safe_points():
            _raise_signal(signal.SIGINT)
            checkpoint()  # the host application's handler got it, not us
        assert calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_nested_blocks_share_the_outer_request() -> None:
    with stop_at_safe_points():
        with stop_at_safe_points():
            _raise_signal(signal.SIGINT)
        assert requested_signal() == signal.SIGINT  # the inner block did not reset it
        with pytest.raises(Interrupted):
            checkpoint()


def test_training_stops_between_batches() -> None:
    import torch

    from fednas.train import TrainConfig, train

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.randn(64, 1, 2, 2), torch.randint(0, 2, (64,))
    steps: list[int] = []

    def loss_fn(out: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        steps.append(1)
        if len(steps) == 3:
            _raise_signal(signal.SIGINT)
        return torch.nn.functional.cross_entropy(out, yb)

    with stop_at_safe_points(), pytest.raises(Interrupted):
        train(model, x, y, TrainConfig(batch_size=8, epochs=1), seed=0, loss_fn=loss_fn)
    assert len(steps) == 3  # the batch in progress finished, the next one did not start


def _finalizer_that_is_interrupted() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):  # the handler runs here, inside the callback
        pass


def test_a_signal_landing_inside_a_weakref_callback_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import sys
    import weakref

    ignored: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: ignored.append(u.exc_type))

    class Thing:
        pass

    # Python's default handler raises KeyboardInterrupt inside the callback, where the
    # interpreter reports it as "Exception ignored" and carries on: the Ctrl-C is lost.
    thing = Thing()
    weakref.finalize(thing, _finalizer_that_is_interrupted)
    del thing
    gc.collect()
    assert ignored == [KeyboardInterrupt]

    with stop_at_safe_points():
        thing = Thing()
        weakref.finalize(thing, _finalizer_that_is_interrupted)
        del thing
        gc.collect()
        with pytest.raises(Interrupted):
            checkpoint()
    assert ignored == [KeyboardInterrupt]  # nothing more was swallowed
