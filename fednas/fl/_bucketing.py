"""Bucketing before aggregation (``federation.bucket_size``): the robust rules on means of random groups.

Distance- and rank-based robust rules (Krum, Multi-Krum, Bulyan, the coordinate-wise median
and trimmed mean) treat honest updates that disagree as suspect, and under non-IID shards
honest updates disagree a lot: the rules then discard honest information and cost accuracy
even without attackers. Karimireddy, He and Jaggi (ICLR 2022, "Byzantine-robust learning on
heterogeneous datasets via bucketing") shuffle the round's replies, average them in buckets of
``s``, and hand the ``ceil(n / s)`` bucket means to the robust rule: the means of honest
buckets are ``s`` times less spread, and at most ``s * f`` of the buckets hold an attacker.

``bucketed(Krum)`` is ``Krum`` with that step in front of its ``aggregate_train``. Each
bucket's model is the example-weighted mean of its floating-point arrays (other arrays, batch
norm's step counters, are taken from the bucket's first reply), its weight the sum of its
replies' weights, and its metrics their weighted mean. The shuffle is seeded by the run's seed
and the round, so a run is reproducible. With FedAvg (any weighted mean) bucketing changes
nothing but rounding: a weighted mean of weighted means with summed weights is the mean.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fednas._seeds import derive_seed
from fednas.compress._mods import to_array_record, to_numpy

__all__ = ["BucketingMixin", "bucket_replies", "bucketed", "num_buckets"]


def num_buckets(replies: int, bucket_size: int) -> int:
    """How many inputs the wrapped rule sees for ``replies`` replies."""
    return math.ceil(replies / max(1, bucket_size))


def bucket_replies(replies: list[Message], bucket_size: int, *, arrays_key: str, weight_key: str,
                   seed: int) -> list[Message]:
    """``replies`` (all without error) shuffled by ``seed`` and merged into buckets of ``bucket_size``.

    The last bucket holds the remainder when ``bucket_size`` does not divide the count.
    """
    if bucket_size <= 1 or len(replies) <= 1:
        return replies
    order = list(range(len(replies)))
    random.Random(seed).shuffle(order)
    return [_merge([replies[i] for i in order[at:at + bucket_size]], arrays_key, weight_key)
            for at in range(0, len(order), bucket_size)]


def _merge(group: list[Message], arrays_key: str, weight_key: str) -> Message:
    if len(group) == 1:
        return group[0]
    name, _ = next(iter(group[0].content.metric_records.items()))
    metrics = [dict(m.content.metric_records[name]) for m in group]
    weights = np.array([float(m[weight_key]) for m in metrics], dtype=np.float64)
    total = float(weights.sum())
    share = weights / total if total > 0 else np.full(len(group), 1.0 / len(group))
    models = [to_numpy(m.content[arrays_key]) for m in group]
    merged: dict[str, np.ndarray] = {}
    for key, first in models[0].items():
        if np.issubdtype(first.dtype, np.floating):
            acc = sum(s * model[key].astype(np.float64) for s, model in zip(share, models))
            merged[key] = np.asarray(acc, dtype=first.dtype)
        else:
            merged[key] = first
    merged_metrics: dict[str, Any] = {}
    for key, value in metrics[0].items():
        if key == weight_key:
            merged_metrics[key] = type(value)(total) if isinstance(value, int) else total
        elif isinstance(value, (int, float)) and all(isinstance(m.get(key), (int, float)) for m in metrics):
            merged_metrics[key] = float(sum(s * float(m[key]) for s, m in zip(share, metrics)))
    content = RecordDict({arrays_key: to_array_record(merged), name: MetricRecord(merged_metrics)})
    return Message(metadata=group[0].metadata, content=content)


class BucketingMixin:
    """Mixed in before a ``FedAvg`` subclass by ``bucketed``; see the module docstring.

    Keyword args (the rest go to the wrapped strategy):
        bucket_size: replies per bucket (1: off).
        bucket_seed: seeds each round's shuffle (with the round number).
    """

    arrayrecord_key: str
    weighted_by_key: str

    def __init__(self, *args: Any, bucket_size: int = 1, bucket_seed: int = 0, **kwargs: Any) -> None:
        if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
            raise ValueError(f"bucket_size: expected an integer >= 1, got {bucket_size!r}")
        super().__init__(*args, **kwargs)
        self.bucket_size, self.bucket_seed = bucket_size, bucket_seed

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ok = [r for r in replies if not r.has_error()]
        buckets = bucket_replies(ok, self.bucket_size, arrays_key=self.arrayrecord_key,
                                 weight_key=self.weighted_by_key, seed=derive_seed(self.bucket_seed, "bucket",
                                                                                   server_round))
        return super().aggregate_train(server_round, buckets)  # type: ignore[misc]


@functools.cache
def bucketed(strategy_cls: type[FedAvg]) -> type[FedAvg]:
    """``strategy_cls`` (a ``FedAvg`` subclass) with ``BucketingMixin`` in front, e.g.
    ``bucketed(FedMedian)(bucket_size=2, bucket_seed=0)``.

    Raises:
        TypeError: ``strategy_cls`` is not a subclass of ``flwr.serverapp.strategy.FedAvg``.
    """
    if not (isinstance(strategy_cls, type) and issubclass(strategy_cls, FedAvg)):
        raise TypeError(f"strategy_cls: expected a subclass of flwr.serverapp.strategy.FedAvg, got {strategy_cls!r}")
    return type(f"Bucketed{strategy_cls.__name__}", (BucketingMixin, strategy_cls), {"__module__": __name__})
