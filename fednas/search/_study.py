"""Running a study: opening (or resuming) it, its workers, its trial loop.

Reading a finished study back (its records and Pareto front) is ``fednas.study``'s job;
``load_front`` and ``summarize`` are re-exported from there.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from fednas._cores import LocalWorkers
from fednas._interrupt import Interrupted, checkpoint, requested_signal, stop_at_safe_points
from fednas._seeds import derive_seed
from fednas.config import ConfigError, StudyConfig
from fednas.fl import federated_data
from fednas.search._objective import TrialFailed, TrialRunner
from fednas.search._progress import Progress, objective_text
from fednas.search._recovery import enqueue_retry, recover_dead_workers
from fednas.search._supernet import SubnetTrialRunner, finetune_front, supernet_spec, train_supernet
from fednas.fl import SubnetEvaluator
from fednas import study as _study
from fednas.study import (CONFIG_ATTR, TrialRecord, artifact_dir_for, artifact_store, load_front, read_study,
                          StorageError, probe_writable, record_of, storage_file, study_names)
from search_spaces import get_search_space, with_compression

__all__ = ["check_study", "SearchInterrupted", "SearchResult", "TrialSummary", "load_front", "open_storage", "run_search",
           "summarize"]

TrialSummary = TrialRecord  # the name of earlier versions


@dataclass(frozen=True)
class SearchResult:
    """What a search left in its study: completed trials, the front, and whether it reached ``study.trials``
    (False when ``study.max_attempts`` trials were used up first, e.g. because every attempt failed)."""

    study_name: str
    storage: str
    completed: int
    front: list[TrialRecord]
    reached: bool = True
    failed: int = 0
    pruned: int = 0


def open_storage(url: str, *, create: bool = True, heartbeat: int = 0) -> optuna.storages.BaseStorage:
    """``fednas.study.open_storage`` for searching: a trial whose heartbeats stop is retried."""
    return _study.open_storage(url, create=create, heartbeat=heartbeat, on_stale=enqueue_retry)


def _sampler(config: StudyConfig, n_existing: int, salt: str = "") -> optuna.samplers.BaseSampler:
    # A resumed study re-seeds from its history size, so it does not replay the same draws.
    import importlib

    from fednas.samplers import SAMPLERS

    seed = derive_seed(config.study.seed, "sampler", n_existing, salt)
    spec = SAMPLERS[config.study.sampler]
    module, _, cls = spec.cls.partition(":")
    kwargs: dict[str, Any] = {"seed": seed, **dict(spec.options)}
    if spec.population:
        kwargs["population_size"] = config.study.population_size
    with warnings.catch_warnings():  # GPSampler and NSGAIIISampler are experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return getattr(importlib.import_module(module), cls)(**kwargs)


def _open_study(config: StudyConfig, storage_url: str, salt: str = "") -> optuna.Study:
    storage = open_storage(storage_url, heartbeat=config.study.heartbeat)
    name = config.study.name
    directions = list(config.objectives.values())
    n_existing = 0
    if name in study_names(storage):
        stored = optuna.load_study(study_name=name, storage=storage)
        _check_resumable(config, stored, storage_url)
        n_existing = len(stored.trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=storage, directions=directions,
        sampler=_sampler(config, n_existing, salt), load_if_exists=True,
    )
    if n_existing == 0:
        study.set_user_attr("objectives", list(config.objectives))
        study.set_user_attr(CONFIG_ATTR, config.to_dict())
        if config.study.warm_start and "warm_start" not in study.user_attrs:
            from fednas.search._warm import warm_start

            warm_start(study, config)
    return study


# What may differ when a study is resumed: how long and how it searches, where it writes, which
# device it uses, and the bounds (stored anew). Everything else decides what a trial's figures mean.
RESUMABLE_CHANGES = {"study": ("storage", "trials", "sampler", "population_size", "max_attempts", "artifacts",
                               "heartbeat", "warm_start", "warm_start_study", "warm_start_trials"),
                     "federation": ("device", "rule_options"), "constraints": None}


def _check_stored(config: StudyConfig) -> None:
    """``--check``: the config may resume the study already in its storage (objectives, data, space...)."""
    try:
        storage = _study.open_storage(config.storage, create=False)
    except StorageError:
        return  # no storage yet: a new study
    name = config.study.name
    if name not in study_names(storage):
        return
    _check_resumable(config, optuna.load_study(study_name=name, storage=storage), config.storage, store=False)


def _check_resumable(config: StudyConfig, stored: optuna.Study, storage_url: str, *, store: bool = True) -> None:
    """Refuse a resume whose data, space, federation or seed differ from the stored study's; store the rest.

    Raises:
        ConfigError: naming the first key that differs, the stored value and the new one.
    """
    from fednas.study import config_from_stored

    name = stored.study_name
    stored_names = stored.user_attrs.get("objectives")
    if stored_names is not None and stored_names != list(config.objectives):
        raise ConfigError(f"objectives: study {name!r} in {storage_url} was created with {stored_names}; "
                          f"got {list(config.objectives)} (use another --study name)")
    if [d.name.lower() for d in stored.directions] != list(config.objectives.values()):
        raise ConfigError(f"objectives: directions differ from the stored study {name!r}")

    try:
        before = config_from_stored(stored.user_attrs.get(CONFIG_ATTR))
    except ConfigError:
        return  # a stored config this version cannot read: nothing to compare with
    if before is None:
        return
    old, new = before.to_dict(), config.to_dict()
    for section, keys in RESUMABLE_CHANGES.items():
        for d in (old, new):
            if keys is None:
                d.pop(section, None)
            else:
                d[section] = {k: v for k, v in d[section].items() if k not in keys}
    for key, was, now in _differences(old, new):
        raise ConfigError(f"{key}: study {name!r} in {storage_url} was made with {was!r}; got {now!r} "
                          "(a resumed study keeps its data, space, federation and seed; use another --study name)")
    if store and stored.user_attrs.get(CONFIG_ATTR) != config.to_dict():
        stored.set_user_attr(CONFIG_ATTR, config.to_dict())  # the new trials' target, sampler, bounds


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            out += _differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [(prefix, old, new)]


def _record_artifacts_dir(study: optuna.Study, folder: Path, *, moved_with_storage: bool) -> None:
    """Store where this search writes weights, so export and plot read the same place.

    A study whose storage file was moved or copied writes beside its new location; the
    folder stored before is kept in ``artifacts_dirs_before`` (its trials' weights may
    still be there). Workers of a server storage without ``study.artifacts`` each write to
    their own default folder, and the first one stored is kept.
    """
    here = str(folder.resolve())
    stored = study.user_attrs.get("artifacts_dir")
    if stored == here or (stored and not moved_with_storage):
        return
    if stored:
        before = [d for d in [stored, *study.user_attrs.get("artifacts_dirs_before", [])] if d != here]
        study.set_user_attr("artifacts_dirs_before", list(dict.fromkeys(before)))
    study.set_user_attr("artifacts_dir", here)


def run_search(
    config: StudyConfig, *, progress: bool = True, jobs: int = 1, prefix: str = "", worker: str = ""
) -> SearchResult:
    """Run (or resume) the study described by ``config`` until it has ``study.trials`` completed trials.

    Args:
        config: a validated study config (see ``fednas.load_config``).
        progress: print a live status line to stderr.
        jobs: worker processes sharing the study (each runs trials one at a time).
        prefix: text in front of each status line (a worker's name).
        worker: a name that makes this worker's sampler draw differently from the others'
            (``--jobs`` sets it; hand-started workers rely on duplicate detection).

    Raises:
        ConfigError: constraints that no candidate of the space can meet.
        SearchInterrupted: on Ctrl-C, after marking the running trial(s) failed and
            enqueueing their candidates again.
    """
    storage_url = config.storage
    space, data = _prepare(config)
    probe_writable(storage_url)
    study = _open_study(config, storage_url, worker)
    folder = Path(config.study.artifacts) if config.study.artifacts else artifact_dir_for(storage_url, config.study.name)
    _record_artifacts_dir(study, folder, moved_with_storage=bool(config.study.artifacts) or storage_file(storage_url) is not None)
    store = artifact_store(folder)
    supernet_mode = config.study.mode == "supernet"
    reporter = Progress(
        target=config.study.trials, done=_count(study, TrialState.COMPLETE), rounds=config.federation.rounds,
        enabled=progress, prefix=prefix
    )
    if jobs > 1:
        if supernet_mode:  # phase 1 once, here; the workers load the trained supernet
            with _phase():
                train_supernet(study, config, store, data, reporter)
        _run_workers(config, jobs, progress)
    else:
        with LocalWorkers() as cores:
            if supernet_mode:
                with _phase():
                    supernet = train_supernet(study, config, store, data, reporter)
                with SubnetEvaluator(supernet_spec(config), supernet) as evaluator:
                    runner = SubnetTrialRunner(config, space, data, store, reporter, cores, evaluator=evaluator)
                    _optimize(study, runner, config, reporter)
            elif config.study.fidelity == "halving":
                _optimize_halving(study, TrialRunner(config, space, data, store, reporter, cores), reporter)
            else:
                _optimize(study, TrialRunner(config, space, data, store, reporter, cores), config, reporter)
    if supernet_mode and not worker and _count(study, TrialState.COMPLETE) >= config.study.trials:
        with _phase():
            finetune_front(study, config, store, reporter)
    front = read_study(storage_url, config.study.name).front()
    if config.study.fidelity == "halving":
        from fednas.search._halving import count_evaluated

        reached = count_evaluated(study) >= config.study.trials
    else:
        reached = _count(study, TrialState.COMPLETE) >= config.study.trials
    return SearchResult(config.study.name, storage_url, _count(study, TrialState.COMPLETE), front, reached,
                        _count(study, TrialState.FAIL), _count(study, TrialState.PRUNED))


@contextlib.contextmanager
def _phase() -> Iterator[None]:
    """A supernet study's phase 1 or 3: Ctrl-C / SIGTERM stop at the next safe point; what was stored stays
    (the rounds or fine-tuned trials so far) and the same command resumes."""
    try:
        with stop_at_safe_points():
            yield
    except KeyboardInterrupt as exc:
        raise SearchInterrupted(getattr(exc, "signum", signal.SIGINT), []) from None


def _prepare(config: StudyConfig) -> tuple[Any, Any]:
    """Everything that can be checked before the storage is touched: space, data, bounds."""
    from fednas.train import resolve_device

    try:
        resolve_device(config.federation.device)
    except ValueError as exc:
        raise ConfigError(f"federation.device: {exc}") from None
    space = with_compression(get_search_space(config.space.name, config.space.options))
    data = federated_data(config.data, config.federation.num_clients, config.study.seed)
    _check_feasible(config, space, data)
    _check_teachers(config, data)
    _check_latency_table(config)
    return space, data


def _check_latency_table(config: StudyConfig) -> None:
    """A ``[latency] table`` the study predicts from reads and checks (before any trial needs it)."""
    from fednas import pipeline

    latency = pipeline.latency_config(config)
    if latency is not None and latency.table:
        from fednas.latency import TableError, cached_table

        try:
            cached_table(latency.table)
        except TableError as exc:
            raise ConfigError(f"latency.table: {exc}") from None


def _check_teachers(config: StudyConfig, data: Any) -> None:
    """Each ``kd_teacher`` bundle the space can choose loads and takes the data's images to its classes."""
    value = config.space.labels.get("kd_teacher", "")
    paths = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
    import torch

    from fednas.models import load_model

    for path in dict.fromkeys(p for p in paths if p):
        try:
            teacher = load_model(path)
        except ValueError as exc:
            raise ConfigError(f"space.labels.kd_teacher: {exc}") from None
        try:
            with torch.no_grad():
                logits = teacher(data.train.x[:2])
        except RuntimeError as exc:
            shape = "x".join(str(n) for n in data.train.x.shape[1:])
            raise ConfigError(f"space.labels.kd_teacher: {path}: the teacher does not take the data's "
                              f"{shape} images ({str(exc).splitlines()[0]})") from None
        if logits.shape[-1] != data.train.num_classes:
            raise ConfigError(f"space.labels.kd_teacher: {path}: the teacher has {logits.shape[-1]} classes; "
                              f"expected the data's {data.train.num_classes}")


def check_study(config: StudyConfig) -> str:
    """Validate ``config`` with its data and bounds, write nothing; returns a one-line summary.

    Raises:
        ConfigError, DataError: the same one-line errors a search would raise.
    """
    space, data = _prepare(config)
    probe_writable(config.storage)
    _check_stored(config)
    sizes = [len(s) for s in data.shards]
    return (
        f"{config.source or 'config'}: OK; {len(space.resolve())} labels, data {data.train.name or config.data.source} "
        f"{len(data.train)} train / {len(data.test)} test, {data.train.in_channels}x{data.train.resolution}x"
        f"{data.train.resolution}, {data.train.num_classes} classes, {len(sizes)} clients "
        f"({min(sizes)}-{max(sizes)} samples), storage {config.storage}"
    )


def _check_feasible(config: StudyConfig, space: Any, data: Any) -> None:
    """Bounds on size (and device tiers' budgets) that even the smallest candidate of the space exceeds are a
    config error."""
    bounds = {k: v for k, v in config.constraints.active().items() if k in ("macs", "params", "bytes")}
    tiers = config.federation.tier_list()
    if not bounds and not tiers:
        return
    from fednas import pipeline
    from search_spaces import domain_from_config

    overrides = {k: domain_from_config(v, k) for k, v in config.space.labels.items()}
    smallest = space.corner("low", overrides)
    candidate = pipeline.Candidate(space.decode(smallest), space.settings(smallest), smallest)
    try:
        cost = pipeline.build(candidate, data).cost.to_dict()
    except pipeline.CandidateError as exc:
        raise ConfigError(f"space: the smallest candidate of the space {exc}") from None
    for tier in tiers:
        if not tier.admits(cost["macs"], cost["params"]):
            raise ConfigError(f"federation.tiers: tier {tier.describe()} cannot run even the smallest subnet of the "
                              f"space ({cost['macs']:,} MACs, {cost['params']:,} parameters)")
    for name, bound in bounds.items():
        if cost[name] > bound:
            raise ConfigError(
                f"constraints.max_{name}: {bound:,} is below the smallest candidate of the space "
                f"({cost[name]:,} {name}); expected at least {cost[name]:,}"
            )


def _worker_main(config: StudyConfig, progress: bool, index: int) -> None:
    import os

    # The parent forwards Ctrl-C once; a terminal's SIGINT to the whole process group
    # would otherwise reach each worker twice and force it to stop mid-write.
    os.setpgrp()
    try:
        run_search(config, progress=progress, prefix=f"[w{index}] ", worker=f"w{index}")
    except KeyboardInterrupt as exc:
        raise SystemExit(128 + getattr(exc, "signum", signal.SIGINT)) from None


def _run_workers(config: StudyConfig, jobs: int, progress: bool) -> None:
    """Start ``jobs`` processes on the same storage and wait for them.

    A SIGINT or SIGTERM to this process is forwarded to every live worker; each marks
    its running trial failed, enqueues it again and exits with 128 + the signal number.
    """
    import multiprocessing as mp
    import os

    ctx = mp.get_context("spawn")  # each worker sizes its torch threads to its share of the cores
    procs = [ctx.Process(target=_worker_main, args=(config, progress, i)) for i in range(jobs)]

    def forward(signum: int) -> None:
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    with stop_at_safe_points(forward):
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=0.2)
        signum = requested_signal()
    stopped = [p.exitcode - 128 for p in procs if p.exitcode in (128 + signal.SIGINT, 128 + signal.SIGTERM)]
    if signum is not None or stopped:
        raise SearchInterrupted(signum or stopped[0], retried=None)
    bad = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode]
    if bad:
        raise RuntimeError(f"search worker(s) failed: {', '.join(f'w{i} exit {c}' for i, c in bad)}")


class SearchInterrupted(Interrupted):
    """Ctrl-C or SIGTERM during a search; the trial that was running was marked failed and enqueued again.

    Attributes:
        signum: the signal that stopped the search.
        retried: numbers of the interrupted trials enqueued again (empty when the signal came
            between trials; None when worker processes handled it and did not say).
    """

    def __init__(self, signum: int = signal.SIGINT, retried: list[int] | None = None) -> None:
        super().__init__(signum)
        self.retried = retried


def _optimize(study: optuna.Study, runner: TrialRunner, config: StudyConfig, reporter: Progress) -> None:
    """Run trials one at a time until the study holds ``study.trials`` completed trials.

    Other workers may share the study: a worker does not start a trial when the running
    ones would already reach the target; it waits for them instead (and takes over their
    slots if their workers die), so together they finish the target without overshooting.
    Ctrl-C or SIGTERM stops at the next safe point (see ``fednas._interrupt``): the running
    trial is failed with the reason, enqueued again, and ``SearchInterrupted`` raised.
    """
    target = config.study.trials
    attempts = config.study.max_attempts or 3 * target + 10
    callbacks = [_report(reporter, config)]
    optuna_log = logging.getLogger("optuna")
    level = optuna_log.level
    optuna_log.setLevel(logging.ERROR)  # failed trials are reported by Progress, with their reason
    runner.interrupted = None
    try:
        with stop_at_safe_points():
            while True:
                checkpoint()
                recover_dead_workers(study)
                complete = _count(study, TrialState.COMPLETE)
                if complete >= target:
                    return
                finished = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.PRUNED)))
                if complete + finished >= attempts:
                    reporter.note(f"stopping: {attempts} attempts made (study.max_attempts), {complete} completed")
                    return
                if complete + _count(study, TrialState.RUNNING) >= target:
                    _wait_for_others(study)
                    continue
                study.optimize(runner, n_trials=1, catch=TrialFailed, callbacks=callbacks)
    except KeyboardInterrupt as exc:
        retried = _requeue_interrupted(study, runner.interrupted)
        raise SearchInterrupted(getattr(exc, "signum", signal.SIGINT), retried) from None
    finally:
        optuna_log.setLevel(level)


def _optimize_halving(study: optuna.Study, runner: TrialRunner, reporter: Progress) -> None:
    """Brackets of successive halving (``fednas.search._halving``) until ``study.trials`` candidates are
    evaluated; Ctrl-C or SIGTERM fails the bracket's running trials, enqueues them again and stops."""
    from fednas.search._halving import HalvingRunner, run_brackets

    halving = HalvingRunner(runner)
    optuna_log = logging.getLogger("optuna")
    level = optuna_log.level
    optuna_log.setLevel(logging.ERROR)
    try:
        with stop_at_safe_points():
            run_brackets(study, halving, reporter)
    except KeyboardInterrupt as exc:
        raise SearchInterrupted(getattr(exc, "signum", signal.SIGINT), halving.requeue(study)) from None
    finally:
        optuna_log.setLevel(level)


def _wait_for_others(study: optuna.Study, poll: float = 2.0) -> None:
    end = time.monotonic() + poll
    while time.monotonic() < end:
        checkpoint()
        time.sleep(0.1)


def _requeue_interrupted(study: optuna.Study, number: int | None) -> list[int]:
    """Enqueue the candidate of the trial this worker was running when interrupted."""
    if number is None:
        return []
    storage = study._storage
    trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
    if trial.state == TrialState.RUNNING:  # stopped before Optuna recorded the failure
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        trial = storage.get_trial(trial._trial_id)
    if trial.state != TrialState.FAIL:
        return []
    enqueue_retry(study, trial)
    return [number]


def _report(reporter: Progress, config: StudyConfig):
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        s = summarize(trial, config.objectives)
        text = objective_text(s.objectives) if s.objectives else s.reason
        reporter.trial_finished(trial.state.name, text)

    return callback


def _count(study: optuna.Study, state: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


def summarize(trial: FrozenTrial, objectives: dict[str, str] | list[str]) -> TrialRecord:
    """Flatten a trial: values by objective name, labels (searched and fixed), metrics (``fednas.study.record_of``)."""
    return record_of(trial, list(objectives))

