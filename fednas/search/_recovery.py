"""Keeping a study whole across crashes, interrupts and several workers.

* Each running trial records its worker (``host:pid``). Before each trial, and while
  waiting for other workers, a RUNNING trial whose worker process on this host is gone, or
  (RDB storages with heartbeats) whose worker anywhere stopped sending heartbeats, is marked
  FAIL with the reason and its configuration is enqueued again.
* A trial interrupted by Ctrl-C is marked FAIL by Optuna; it is enqueued again too, so the
  same command resumes with the same candidate.
"""

from __future__ import annotations

import os
import socket
import warnings

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

__all__ = ["WORKER_ATTR", "enqueue_retry", "recover_dead_workers", "this_worker"]

WORKER_ATTR = "worker"
MAX_RETRY = 2


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def enqueue_retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue ``trial``'s sampled parameters again (at most ``MAX_RETRY`` times per lineage)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def recover_dead_workers(study: optuna.Study) -> list[int]:
    """Fail and re-enqueue RUNNING trials whose worker is gone; returns their numbers.

    A worker on this host is gone when its process is; a worker on another host when it
    stopped sending heartbeats for the grace period (RDB storages with heartbeats on).
    Each such trial gets a ``fail_reason`` saying which worker was lost and how.
    """
    host = socket.gethostname()
    lost: dict[int, str] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
        worker_host, _, pid = worker.rpartition(":")
        if worker_host == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            lost[trial._trial_id] = f"worker {worker} died during the trial"
    for trial_id, worker, silent in _stale_heartbeats(study):
        lost.setdefault(trial_id, f"worker {worker} sent no heartbeat for {silent} s (host lost or process killed)")
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


def _stale_heartbeats(study: optuna.Study) -> list[tuple[int, str, int]]:
    """(trial id, worker, grace period) of RUNNING trials whose heartbeats stopped.

    The same test ``optuna.storages.fail_stale_trials`` makes; done here first so the
    failed trial can say why (a finished trial's attributes can no longer be set).
    """
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return []
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a cache
    grace = getattr(backend, "grace_period", None) or 2 * (storage.get_heartbeat_interval() or 0)
    out = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        worker = storage.get_trial(trial_id).user_attrs.get(WORKER_ATTR, "(unknown)")
        out.append((trial_id, str(worker), int(grace)))
    return out
