"""``fednas train``: a longer federated run of one chosen architecture, then its bundle.

The only place outside the search where a model is trained (see DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from fednas.config import ConfigError, StudyConfig
from fednas.export._source import ModelSource
from fednas.fl import RoundRecord
from search_spaces import MobileNetArch

__all__ = ["train_architecture"]


def train_architecture(
    arch: MobileNetArch,
    config: StudyConfig,
    *,
    rounds: int,
    on_round: Callable[[RoundRecord], None] | None = None,
    origin: dict[str, Any] | None = None,
) -> ModelSource:
    """Train ``arch`` federatedly with ``config``'s data and federation for ``rounds`` rounds.

    Raises:
        ConfigError: ``rounds`` < 1.
        FederationError / TrainingDiverged: the run failed.
    """
    from fednas.cost import measure
    from fednas.fl import RunSpec, federated_data, run_federation
    from search_spaces import build_model

    if rounds < 1:
        raise ConfigError(f"--rounds: expected an integer >= 1, got {rounds}")
    federation = replace(config.federation, rounds=rounds)
    config = replace(config, federation=federation)
    data = federated_data(config.data, federation.num_clients, config.study.seed)
    train = data.train
    cost = measure(build_model(arch, num_classes=train.num_classes, in_channels=train.in_channels),
                   in_channels=train.in_channels, resolution=train.resolution)
    outcome = run_federation(RunSpec(config.data, federation, config.study.seed, arch.to_dict()), on_round=on_round)
    metrics = {"accuracy": outcome.accuracy, "macs": cost.macs, "params": cost.params, "bytes": cost.bytes,
               "comm_bytes": outcome.comm_bytes, "upload_bytes": outcome.upload_bytes,
               "download_bytes": outcome.download_bytes, "train_seconds": round(outcome.seconds, 3)}
    return ModelSource(
        arch=arch,
        state=outcome.arrays.to_torch_state_dict(),
        config=config,
        metrics=metrics,
        rounds=[asdict(r) for r in outcome.rounds],
        origin={"trained": True, "rounds": rounds, **(origin or {})},
    )
