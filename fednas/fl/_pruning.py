"""Structured pruning during the federation (the ``prune_*`` compression labels).

After aggregating round ``prune_round`` the server prunes the global model's output
channels (``fednas.compress.prune_channels_with_masks`` for the data-free l1/l2/fpgm
rankings; for taylor, ``masks_from_scores`` over Taylor scores the clients compute on their
own data, see ``server_app.prune_fn``) and NNI's ``ModelSpeedup`` shrinks it. Later rounds train and send
the smaller model. Clients rebuild the same structure from the channel masks, which every
later train (and batch-norm) message carries in its ConfigRecord as ``prune-masks`` (a
short JSON string; it is counted in the message bytes like everything else):
``build_run_model(arch, compression)`` + ``apply_channel_masks`` on the same example-input
shape, i.e. the very path the server's pruned model came from (``fednas.models.pruned_template``,
cached per process and mask digest). By ``prune_granularity`` the masks are of channels
(convs and hidden linears) or neurons (hidden linears only); block pruning sends a block
plan in the same key (``fednas.compress.block_plan``: the blocks removed), and unstructured
(weight) pruning sends no masks: the shape stays, the server zeroes the same weights after
every later aggregation, and train configs carry ``prune-keep-zeros`` so that the clients
hold the received zeros at zero while they train (``fednas.compress.keep_zeros``).

``pruning(strategy_cls)`` wraps any FedAvg-family strategy (also one already wrapped by
``compressed``); server-optimizer state shaped like the unpruned model (FedAvgM momentum,
FedAdam/FedYogi moments, their ``current_arrays``) is reset at the pruning round. A
downlink codec is refused by the config check (its reference model would change shape).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fednas.models import example_input, pruned_template

__all__ = ["KEEP_ZEROS_KEY", "MASKS_KEY", "PruningMixin", "example_input", "pruned_template", "pruning"]

MASKS_KEY = "prune-masks"
KEEP_ZEROS_KEY = "prune-keep-zeros"  # unstructured pruning: clients hold the received zeros at zero

# The server's prune step: (round, aggregated arrays) -> (pruned arrays, encoded masks).
PruneFn = Callable[[int, ArrayRecord], tuple[ArrayRecord, str]]


class PruningMixin:
    """Prunes the aggregate of round ``prune_round`` through ``prune_fn``; later train configs carry the masks.

    ``prune_fn`` may also have ``reapply(arrays) -> arrays`` (called on every later aggregate:
    unstructured pruning zeroes its weights again) and ``train_config() -> dict`` (keys later
    train configs carry besides the masks).
    """

    def __init__(self, *args: Any, prune_round: int, prune_fn: PruneFn, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prune_round = prune_round
        self.prune_fn = prune_fn
        self.masks_text = ""
        self.pruned = False

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.masks_text:
            config[MASKS_KEY] = self.masks_text
        if self.pruned and hasattr(self.prune_fn, "train_config"):
            config.update(self.prune_fn.train_config())
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is not None and self.pruned and hasattr(self.prune_fn, "reapply"):
            arrays = self.prune_fn.reapply(arrays)
        if arrays is not None and server_round == self.prune_round and not self.pruned:
            arrays, self.masks_text = self.prune_fn(server_round, arrays)
            self.pruned = True
            # server-optimizer state has the unpruned shapes: start it afresh from the pruned model
            for attr in ("current_arrays", "momentum_vector", "m_t", "v_t"):
                if hasattr(self, attr):
                    setattr(self, attr, None)
        return arrays, metrics


@functools.cache
def pruning(strategy_cls: type[FedAvg]) -> type[FedAvg]:
    """``strategy_cls`` with ``PruningMixin`` in front (keyword args ``prune_round``, ``prune_fn``)."""
    return type(f"Pruning{strategy_cls.__name__}", (PruningMixin, strategy_cls), {"__module__": __name__})
