"""Flower wiring: ClientApp, ServerApp, strategies and the in-process grid.

Nothing here knows Optuna; the same apps run under ``flwr run``.
"""

from __future__ import annotations

from fednas.fl._grid import CountingGrid, Exchange, InProcessGrid, Traffic, record_bytes
from fednas.fl._run import SubnetEvaluator, run_federation, run_supernet, serverapp_identity
from fednas.fl._spec import FederatedData, RunSpec, federated_data, supernet_section
from fednas.fl._strategies import STRATEGIES, make_strategy, strategy_kwargs
from fednas.fl.server_app import FederationError, RoundRecord, ServerOutcome

__all__ = [
    "STRATEGIES",
    "CountingGrid",
    "Exchange",
    "FederatedData",
    "FederationError",
    "InProcessGrid",
    "RoundRecord",
    "RunSpec",
    "ServerOutcome",
    "SubnetEvaluator",
    "Traffic",
    "federated_data",
    "make_strategy",
    "record_bytes",
    "run_federation",
    "run_supernet",
    "serverapp_identity",
    "strategy_kwargs",
    "supernet_section",
]
