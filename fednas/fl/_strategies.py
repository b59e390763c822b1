"""Strategy registry: names in the study config -> ``flwr.serverapp.strategy`` objects.

With an update codec configured (``CompressionSettings.uplink_codec`` / ``downlink_codec``),
the strategy class is wrapped by ``fednas.compress.compressed``: it sends the codec keys in
the train ConfigRecord (and encoded global-model deltas downlink) and decodes the replies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, Strategy

from fednas.config import FederationConfig
from search_spaces import CompressionSettings

__all__ = ["STRATEGIES", "make_codecs", "make_strategy"]


def _sampling(fed: FederationConfig) -> dict[str, Any]:
    # Evaluation is server-side on the held-out split, so no client-side evaluate round.
    return {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": fed.min_train_nodes,
        "min_evaluate_nodes": 0,
        "min_available_nodes": fed.min_train_nodes,
    }


# name -> (strategy class, its keyword arguments beyond sampling)
STRATEGIES: dict[str, tuple[type[FedAvg], Callable[[FederationConfig], dict[str, Any]]]] = {
    "fedavg": (FedAvg, lambda fed: {}),
    "fedprox": (FedProx, lambda fed: {"proximal_mu": fed.proximal_mu}),
    "fedavgm": (FedAvgM, lambda fed: {"server_learning_rate": fed.server_lr, "server_momentum": fed.server_momentum}),
    "fedadam": (FedAdam, lambda fed: {"eta": fed.eta, "eta_l": fed.eta_l, "tau": fed.tau}),
}


def make_codecs(compression: CompressionSettings) -> dict[str, Any]:
    """``uplink``/``downlink`` codec objects of ``compression`` (only those that are on)."""
    from fednas.compress import make_codec

    codecs: dict[str, Any] = {}
    for side in ("uplink", "downlink"):
        name = getattr(compression, f"{side}_codec")
        if name == "quantize":
            codecs[side] = make_codec(
                "quantize", bits=getattr(compression, f"{side}_bits"), per_channel=getattr(compression, f"{side}_per_channel")
            )
        elif name == "topk":
            codecs[side] = make_codec("topk", fraction=compression.uplink_topk)
        elif name != "none":
            raise ValueError(f"{side}_codec: unknown codec {name!r}")
    return codecs


def make_strategy(fed: FederationConfig, compression: CompressionSettings | None = None, *, seed: int = 0,
                  prune_fn: Callable[..., Any] | None = None) -> Strategy:
    """The strategy named by ``fed.strategy``, wrapped for compression when a codec is on.

    With ``compression.prune_on`` and a ``prune_fn`` (the server's prune step, see
    ``fednas.fl._pruning``), also wrapped by ``pruning``: the aggregate of round
    ``prune_round`` is pruned and later train configs carry the channel masks.

    Raises:
        ValueError: unknown strategy name (listing the valid ones) or codec.
    """
    try:
        cls, extra = STRATEGIES[fed.strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {fed.strategy!r}; valid: {', '.join(STRATEGIES)}") from None
    kwargs = {**_sampling(fed), **extra(fed)}
    if compression is not None and compression.codecs_on:
        from fednas.compress import compressed

        cls, kwargs = compressed(cls), {**kwargs, **make_codecs(compression), "seed": seed}
    if compression is not None and compression.prune_on and prune_fn is not None:
        from fednas.fl._pruning import pruning

        cls, kwargs = pruning(cls), {**kwargs, "prune_round": compression.prune_round, "prune_fn": prune_fn}
    return cls(**kwargs)
