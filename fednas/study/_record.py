"""The one trial record: what search, pareto, export, plot and dashboard know of a stored trial."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from fednas.objectives import OBJECTIVES

__all__ = ["TrialRecord", "record_of"]


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a study, detached from the storage.

    Attributes:
        number: Optuna trial number.
        state: COMPLETE, PRUNED, FAIL, RUNNING or WAITING.
        objectives: objective name -> value, in the study's order (empty unless COMPLETE).
        metrics: every registered metric the trial stored (accuracy, macs, params, bytes, ...).
        labels: every label of the candidate, searched and fixed.
        searched: the labels the sampler chose (Optuna's ``trial.params``).
        arch: the architecture dict (with its ``family``).
        feasible: all constraint values <= 0.
        reason: why a trial failed or was pruned ("" otherwise).
        attrs: all user attributes (weights artifact id, rounds, ...).
    """

    number: int
    state: str
    objectives: dict[str, float]
    metrics: dict[str, Any]
    labels: dict[str, Any]
    searched: dict[str, Any]
    arch: dict[str, Any]
    feasible: bool = True
    reason: str = ""
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def values(self) -> dict[str, float]:
        """Every numeric metric, the objectives' values taking precedence: what plots draw."""
        numeric = {k: float(v) for k, v in self.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {**numeric, **self.objectives}

    @property
    def params(self) -> dict[str, Any]:
        """All labels (as ``fednas pareto --format json`` prints them)."""
        return self.labels

    @property
    def compression(self) -> str:
        """The compression labels in short (``q8 up, prune l1 50% @r1``; ``-`` when none are on)."""
        from search_spaces import CompressionSettings

        try:
            return CompressionSettings.from_labels(self.labels).describe()
        except (TypeError, ValueError):
            return "?"

    @property
    def complete(self) -> bool:
        return self.state == TrialState.COMPLETE.name

    def to_dict(self) -> dict[str, Any]:
        """The ``fednas pareto --format json`` object of the trial."""
        return {"number": self.number, "state": self.state, **self.objectives, "params": self.labels,
                "metrics": self.metrics, "feasible": self.feasible, "arch": self.arch,
                **({"reason": self.reason} if self.reason else {})}


def record_of(trial: FrozenTrial, objective_names: list[str] | tuple[str, ...]) -> TrialRecord:
    """Flatten a stored trial: objective values by name, labels (searched and fixed), metrics, reason."""
    attrs = trial.user_attrs
    reason = attrs.get("fail_reason") or attrs.get("pruned_reason") or trial.system_attrs.get("fail_reason", "")
    if not reason and trial.state == TrialState.FAIL:
        reason = "failed (no reason recorded)"
    objectives = dict(zip(objective_names, trial.values)) if trial.values is not None else {}
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        objectives={k: float(v) for k, v in objectives.items()},
        metrics={k: attrs[k] for k in OBJECTIVES if k in attrs},
        labels=dict(attrs.get("labels", trial.params)),
        searched=dict(trial.params),
        arch=dict(attrs.get("arch", {})),
        feasible=all(c <= 0 for c in trial.constraints.values()),
        reason=str(reason),
        attrs=dict(attrs),
    )
