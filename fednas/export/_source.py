"""What gets exported: a trained model with its record, taken from a stored trial."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fednas.config import ConfigError, StudyConfig
from fednas.plot._pareto import knee_index
from fednas.plot._study import StudyView, TrialPoint, read_study
from search_spaces import MobileNetArch

__all__ = ["PICKS", "ModelSource", "pick_trial", "source_from_trial"]

METRICS = ("accuracy", "macs", "params", "bytes", "comm_bytes", "upload_bytes", "download_bytes")


@dataclass(frozen=True)
class ModelSource:
    """A trained network and everything the bundle records about it.

    Attributes:
        arch: the architecture.
        state: the final global model's state dict.
        config: the study config whose data and federation trained it.
        metrics: accuracy, MACs, parameters, bytes and communication as measured in training.
        objectives: objective name -> {"direction", "value"} (empty for ``fednas train``).
        labels: every label of the candidate (architecture and any compression settings).
        searched: the labels the study searched (Optuna's params).
        rounds: per-round records of the federated run.
        origin: where it came from (storage, study, trial; or the training run).
        prune_masks: for a run the server pruned, the channel masks that rebuild its structure.
    """

    arch: MobileNetArch
    state: dict[str, torch.Tensor]
    config: StudyConfig
    metrics: dict[str, Any]
    objectives: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    searched: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    prune_masks: str = ""  # channel masks of a run the server pruned (``fednas.compress.encode_channel_masks``)
    origin: dict[str, Any] = field(default_factory=dict)


def _front(view: StudyView) -> list[TrialPoint]:
    from fednas.plot._data import statuses

    names = list(view.objectives)
    status = statuses(view.trials, names, [view.direction(n) for n in names])
    return [t for t, s in zip(view.trials, status) if s == "front"]


def _knee(view: StudyView, front: list[TrialPoint]) -> TrialPoint:
    names = list(view.objectives)
    return front[knee_index([[t.values[n] for n in names] for t in front], [view.direction(n) for n in names])]


def _best_accuracy(view: StudyView, front: list[TrialPoint]) -> TrialPoint:
    return max(front, key=lambda t: (t.values.get("accuracy", float("-inf")), -t.number))


def _smallest(view: StudyView, front: list[TrialPoint]) -> TrialPoint:
    inf = float("inf")
    return min(front, key=lambda t: (t.values.get("params", inf), t.values.get("macs", inf), t.number))


# Ways to choose one member of the (feasible) Pareto front.
PICKS: dict[str, Callable[[StudyView, list[TrialPoint]], TrialPoint]] = {
    "knee": _knee,
    "best-accuracy": _best_accuracy,
    "smallest": _smallest,
}


def pick_trial(view: StudyView, *, trial: int | None = None, pick: str | None = None) -> TrialPoint:
    """The trial to export: by number, or picked from the feasible Pareto front.

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
    front = _front(view)
    if not front:
        why = "no completed trials" if not view.trials else "no completed trial satisfies the constraints"
        raise ConfigError(f"study {view.name!r} in {view.storage} has an empty Pareto front ({why}); nothing to export")
    return PICKS[pick](view, front)


def weights_path(view: StudyView, t: TrialPoint) -> Path:
    """The safetensors file of a trial's final global model.

    Raises:
        ConfigError: the trial has no weights or the file is missing.
    """
    artifact = t.attrs.get("weights_artifact")
    if not artifact or not view.artifacts_dir:
        raise ConfigError(f"trial {t.number} of study {view.name!r} has no stored weights")
    path = Path(view.artifacts_dir) / str(artifact)
    if not path.is_file():
        raise ConfigError(f"trial {t.number}: weights file {path} not found (study attribute artifacts_dir)")
    return path


def source_from_trial(storage: str, study: str, *, trial: int | None = None, pick: str | None = None) -> ModelSource:
    """Read the chosen trial's record and weights (the study is only read).

    Raises:
        ConfigError / StorageError: see ``read_study`` and ``pick_trial``.
    """
    from safetensors.torch import load_file

    view = read_study(storage, study)
    chosen = pick_trial(view, trial=trial, pick=pick)
    if view.config is None:
        raise ConfigError(f"study {study!r} has no stored fednas config; it was not made by `fednas search`")
    try:
        arch = MobileNetArch.from_dict(chosen.arch)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trial {chosen.number}: stored architecture is invalid ({exc})") from None
    state = load_file(str(weights_path(view, chosen)))
    return ModelSource(
        arch=arch,
        state=state,
        config=view.config,
        metrics={k: chosen.attrs[k] for k in METRICS if k in chosen.attrs},
        objectives={n: {"direction": d, "value": chosen.values[n]} for n, d in view.objectives.items()},
        labels=dict(chosen.labels),
        searched=dict(chosen.params),
        rounds=list(chosen.attrs.get("rounds", [])),
        prune_masks=str(chosen.attrs.get("prune_masks", "")),
        origin={"storage": storage, "study": study, "trial": chosen.number, "picked": pick or "",
                "weights_artifact": chosen.attrs.get("weights_artifact", "")},
    )
