"""``fednas train``: a longer federated run of one chosen candidate, then its bundle.

The only place outside the search where a model is trained (see DESIGN.md). It goes
through the same candidate pipeline as a trial (``fednas.pipeline``), so a trial's
compression labels (codecs, low-rank, distillation, pruning) are applied again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from fednas._errors import ConfigError
from fednas.config import StudyConfig
from fednas.export._source import ModelSource
from fednas.fl import RoundRecord
from fednas.pipeline import Candidate
from search_spaces import Architecture

__all__ = ["train_architecture"]


def train_architecture(
    arch: Architecture | Candidate,
    config: StudyConfig,
    *,
    rounds: int,
    on_round: Callable[[RoundRecord], None] | None = None,
    origin: dict[str, Any] | None = None,
) -> ModelSource:
    """Train ``arch`` (or a candidate with its compression labels) federatedly for ``rounds`` rounds.

    Raises:
        ConfigError: ``rounds`` < 1, or a ``prune_round`` the shorter run never reaches.
        FederationError / TrainingDiverged: the run failed.
    """
    from fednas.fl import federated_data
    from fednas.pipeline import run_candidate

    if rounds < 1:
        raise ConfigError(f"--rounds: expected an integer >= 1, got {rounds}")
    candidate = arch if isinstance(arch, Candidate) else Candidate(arch)
    if candidate.compression.prune_on and candidate.compression.prune_round >= rounds:
        raise ConfigError(f"--rounds: {rounds} must be > the candidate's prune_round "
                          f"({candidate.compression.prune_round})")
    federation = replace(config.federation, rounds=rounds)
    config = replace(config, federation=federation)
    data = federated_data(config.data, federation.num_clients, config.study.seed)
    result = run_candidate(candidate, config, data, on_round=on_round)
    outcome = result.outcome
    metrics = {**result.metrics, "train_seconds": round(outcome.seconds, 3)}
    for k, v in result.before_pruning.items():
        metrics[f"{k}_before_pruning"] = v
    return ModelSource(
        arch=candidate.arch,
        state=result.state,
        config=config,
        metrics=metrics,
        labels=dict(candidate.labels),
        rounds=[asdict(r) for r in outcome.rounds],
        prune_masks=outcome.prune_masks,
        origin={"trained": True, "rounds": rounds, **(origin or {})},
        privacy=dict(outcome.privacy),
        secure=dict(outcome.secure),
    )
