"""Keeping a study whole across crashes, interrupts and several workers.

* Each running trial records its worker (``host:pid``). Before each trial, and while
  waiting for other workers, a RUNNING trial whose worker process on this host is gone, or
  whose worker anywhere stopped sending heartbeats, is marked FAIL with the reason and its
  configuration is enqueued again.
* Heartbeats: RDB storages use Optuna's (timestamps from the database server's clock).
  Storages without them (journal files, possibly on NFS) get fednas's own: the worker
  bumps a counter in the trial's system attrs every interval, and an observer fails the
  trial when the counter has not moved for three intervals of the observer's own clock,
  so no two machines' clocks are ever compared.
* A RUNNING trial that no worker ever claimed (its process was killed between Optuna
  creating it and the worker recording itself, before any heartbeat) is failed once this
  process has watched it unclaimed for ``UNCLAIMED_GRACE`` seconds; without this, workers
  waiting for the running trials to reach the target would wait for it forever.
* A trial interrupted by Ctrl-C is marked FAIL by Optuna; it is enqueued again too, so the
  same command resumes with the same candidate.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from fednas._process import pid_alive

__all__ = ["WORKER_ATTR", "beating", "enqueue_retry", "recover_dead_workers", "this_worker"]

WORKER_ATTR = "worker"
BEAT_ATTR = "fednas_heartbeat"  # [count, interval seconds], on storages without Optuna heartbeats
GRACE_INTERVALS = 3
MAX_RETRY = 2
UNCLAIMED_GRACE = 30.0  # s; a worker claims its trial within milliseconds of Optuna creating it
# (study id, trial id) -> (last beat seen, this process's monotonic time when it was first seen)
_seen_beats: dict[tuple[int, int], tuple[object, float]] = {}
# (study id, trial id) -> this process's monotonic time when it first saw the trial unclaimed
_seen_unclaimed: dict[tuple[int, int], float] = {}


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def enqueue_retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Enqueue ``trial``'s sampled parameters again (at most ``MAX_RETRY`` times per lineage).

    Also the storage's heartbeat stale-trial callback. Like Optuna's
    ``RetryHeartbeatStaleTrialCallback`` the new WAITING trial records its lineage in the
    system attrs ``failed_trial`` (the first of the line) and ``retry_history``; unlike it,
    it copies nothing else of the failed trial: not its reason, worker, heartbeat or
    metrics, which would otherwise show on the retry once it completes.

    Returns:
        False when the lineage has used up its retries.
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        return False
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": trial.system_attrs.get("failed_trial", trial.number), "retry_history": history},
    ))
    return True


def recover_dead_workers(study: optuna.Study) -> list[int]:
    """Fail and re-enqueue RUNNING trials whose worker is gone; returns their numbers.

    A worker on this host is gone when its process is; a worker anywhere when its
    heartbeats stopped for the grace period (Optuna's on RDB storages, fednas's counter on
    others; ``study.heartbeat`` > 0).
    Each such trial gets a ``fail_reason`` saying which worker was lost and how.
    """
    host = socket.gethostname()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    lost: dict[int, str] = {}
    for trial in running:
        worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
        worker_host, _, pid = worker.rpartition(":")
        if worker_host == host and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            lost[trial._trial_id] = f"worker {worker} died during the trial"
    for trial, silent in _stale_heartbeats(study, running) + _silent_beats(study, running):
        worker = trial.user_attrs.get(WORKER_ATTR, "(unknown)")
        lost.setdefault(trial._trial_id, f"worker {worker} sent no heartbeat for {silent} s (host lost or process killed)")
    for trial in _unclaimed(study, running):
        lost.setdefault(trial._trial_id, f"no worker claimed the trial within {UNCLAIMED_GRACE:g} s "
                                         "(its process stopped as the trial started)")
    recovered = []
    storage = study._storage
    for trial_id, reason in lost.items():
        try:
            storage.set_trial_system_attr(trial_id, "fail_reason", reason)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # it finished meanwhile, or another worker failed it first
            continue
        trial = storage.get_trial(trial_id)
        enqueue_retry(study, trial)
        recovered.append(trial.number)
    return recovered


def _stale_heartbeats(study: optuna.Study, running: list[FrozenTrial]) -> list[tuple[FrozenTrial, int]]:
    """(trial, grace period in s) of the ``running`` trials whose Optuna heartbeats stopped.

    The same test ``optuna.storages.fail_stale_trials`` makes; done here first so the
    failed trial can say why (a finished trial's attributes can no longer be set).
    """
    storage = study._storage
    if not _has_optuna_heartbeats(storage):
        return []
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a cache
    grace = getattr(backend, "grace_period", None) or 2 * (storage.get_heartbeat_interval() or 0)
    stale = set(storage._get_stale_trial_ids(study._study_id))
    return [(t, int(grace)) for t in running if t._trial_id in stale]


def _has_optuna_heartbeats(storage: optuna.storages.BaseStorage) -> bool:
    return isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)


@contextmanager
def beating(trial: optuna.Trial, interval: float, *, asked: bool = False) -> Iterator[None]:
    """Within the block, beat for ``trial`` every ``interval`` s.

    A daemon thread bumps the trial's ``fednas_heartbeat`` system attr; it stops when the
    block ends. Nothing happens for ``interval <= 0``. On storages with Optuna heartbeats
    (RDB) Optuna beats inside ``study.optimize``; a trial made by ``study.ask`` (``asked``,
    successive halving's brackets) gets Optuna's own heartbeat from this thread instead, so
    Optuna's stale-trial check covers it too.
    """
    storage, trial_id = trial.study._storage, trial._trial_id
    optuna_beats = _has_optuna_heartbeats(storage)
    if interval <= 0 or (optuna_beats and not asked):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while True:
            try:
                if optuna_beats:
                    if storage.get_trial(trial_id).state.is_finished():
                        return
                    storage.record_heartbeat(trial_id)
                else:
                    storage.set_trial_system_attr(trial_id, BEAT_ATTR, [count, interval])
            except UpdateFinishedTrialError:
                return
            except Exception:  # a busy or briefly unreachable storage: try again next interval
                pass
            count += 1
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"fednas-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _unclaimed(study: optuna.Study, running: list[FrozenTrial]) -> list[FrozenTrial]:
    """The ``running`` trials with neither a worker nor any heartbeat that this process has seen
    so for more than ``UNCLAIMED_GRACE`` s of its own clock."""
    now = time.monotonic()
    keys = {(study._study_id, t._trial_id): t for t in running
            if WORKER_ATTR not in t.user_attrs and BEAT_ATTR not in t.system_attrs}
    for key in [k for k in _seen_unclaimed if k[0] == study._study_id and k not in keys]:
        del _seen_unclaimed[key]  # claimed or finished since
    out = []
    for key, trial in keys.items():
        first = _seen_unclaimed.setdefault(key, now)
        if now - first > UNCLAIMED_GRACE:
            out.append(trial)
    return out


def _silent_beats(study: optuna.Study, running: list[FrozenTrial]) -> list[tuple[FrozenTrial, int]]:
    """(trial, grace in s) of the ``running`` trials whose fednas heartbeat stopped moving.

    A beat must be seen unchanged for ``GRACE_INTERVALS`` of the beating worker's interval,
    timed by this process's clock since it first saw that value; a trial is therefore only
    failed by a process that has watched it for the whole grace period.
    """
    if _has_optuna_heartbeats(study._storage):
        return []
    now = time.monotonic()
    keys = {(study._study_id, t._trial_id): t for t in running}
    for key in [k for k in _seen_beats if k[0] == study._study_id and k not in keys]:
        del _seen_beats[key]  # no longer running
    out = []
    for key, trial in keys.items():
        beat = trial.system_attrs.get(BEAT_ATTR)
        if not isinstance(beat, list) or len(beat) != 2:
            continue
        seen = _seen_beats.get(key)
        if seen is None or seen[0] != beat:
            _seen_beats[key] = (beat, now)
            continue
        grace = GRACE_INTERVALS * float(beat[1])
        if now - seen[1] > grace:
            out.append((trial, round(grace)))
    return out
