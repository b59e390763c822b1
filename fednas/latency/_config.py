"""``latency_ms`` of a study's candidate, as its ``[latency]`` section says."""

from __future__ import annotations

from torch import nn

from fednas.config import LatencyConfig
from fednas.latency._measure import Latency, measure_latency
from fednas.latency._table import cached_table, latency_units

__all__ = ["candidate_latency"]


def candidate_latency(model: nn.Module, input_shape: tuple[int, ...], config: LatencyConfig) -> Latency:
    """Predicted from ``config.table`` when one is named, else measured on ``config.runtime``.

    Raises:
        TableError: the table cannot be read (naming the file and key).
        ValueError: the runtime is not installed.
    """
    if config.table:
        return cached_table(config.table).predict(latency_units(model, input_shape))
    return measure_latency(model, input_shape, runtime=config.runtime, threads=config.threads,
                           warmup=config.warmup, repeats=config.repeats)
