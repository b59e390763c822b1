"""Keeping a study whole across crashes, interrupts and several workers.

* Each running trial records its worker (``host:pid``). On start, and while waiting for
  other workers, a RUNNING trial whose worker process on this host is gone is marked FAIL
  and its configuration is enqueued again. On RDB storages Optuna's heartbeats do the same
  across machines (``fail_stale_trials`` with ``RetryHeartbeatStaleTrialCallback``).
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
    """Fail and re-enqueue RUNNING trials whose worker on this host has died; returns their numbers."""
    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)) or int(pid) == os.getpid():
            continue
        storage = study._storage
        try:
            storage.set_trial_system_attr(trial._trial_id, "fail_reason", f"worker {worker} died during the trial")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # it finished meanwhile
            continue
        enqueue_retry(study, storage.get_trial(trial._trial_id))
        recovered.append(trial.number)
    return recovered
