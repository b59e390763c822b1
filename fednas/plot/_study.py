"""Reading a finished study, read-only, into plain records that export and plots share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from fednas.config import OBJECTIVES, ConfigError, StudyConfig, parse_config

__all__ = ["StudyView", "TrialPoint", "config_from_stored", "metric_direction", "read_study"]

# Direction of a metric that is not one of the study's objectives.
_DEFAULT_DIRECTIONS = {name: ("maximize" if name == "accuracy" else "minimize") for name in OBJECTIVES}


def metric_direction(name: str) -> str:
    """The natural direction of a fednas metric (accuracy up, every cost down)."""
    return _DEFAULT_DIRECTIONS[name]


@dataclass(frozen=True)
class TrialPoint:
    """One COMPLETE trial: every metric it has, its labels, architecture and feasibility.

    Attributes:
        number: Optuna trial number.
        values: metric name -> value (the objectives and every stored metric).
        params: the searched labels (Optuna's ``trial.params``).
        labels: every label, searched and fixed.
        arch: the architecture dict.
        feasible: all constraint values <= 0.
        attrs: all user attributes (weights artifact id, rounds, ...).
    """

    number: int
    values: dict[str, float]
    params: dict[str, Any]
    labels: dict[str, Any]
    arch: dict[str, Any]
    feasible: bool
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class StudyView:
    """A study as export and plotting need it, detached from the storage.

    Attributes:
        name: study name.
        storage: storage URL it was read from.
        objectives: objective name -> direction, in the study's order.
        trials: COMPLETE trials, by number.
        states: count of trials per state name (COMPLETE, PRUNED, FAIL, ...).
        constraints: active upper bounds (metric name -> bound).
        config: the stored study config (None for studies made outside fednas).
        artifacts_dir: folder of the study's artifact store ("" if none).
        incomplete: trial number -> "STATE: reason" for trials that did not complete.
        frozen: the COMPLETE trials as Optuna stores them (for ``optuna.importance``).
    """

    name: str
    storage: str
    objectives: dict[str, str]
    trials: tuple[TrialPoint, ...]
    states: dict[str, int]
    constraints: dict[str, int]
    config: StudyConfig | None
    artifacts_dir: str
    incomplete: dict[int, str] = field(default_factory=dict)
    frozen: tuple[FrozenTrial, ...] = field(default=(), repr=False)

    def direction(self, metric: str) -> str:
        """The study's direction for an objective, else the metric's natural one."""
        return self.objectives.get(metric) or metric_direction(metric)

    def trial(self, number: int) -> TrialPoint | None:
        return next((t for t in self.trials if t.number == number), None)


def read_study(storage: str, study_name: str) -> StudyView:
    """Load a study without writing to its storage.

    Raises:
        StorageError: the storage cannot be opened (or a SQLite/journal file is missing).
        ConfigError: no study of that name in the storage.
    """
    from fednas.search import open_storage

    st = open_storage(storage, create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
    if study_name not in names:
        raise ConfigError(f"study {study_name!r} not found in {storage}; studies there: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=study_name, storage=st)
    attrs = study.user_attrs
    names_ = list(attrs.get("objectives") or [f"objective_{i}" for i in range(len(study.directions))])
    objectives = {n: d.name.lower() for n, d in zip(names_, study.directions)}
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    states: dict[str, int] = {}
    for t in all_trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    config = config_from_stored(attrs.get("fednas_config"))
    return StudyView(
        name=study_name,
        storage=storage,
        objectives=objectives,
        trials=tuple(_point(t, names_) for t in sorted(complete, key=lambda t: t.number)),
        states=states,
        constraints=config.constraints.active() if config else {},
        config=config,
        artifacts_dir=str(attrs.get("artifacts_dir", "")),
        incomplete={t.number: _why(t) for t in all_trials if t.state != TrialState.COMPLETE},
        frozen=tuple(complete),
    )


def _why(trial: FrozenTrial) -> str:
    reason = trial.user_attrs.get("fail_reason") or trial.user_attrs.get("pruned_reason") or ""
    return trial.state.name + (f": {reason}" if reason else "")


def _point(trial: FrozenTrial, objective_names: list[str]) -> TrialPoint:
    attrs = trial.user_attrs
    values = {k: float(attrs[k]) for k in OBJECTIVES if isinstance(attrs.get(k), (int, float))}
    values.update({n: float(v) for n, v in zip(objective_names, trial.values or [])})
    return TrialPoint(
        number=trial.number,
        values=values,
        params=dict(trial.params),
        labels=dict(attrs.get("labels", trial.params)),
        arch=dict(attrs.get("arch", {})),
        feasible=all(c <= 0 for c in trial.constraints.values()),
        attrs=dict(attrs),
    )


def config_from_stored(doc: dict[str, Any] | None) -> StudyConfig | None:
    """Rebuild the ``StudyConfig`` stored with a study (its ``space`` is {name, options, labels}).

    Raises:
        ConfigError: the stored config no longer validates (e.g. a key was renamed).
    """
    if not doc:
        return None
    doc = {k: v for k, v in doc.items()}
    space = dict(doc.get("space") or {})
    doc["space"] = {"name": space.get("name", "mobilenet"), **space.get("options", {}), "labels": space.get("labels", {})}
    try:
        return parse_config(doc, source="")
    except ConfigError as exc:
        raise ConfigError(f"stored study config: {exc}") from None
