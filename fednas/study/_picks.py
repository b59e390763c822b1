"""Choosing one trial of a finished study: by number, or picked from its Pareto front."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fednas._errors import ConfigError
from fednas.study._front import knee_index
from fednas.study._read import StudyView
from fednas.study._record import TrialRecord

__all__ = ["PICKS", "artifact_path", "pick_trial", "weights_path"]


def _knee(view: StudyView, front: list[TrialRecord]) -> TrialRecord:
    names = list(view.objectives)
    return front[knee_index([[t.objectives[n] for n in names] for t in front], [view.direction(n) for n in names])]


def _best_accuracy(view: StudyView, front: list[TrialRecord]) -> TrialRecord:
    return max(front, key=lambda t: (t.values.get("accuracy", float("-inf")), -t.number))


def _smallest(view: StudyView, front: list[TrialRecord]) -> TrialRecord:
    inf = float("inf")
    return min(front, key=lambda t: (t.values.get("params", inf), t.values.get("macs", inf), t.number))


# Ways to choose one member of the (feasible) Pareto front.
PICKS: dict[str, Callable[[StudyView, list[TrialRecord]], TrialRecord]] = {
    "knee": _knee,
    "best-accuracy": _best_accuracy,
    "smallest": _smallest,
}


def pick_trial(view: StudyView, *, trial: int | None = None, pick: str | None = None) -> TrialRecord:
    """The trial to export or retrain: by number, or picked from the feasible Pareto front.

    "knee" is the front member closest to the ideal point once each objective is scaled to
    [0, 1] over the front; "best-accuracy" has the highest accuracy; "smallest" the fewest
    parameters (then MACs).

    Raises:
        ConfigError: unknown number or pick, a trial that did not complete, an empty front.
    """
    if (trial is None) == (pick is None):
        raise ConfigError("expected exactly one of --trial N and --pick " + "|".join(PICKS))
    if trial is not None:
        found = view.trial(trial)
        if found is not None:
            return found
        if trial in view.incomplete:
            raise ConfigError(f"--trial {trial}: trial {trial} of study {view.name!r} is {view.incomplete[trial]}; "
                              "only completed trials have weights")
        done = ", ".join(str(t.number) for t in view.trials) or "none"
        raise ConfigError(f"--trial {trial}: no such trial in study {view.name!r} (completed trials: {done})")
    if pick not in PICKS:
        raise ConfigError(f"--pick {pick}: unknown; valid: {', '.join(PICKS)}")
    front = view.front()
    if not front:
        why = "no completed trials" if not view.trials else "no completed trial satisfies the constraints"
        raise ConfigError(f"study {view.name!r} in {view.storage} has an empty Pareto front ({why}); nothing to export")
    return PICKS[pick](view, front)


def weights_path(view: StudyView, t: TrialRecord) -> Path:
    """The safetensors file of a trial's final global model.

    Raises:
        ConfigError: the trial has no weights or the file is missing.
    """
    artifact = t.attrs.get("weights_artifact")
    if not artifact or not view.artifacts_dir:
        raise ConfigError(f"trial {t.number} of study {view.name!r} has no stored weights")
    return artifact_path(view, str(artifact), f"trial {t.number}: weights file")


def artifact_path(view: StudyView, artifact: str, what: str) -> Path:
    """The file of one of the study's artifacts (a trial's weights, the supernet's).

    Raises:
        ConfigError: the study has no artifact folder or none holds the file; the message starts with ``what``.
    """
    folders = view.artifact_dirs or ((view.artifacts_dir,) if view.artifacts_dir else ())
    for folder in folders:
        path = Path(folder) / artifact
        if path.is_file():
            return path
    looked = ", ".join(folders) or "no artifact folder"
    raise ConfigError(f"{what} {artifact} not found in {looked} (study attribute artifacts_dir)")
