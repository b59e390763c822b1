"""Strategy registry: names in the study config -> ``flwr.serverapp.strategy`` objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, Strategy

from fednas.config import FederationConfig

__all__ = ["STRATEGIES", "make_strategy"]


def _sampling(fed: FederationConfig) -> dict[str, Any]:
    # Evaluation is server-side on the held-out split, so no client-side evaluate round.
    return {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": fed.min_train_nodes,
        "min_evaluate_nodes": 0,
        "min_available_nodes": fed.min_train_nodes,
    }


STRATEGIES: dict[str, Callable[[FederationConfig], Strategy]] = {
    "fedavg": lambda fed: FedAvg(**_sampling(fed)),
    "fedprox": lambda fed: FedProx(**_sampling(fed), proximal_mu=fed.proximal_mu),
    "fedavgm": lambda fed: FedAvgM(**_sampling(fed), server_learning_rate=fed.server_lr, server_momentum=fed.server_momentum),
    "fedadam": lambda fed: FedAdam(**_sampling(fed), eta=fed.eta, eta_l=fed.eta_l, tau=fed.tau),
}


def make_strategy(fed: FederationConfig) -> Strategy:
    """The strategy named by ``fed.strategy``; unknown names raise ``ValueError``."""
    try:
        factory = STRATEGIES[fed.strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {fed.strategy!r}; valid: {', '.join(STRATEGIES)}") from None
    return factory(fed)
