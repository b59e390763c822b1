"""Timing one model: warm-up, then the median of single-image runs on pinned threads."""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from fednas.latency._runtimes import Runtime, get_runtime

__all__ = ["Latency", "measure_interleaved", "measure_latency", "pinned", "time_session"]


@dataclass(frozen=True)
class Latency:
    """A single-image latency in milliseconds and how it was obtained.

    Attributes:
        ms: the median of the timed runs (measured) or the table's sum (predicted).
        p25_ms, p75_ms: the quartiles of the timed runs (the spread; for a prediction, the sums
            of the units' quartiles).
        runtime, runtime_version, threads: where it ran.
        repeats: timed runs (per unit, for a prediction).
        source: "measured" or "predicted" (from a latency table).
        units: units of the model (a prediction); fallback: how many of them the table did not hold
            and were estimated from its per-kind fit.
        table: the table's file (a prediction).
    """

    ms: float
    p25_ms: float
    p75_ms: float
    runtime: str
    runtime_version: str
    threads: int
    repeats: int
    source: str = "measured"
    units: int = 0
    fallback: int = 0
    table: str = ""

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v not in ("", None) and not (k in ("units", "fallback")
                                                                                     and self.source == "measured")}


@contextlib.contextmanager
def pinned(threads: int) -> Iterator[list[int]]:
    """Pin the calling thread (and the runtime threads it starts) to ``threads`` of the allowed CPUs.

    The last CPUs are taken (the first ones carry more interrupt work on most Linux machines).
    Where affinity cannot be set (not Linux), nothing is pinned and the list is empty.
    """
    getter, setter = getattr(os, "sched_getaffinity", None), getattr(os, "sched_setaffinity", None)
    if getter is None or setter is None:
        yield []
        return
    allowed = sorted(getter(0))
    chosen = allowed[-threads:] if threads <= len(allowed) else allowed
    setter(0, chosen)
    try:
        yield chosen
    finally:
        setter(0, allowed)


def time_session(session: object, warmup: int, repeats: int) -> np.ndarray:
    """Milliseconds of ``repeats`` runs of ``session.run`` after ``warmup`` untimed ones."""
    run = session.run  # type: ignore[attr-defined]
    for _ in range(warmup):
        run()
    times = np.empty(repeats)
    clock = time.perf_counter_ns
    for i in range(repeats):
        start = clock()
        run()
        times[i] = (clock() - start) / 1e6
    return times


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *, runtime: str | Runtime = "onnxruntime",
                    threads: int = 1, warmup: int = 10, repeats: int = 50) -> Latency:
    """The median single-image latency of ``model`` at ``input_shape`` (C, H, W) on ``runtime``.

    The model is copied and put in eval mode (batch norm folded by the runtime where it can);
    the input is seeded noise. Session setup is not timed.

    Raises:
        ValueError: bad counts, or the runtime is unknown or not installed.
    """
    if threads < 1 or warmup < 0 or repeats < 1:
        raise ValueError(f"threads >= 1, warmup >= 0 and repeats >= 1 expected, got {threads}, {warmup}, {repeats}")
    rt = get_runtime(runtime) if isinstance(runtime, str) else runtime
    probe = copy.deepcopy(model).eval()
    example = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))
    with pinned(threads):
        with rt.prepare(probe, example, threads) as session:
            times = time_session(session, warmup, repeats)
    p25, median, p75 = (float(v) for v in np.percentile(times, [25, 50, 75]))
    return Latency(median, p25, p75, rt.name, rt.version(), threads, repeats)


def measure_interleaved(models: list[tuple[nn.Module, tuple[int, ...]]], *, runtime: str | Runtime = "onnxruntime",
                        threads: int = 1, warmup: int = 10, repeats: int = 50, rounds: int = 5) -> list[Latency]:
    """``measure_latency`` of many models at once, robust to a machine whose speed drifts.

    All models are prepared first; then ``rounds`` passes each run every model ``repeats``
    times (after ``warmup`` untimed runs), in the same order, so a slow minute of a shared or
    throttled machine falls on all of them alike. Each model's latency is the median of its
    ``rounds * repeats`` runs.
    """
    if threads < 1 or warmup < 0 or repeats < 1 or rounds < 1:
        raise ValueError(f"threads >= 1, warmup >= 0, repeats >= 1 and rounds >= 1 expected, got {threads}, "
                         f"{warmup}, {repeats}, {rounds}")
    rt = get_runtime(runtime) if isinstance(runtime, str) else runtime
    gen = torch.Generator().manual_seed(0)
    times: list[list[np.ndarray]] = [[] for _ in models]
    with pinned(threads), contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(rt.prepare(copy.deepcopy(m).eval(), torch.randn((1, *shape), generator=gen),
                                                   threads)) for m, shape in models]
        for _ in range(rounds):
            for i, session in enumerate(sessions):
                times[i].append(time_session(session, warmup, repeats))
    out = []
    for t in times:
        p25, median, p75 = (float(v) for v in np.percentile(np.concatenate(t), [25, 50, 75]))
        out.append(Latency(median, p25, p75, rt.name, rt.version(), threads, repeats * rounds))
    return out
