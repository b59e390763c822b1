"""What each plot shows, computed from a ``StudyView``: dataclasses only, no drawing.

Status of a point in a plot: ``front`` (feasible and non-dominated in the plotted
objectives), ``dominated`` (feasible) or ``infeasible`` (violates a constraint; never on a
front). Renderers only map these records to marks.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fednas._errors import ConfigError
from fednas._format import number
from fednas.objectives import OBJECTIVES
from fednas.plot._style import STATUS_STYLE
from fednas.study import StudyView, TrialRecord, hypervolume, normalized_losses, statuses, to_losses
from search_spaces import describe_arch as describe

__all__ = [
    "Axis",
    "Dimension",
    "FrontData",
    "HypervolumeHistory",
    "Importances",
    "ParallelData",
    "PlotPoint",
    "Report",
    "axis_for",
    "build_report",
    "choose_objectives",
    "front_data",
    "hypervolume_history",
    "importance_data",
    "parallel_data",
    "projections",
    "statuses",
]

MIN_TRIALS_FOR_IMPORTANCE = 5
HV_REFERENCE = 1.1  # reference point per objective, on losses scaled to [0, 1]


# --------------------------------------------------------------------------- axes


@dataclass(frozen=True)
class Axis:
    """One plotted objective: name, direction, scale for display and labels with units.

    Attributes:
        name: the metric name.
        direction: "maximize" or "minimize".
        scale: multiply values by this to display them in ``unit``.
        title: what it measures with its unit, e.g. "MACs per image (kMACs)".
        short: name and unit only, for crowded axes (3-D, parallel coordinates).
    """

    name: str
    direction: str
    scale: float
    title: str
    short: str

    @property
    def hint(self) -> str:
        return "higher is better" if self.direction == "maximize" else "lower is better"

    @property
    def label(self) -> str:
        return f"{self.title}, {self.hint}"


def axis_for(name: str, direction: str, values: list[float]) -> Axis:
    """A display scale (k, M, G; fractions in %) and labels with units for one objective."""
    obj = OBJECTIVES.get(name)
    what, unit = (obj.title, obj.unit) if obj else (name, "")
    if unit == "fraction":
        return Axis(name, direction, 100.0, f"{what} (%)", f"{name} (%)")
    if unit == "eps":  # a privacy loss: shown as it is
        return Axis(name, direction, 1.0, f"{what} (at delta)", f"{name} (at delta)")
    if unit == "ms":
        return Axis(name, direction, 1.0, f"{what} (ms)", f"{name} (ms)")
    top = max((abs(v) for v in values), default=0.0)
    prefix, scale = next(((p, s) for p, s in (("G", 1e-9), ("M", 1e-6), ("k", 1e-3)) if top >= 1 / s), ("", 1.0))
    if unit in ("B", "MACs"):
        shown = f"{prefix}{unit}"
    else:
        shown = {"G": "billions", "M": "millions", "k": "thousands", "": "count"}[prefix]
    return Axis(name, direction, scale, f"{what} ({shown})", f"{name} ({shown})")


def choose_objectives(view: StudyView, requested: list[str] | None) -> list[str]:
    """The 2 or 3 objectives of the main plot: ``requested`` or the study's own.

    Raises:
        ConfigError: unknown name, a metric the trials do not have, a duplicate, or not 2-3 names.
    """
    names = list(requested) if requested else list(view.objectives)[:3]
    for n in names:
        if n not in OBJECTIVES:
            raise ConfigError(f"--objectives: unknown objective {n!r}; valid: {', '.join(OBJECTIVES)}")
        if view.trials and any(n not in t.values for t in view.trials):
            raise ConfigError(f"--objectives: the trials of study {view.name!r} have no {n!r} value")
    if len(set(names)) != len(names):
        raise ConfigError(f"--objectives: duplicate name in {','.join(names)}")
    if not 2 <= len(names) <= 3:
        hint = " (the study has one objective; name two, e.g. --objectives accuracy,macs)" if not requested else ""
        raise ConfigError(f"--objectives: expected 2 or 3 names, got {len(names)}{hint}")
    return names


# --------------------------------------------------------------------------- fronts


@dataclass(frozen=True)
class PlotPoint:
    number: int
    coords: tuple[float, ...]
    status: str  # front | dominated | infeasible
    hover: str


@dataclass(frozen=True)
class FrontData:
    """Points of one scatter (2-D or 3-D) with the front of the plotted objectives marked."""

    axes: tuple[Axis, ...]
    points: tuple[PlotPoint, ...]
    partial: bool = False  # the plotted objectives are some of the study's: the front is theirs only

    def label(self, status: str) -> str:
        """The legend text of a status ("Pareto front", or "front of these 2 objectives" on a projection)."""
        if status == "front" and self.partial:
            return f"front of these {len(self.axes)} objectives"
        return STATUS_STYLE[status]["label"]

    @property
    def front(self) -> list[PlotPoint]:
        """Front points, sorted along the first axis (for a step line)."""
        return sorted((p for p in self.points if p.status == "front"), key=lambda p: p.coords)

    def by_status(self, status: str) -> list[PlotPoint]:
        return [p for p in self.points if p.status == status]


def hover_text(t: TrialRecord) -> str:
    vals = ", ".join(f"{k}={number(float(v))}" for k, v in t.values.items())
    feas = "" if t.feasible else " (violates a constraint)"
    return f"trial {t.number}{feas}<br>{vals}<br>{describe(t.arch)}"


def front_data(view: StudyView, names: list[str]) -> FrontData:
    """The scatter of ``names`` (2 or 3 objectives) over all COMPLETE trials."""
    directions = [view.direction(n) for n in names]
    axes = tuple(axis_for(n, d, [t.values[n] for t in view.trials]) for n, d in zip(names, directions))
    status = statuses(view.trials, names, directions)
    points = tuple(
        PlotPoint(t.number, tuple(t.values[n] for n in names), s, hover_text(t)) for t, s in zip(view.trials, status)
    )
    return FrontData(axes, points, partial=len(set(names)) < len(view.objectives))


def projections(view: StudyView, names: list[str]) -> list[FrontData]:
    """Every pair of the chosen objectives and the study's own, each with its 2-D front."""
    pool = list(dict.fromkeys([*names, *view.objectives]))
    pool = [n for n in pool if n in OBJECTIVES and all(n in t.values for t in view.trials)]
    return [front_data(view, [a, b]) for a, b in itertools.combinations(pool, 2)]


# --------------------------------------------------------------------------- parallel coordinates


@dataclass(frozen=True)
class Dimension:
    """One axis of the parallel-coordinates plot; categorical labels carry tick texts."""

    name: str
    values: tuple[float, ...]
    ticks: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True)
class ParallelData:
    numbers: tuple[int, ...]
    statuses: tuple[str, ...]
    dimensions: tuple[Dimension, ...]


def parallel_data(view: StudyView) -> ParallelData:
    """Objectives first, then every searched label, one line per COMPLETE trial."""
    trials = view.trials
    names = [n for n in view.objectives if all(n in t.values for t in trials)]
    dims = []
    for n in names:  # objectives in their display units, titled like the scatter axes
        axis = axis_for(n, view.direction(n), [t.values[n] for t in trials])
        dims.append(Dimension(axis.short, tuple(t.values[n] * axis.scale for t in trials)))
    labels = list(dict.fromkeys(k for t in trials for k in t.searched))
    for label in labels:
        raw = [t.searched.get(label) for t in trials]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
            dims.append(Dimension(label, tuple(float(v) for v in raw)))
        else:
            cats = sorted({_cat(v) for v in raw})
            code = {c: i for i, c in enumerate(cats)}
            ticks = tuple((float(i), c) for i, c in enumerate(cats))
            dims.append(Dimension(label, tuple(float(code[_cat(v)]) for v in raw), ticks))
    status = statuses(trials, names, [view.direction(n) for n in names]) if names else ["dominated"] * len(trials)
    return ParallelData(tuple(t.number for t in trials), tuple(status), tuple(dims))


def _cat(v: Any) -> str:
    return "-" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


# --------------------------------------------------------------------------- hypervolume


@dataclass(frozen=True)
class HypervolumeHistory:
    """Hypervolume of the feasible front after each COMPLETE trial.

    Losses are scaled to [0, 1] per objective over all feasible trials (``low``/``high``, in
    loss form: maximized objectives negated) and bounded by ``reference`` (1.1 each).
    """

    objectives: tuple[str, ...]
    numbers: tuple[int, ...]
    values: tuple[float, ...]
    reference: tuple[float, ...]
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    message: str = ""


def hypervolume_history(view: StudyView, names: list[str] | None = None) -> HypervolumeHistory:
    names = [n for n in (names or list(view.objectives)) if all(n in t.values for t in view.trials)]
    ref = tuple([HV_REFERENCE] * len(names))
    if not names or not view.trials:
        return HypervolumeHistory(tuple(names), (), (), ref, message="no completed trials")
    directions = [view.direction(n) for n in names]
    feasible = [t for t in view.trials if t.feasible]
    if not feasible:
        return HypervolumeHistory(tuple(names), (), (), ref, message="no trial satisfies the constraints")
    loss = to_losses([[t.values[n] for n in names] for t in feasible], directions)
    low, high = loss.min(axis=0), loss.max(axis=0)
    scaled = dict(zip((t.number for t in feasible), normalized_losses(
        [[t.values[n] for n in names] for t in feasible], directions, (low, high))))
    numbers, values, seen, current = [], [], [], 0.0
    for t in view.trials:  # sorted by number
        if t.feasible:
            seen.append(scaled[t.number])
            current = hypervolume(np.array(seen), ref)
        numbers.append(t.number)
        values.append(current)
    return HypervolumeHistory(tuple(names), tuple(numbers), tuple(values), ref,
                              tuple(float(v) for v in low), tuple(float(v) for v in high))


# --------------------------------------------------------------------------- importances


@dataclass(frozen=True)
class Importances:
    """Per objective, searched label -> importance (PED-ANOVA, sums to 1), or why there are none."""

    by_objective: dict[str, dict[str, float]] = field(default_factory=dict)
    message: str = ""
    method: str = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)"
    trials: int = 0


def importance_data(view: StudyView) -> Importances:
    """Parameter importances for each objective, from the COMPLETE trials only."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    n = len(view.frozen)
    searched = {k for t in view.trials for k in t.searched}
    varied = [k for k in sorted(searched) if len({repr(t.searched.get(k)) for t in view.trials}) > 1]
    if n < MIN_TRIALS_FOR_IMPORTANCE:
        return Importances(message=f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed "
                                   f"trials; this study has {n}.")
    if not varied:
        return Importances(message="Parameter importances need a searched label that took more than one value.")
    names = list(view.objectives)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        study = optuna.create_study(directions=list(view.objectives.values()))
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(list(view.frozen))
    quantile = min(0.5, max(0.1, 2.0 / n))  # at least two trials in the top regime
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        sign = -1.0 if view.objectives[name] == "maximize" else 1.0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = get_param_importances(
                    study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile),
                    params=varied, target=lambda t, i=i, s=sign: s * t.values[i],
                )
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            return Importances(message=f"Parameter importances could not be computed: {exc}")
        out[name] = {k: (0.0 if not math.isfinite(v) else float(v)) for k, v in imp.items()}
    return Importances(by_objective=out, trials=n)


# --------------------------------------------------------------------------- a supernet study's training curve


@dataclass(frozen=True)
class SupernetCurve:
    """Phase 1 of a supernet study: per round the training loss, and where evaluated the accuracy of
    the largest and the smallest subnet (batch-norm statistics pooled from the clients)."""

    rounds: tuple[int, ...]
    train_loss: tuple[float, ...]
    evaluated: tuple[int, ...]
    accuracy_largest: tuple[float, ...]
    accuracy_smallest: tuple[float, ...]
    client_epochs: int
    comm_bytes: int


def supernet_curve(view: StudyView) -> SupernetCurve | None:
    rounds = view.supernet.get("rounds") or []
    if not rounds:
        return None
    done = [r for r in rounds if r.get("accuracy_largest") is not None]
    return SupernetCurve(
        rounds=tuple(int(r["round"]) for r in rounds),
        train_loss=tuple(float(r["train_loss"]) if r.get("train_loss") is not None else math.nan for r in rounds),
        evaluated=tuple(int(r["round"]) for r in done),
        accuracy_largest=tuple(float(r["accuracy_largest"]) for r in done),
        accuracy_smallest=tuple(float(r["accuracy_smallest"]) for r in done),
        client_epochs=sum(int(r.get("client_epochs", 0)) for r in rounds),
        comm_bytes=sum(int(r.get("download_bytes", 0)) + int(r.get("upload_bytes", 0)) for r in rounds),
    )


# --------------------------------------------------------------------------- the whole report


@dataclass(frozen=True)
class Report:
    """Everything the HTML report and the PNGs show."""

    study: str
    storage: str
    objectives: dict[str, str]
    chosen: tuple[str, ...]
    states: dict[str, int]
    constraints: dict[str, int]
    main: FrontData
    pairs: tuple[FrontData, ...]
    parallel: ParallelData
    hypervolume: HypervolumeHistory
    importances: Importances
    front_table: tuple[dict[str, Any], ...]
    supernet: SupernetCurve | None = None
    privacy: str = ""  # the study's [privacy] settings (``PrivacyConfig.describe``); "" when off


def build_report(view: StudyView, objectives: list[str] | None = None) -> Report:
    """Compute every plot's data for ``view``.

    Raises:
        ConfigError: no completed trials, or bad ``objectives`` (see ``choose_objectives``).
    """
    if not view.trials:
        raise ConfigError(f"study {view.name!r} in {view.storage} has no completed trials; nothing to plot")
    chosen = choose_objectives(view, objectives)
    main = front_data(view, chosen)
    study_names = list(view.objectives)
    status = statuses(view.trials, study_names, [view.direction(n) for n in study_names])
    table = tuple(
        {"number": t.number, **{n: t.values[n] for n in study_names}, "compression": t.compression,
         "arch": describe(t.arch)}
        for t, s in zip(view.trials, status) if s == "front"
    )
    return Report(
        study=view.name, storage=view.storage, objectives=dict(view.objectives), chosen=tuple(chosen),
        states=dict(view.states), constraints=dict(view.constraints), main=main,
        pairs=tuple(projections(view, chosen)), parallel=parallel_data(view),
        hypervolume=hypervolume_history(view), importances=importance_data(view), front_table=table,
        supernet=supernet_curve(view),
        privacy=view.config.privacy.describe() if view.config is not None else "",
    )
