"""Reading a study, read-only: the one reader that search, pareto, export, plot and dashboard share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from fednas._errors import ConfigError
from fednas.config import StudyConfig, parse_config
from fednas.objectives import OBJECTIVES
from fednas.study._front import statuses
from fednas.study._record import TrialRecord, record_of
from fednas.study._storage import artifact_dir_for, open_storage, storage_file, study_names

__all__ = ["CONFIG_ATTR", "FINETUNE_ATTR", "SUPERNET_ATTR", "StudyView", "tier_fronts", "config_from_stored", "load_front", "metric_direction", "open_study",
           "read_study"]

CONFIG_ATTR = "fednas_config"  # study user attribute: the validated config it was made with
SUPERNET_ATTR = "supernet"  # supernet study: the supernet's rounds (training curve) and its weights artifact
FINETUNE_ATTR = "finetuned"  # supernet study: trial number -> its fine-tuning (accuracy, bytes, weights artifact)


def metric_direction(name: str) -> str:
    """The natural direction of a fednas metric (accuracy up, every cost down)."""
    return OBJECTIVES[name].direction


@dataclass(frozen=True)
class StudyView:
    """A study as pareto, export and plotting need it, detached from the storage.

    Attributes:
        name: study name.
        storage: storage URL it was read from.
        objectives: objective name -> direction, in the study's order.
        records: every trial, by number.
        constraints: active upper bounds (metric name -> bound).
        config: the stored study config (None for studies made outside fednas).
        artifacts_dir: folder of the study's artifact store ("" if none): the first of
            ``artifact_dirs`` that exists.
        artifact_dirs: where a trial's artifacts may be, in order: the stored folder (where
            the last search wrote), the folders it replaced (a study resumed after its storage
            file was moved or copied), and the default one beside a SQLite/journal file.
        frozen: the COMPLETE trials as Optuna stores them (for ``optuna.importance``).
        supernet: a supernet study's phase 1 (``rounds``: one dict per round, the training curve;
            empty for a from-scratch study).
    """

    name: str
    storage: str
    objectives: dict[str, str]
    records: tuple[TrialRecord, ...]
    constraints: dict[str, int]
    config: StudyConfig | None
    artifacts_dir: str
    artifact_dirs: tuple[str, ...] = ()
    frozen: tuple[FrozenTrial, ...] = field(default=(), repr=False)
    supernet: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def trials(self) -> tuple[TrialRecord, ...]:
        """The COMPLETE trials, by number."""
        return tuple(t for t in self.records if t.complete)

    @property
    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.records:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    @property
    def incomplete(self) -> dict[int, str]:
        """Trial number -> "STATE: reason" of the trials that did not complete."""
        return {t.number: t.state + (f": {t.reason}" if t.reason else "") for t in self.records if not t.complete}

    def direction(self, metric: str) -> str:
        """The study's direction for an objective, else the metric's natural one."""
        return self.objectives.get(metric) or metric_direction(metric)

    def trial(self, number: int) -> TrialRecord | None:
        return next((t for t in self.trials if t.number == number), None)

    def front(self, tier: str | None = None) -> list[TrialRecord]:
        """The Pareto front of the study's objectives over its feasible COMPLETE trials, by number.

        ``tier``: only the subnets that device tier can run (a supernet study with ``federation.tiers``).
        """
        names = list(self.objectives)
        trials = [t for t in self.trials if all(n in t.objectives for n in names)]
        if tier is not None:
            known = [t["name"] for t in self.config.federation.tiers] if self.config else []
            if tier not in known:
                raise ConfigError(f"--tier {tier!r}: study {self.name!r} has no such device tier; tiers: "
                                  f"{', '.join(known) or 'none'}")
            trials = [t for t in trials if tier in (t.attrs.get("tiers") or [])]
        status = statuses(trials, names, [self.direction(n) for n in names])
        return [t for t, s in zip(trials, status) if s == "front"]


def open_study(storage: str, study_name: str) -> optuna.Study:
    """Load an existing study (nothing is created).

    Raises:
        StorageError: the storage cannot be opened (or a SQLite/journal file is missing).
        ConfigError: no study of that name in the storage.
    """
    st = open_storage(storage, create=False)
    names = study_names(st)
    if study_name not in names:
        raise ConfigError(f"study {study_name!r} not found in {storage}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=study_name, storage=st)


def read_study(storage: str, study_name: str) -> StudyView:
    """Read a study without writing to its storage (imports neither torch nor Flower).

    Raises:
        StorageError: the storage cannot be opened (or a SQLite/journal file is missing).
        ConfigError: no study of that name in the storage, or its stored config is invalid.
    """
    study = open_study(storage, study_name)
    attrs = study.user_attrs
    names = list(attrs.get("objectives") or [f"objective_{i}" for i in range(len(study.directions))])
    objectives = {n: d.name.lower() for n, d in zip(names, study.directions)}
    all_trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    config = config_from_stored(attrs.get(CONFIG_ATTR))
    finetuned = attrs.get(FINETUNE_ATTR) or {}
    dirs = _artifact_dirs(attrs, storage, study_name)
    return StudyView(
        name=study_name,
        storage=storage,
        objectives=objectives,
        records=tuple(_with_finetune(record_of(t, names), finetuned.get(str(t.number))) for t in all_trials),
        constraints=config.constraints.active() if config else {},
        config=config,
        artifacts_dir=next(iter(dirs), str(attrs.get("artifacts_dir", ""))),
        artifact_dirs=dirs,
        frozen=tuple(t for t in all_trials if t.state == TrialState.COMPLETE),
        supernet=dict(attrs.get(SUPERNET_ATTR) or {}),
    )


def tier_fronts(view: StudyView) -> dict[str, list[TrialRecord]]:
    """Device tier name -> the front of the subnets that tier can run (empty without tiers)."""
    tiers = view.config.federation.tiers if view.config else []
    return {t["name"]: view.front(t["name"]) for t in tiers}


def _with_finetune(record: TrialRecord, finetune: dict[str, Any] | None) -> TrialRecord:
    """A supernet trial's record: its inherited accuracy and, once fine-tuned, the fine-tuned accuracy and weights
    (``weights_artifact`` then names the fine-tuned weights; the inherited ones stay as ``weights_artifact_inherited``)."""
    from dataclasses import replace

    if "accuracy_inherited" not in record.attrs:
        return record
    metrics = {**record.metrics, "accuracy_inherited": record.attrs["accuracy_inherited"]}
    attrs = dict(record.attrs)
    if finetune and "accuracy" in finetune:
        metrics["accuracy_finetuned"] = finetune["accuracy"]
        metrics["finetune_comm_bytes"] = finetune["comm_bytes"]
        attrs.update(weights_artifact=finetune["weights_artifact"], weights_artifact_inherited=record.attrs.get(
            "weights_artifact"), finetuned=finetune)
    return replace(record, metrics=metrics, attrs=attrs)


def _artifact_dirs(attrs: dict[str, Any], storage: str, name: str) -> tuple[str, ...]:
    """The existing folders among the stored one, those it replaced and the default beside the storage file."""
    before = attrs.get("artifacts_dirs_before")
    candidates = [str(attrs.get("artifacts_dir", "")), *(before if isinstance(before, list) else [])]
    if storage_file(storage) is not None:
        candidates.append(str(artifact_dir_for(storage, name).resolve()))
    return tuple(dict.fromkeys(str(d) for d in candidates if d and Path(str(d)).is_dir()))


def load_front(storage: str, study_name: str, *, include_all: bool = False) -> list[TrialRecord]:
    """The Pareto front of a stored study (every trial with ``include_all``).

    Raises:
        StorageError, ConfigError: see ``read_study``.
    """
    view = read_study(storage, study_name)
    return list(view.records) if include_all else view.front()


def config_from_stored(doc: dict[str, Any] | None) -> StudyConfig | None:
    """Rebuild the ``StudyConfig`` stored with a study (its ``space`` is {name, options, labels}).

    Configs stored by earlier versions (flat strategy options) are read as they are.

    Raises:
        ConfigError: the stored config no longer validates (e.g. a key was renamed).
    """
    if not doc:
        return None
    doc = dict(doc)
    space = dict(doc.get("space") or {})
    doc["space"] = {"name": space.get("name", "mobilenet"), **space.get("options", {}), "labels": space.get("labels", {})}
    try:
        return parse_config(doc, source="")
    except ConfigError as exc:
        raise ConfigError(f"stored study config: {exc}") from None
