"""Judging lost workers from a storage's records, without processes (fast, deterministic)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from fednas.search import _recovery
from fednas.search._recovery import BEAT_ATTR, WORKER_ATTR, beating, recover_dead_workers

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def journal_study(tmp_path: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j.log")))
    return optuna.create_study(storage=storage, directions=["maximize"])


def _running(study: optuna.Study, worker: str, beat: list | None = None) -> optuna.Trial:
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr(WORKER_ATTR, worker)
    if beat is not None:
        study._storage.set_trial_system_attr(trial._trial_id, BEAT_ATTR, beat)
    return trial


def test_a_beat_that_stops_moving_fails_the_trial_after_the_grace_period(journal_study, monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(_recovery.time, "monotonic", lambda: clock[0])
    stuck = _running(journal_study, "elsewhere:1", [7, 2.0])
    moving = _running(journal_study, "elsewhere:2", [0, 2.0])
    assert recover_dead_workers(journal_study) == []  # first sight: nothing judged yet
    for step in range(1, 4):
        clock[0] += 2.5  # 7.5 s in all, past 3 x 2 s for the stuck one only at the last step
        journal_study._storage.set_trial_system_attr(moving._trial_id, BEAT_ATTR, [step, 2.0])
        recovered = recover_dead_workers(journal_study)
        assert recovered == ([stuck.number] if step == 3 else []), step
    frozen = journal_study._storage.get_trial(stuck._trial_id)
    assert frozen.state == TrialState.FAIL
    assert frozen.system_attrs["fail_reason"] == "worker elsewhere:1 sent no heartbeat for 6 s (host lost or process killed)"
    assert journal_study._storage.get_trial(moving._trial_id).state == TrialState.RUNNING
    waiting = journal_study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == frozen.params  # retried
    # the retry carries its lineage only: not the reason, worker or heartbeat of the lost trial
    assert waiting[0].system_attrs == {"failed_trial": stuck.number, "retry_history": [stuck.number]}
    assert waiting[0].user_attrs == {}


def test_a_lineage_is_retried_at_most_twice(journal_study) -> None:
    from fednas.search._recovery import MAX_RETRY, enqueue_retry

    trial = _running(journal_study, "elsewhere:1")
    journal_study.tell(trial, state=TrialState.FAIL)
    first = journal_study._storage.get_trial(trial._trial_id)
    for generation in range(1, MAX_RETRY + 2):
        queued = enqueue_retry(journal_study, first)
        assert queued == (generation <= MAX_RETRY)
        if not queued:
            break
        retry = journal_study.ask()  # takes the WAITING trial
        assert retry.params == first.params
        journal_study.tell(retry, state=TrialState.FAIL)
        first = journal_study._storage.get_trial(retry._trial_id)
        assert first.system_attrs["failed_trial"] == trial.number  # the root of the line
        assert len(first.system_attrs["retry_history"]) == generation


def test_trials_without_beats_on_other_hosts_are_left_alone(journal_study, monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(_recovery.time, "monotonic", lambda: clock[0])
    trial = _running(journal_study, "elsewhere:1")  # heartbeat 0 on that worker: nothing to judge by
    for _ in range(3):
        clock[0] += 100.0
        assert recover_dead_workers(journal_study) == []
    assert journal_study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING


def test_a_dead_process_on_this_host_is_recovered_at_once(journal_study) -> None:
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = _running(journal_study, f"{socket.gethostname()}:{gone.stdout.strip()}")
    assert recover_dead_workers(journal_study) == [trial.number]
    reason = journal_study._storage.get_trial(trial._trial_id).system_attrs["fail_reason"]
    assert reason == f"worker {socket.gethostname()}:{gone.stdout.strip()} died during the trial"


def test_beating_bumps_the_counter_and_stops_with_the_block(journal_study) -> None:
    trial = _running(journal_study, "here:1")
    with beating(trial, 0.05):
        time.sleep(0.3)
    beat = journal_study._storage.get_trial(trial._trial_id).system_attrs[BEAT_ATTR]
    assert beat[1] == 0.05 and beat[0] >= 2
    time.sleep(0.2)
    assert journal_study._storage.get_trial(trial._trial_id).system_attrs[BEAT_ATTR] == beat  # stopped


def test_beating_leaves_rdb_storages_to_optuna(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    with beating(trial, 0.05):
        time.sleep(0.2)
    assert BEAT_ATTR not in study._storage.get_trial(trial._trial_id).system_attrs


def test_a_trial_no_worker_claimed_is_failed_after_the_grace_period(journal_study, monkeypatch) -> None:
    clock = [50.0]
    monkeypatch.setattr(_recovery.time, "monotonic", lambda: clock[0])
    orphan = journal_study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # killed before it claimed
    claimed = _running(journal_study, "elsewhere:3")
    assert recover_dead_workers(journal_study) == []  # first sight starts this process's clock
    clock[0] += _recovery.UNCLAIMED_GRACE - 1
    assert recover_dead_workers(journal_study) == []
    clock[0] += 2
    assert recover_dead_workers(journal_study) == [orphan.number]
    frozen = journal_study._storage.get_trial(orphan._trial_id)
    assert frozen.state == TrialState.FAIL
    assert frozen.system_attrs["fail_reason"].startswith("no worker claimed the trial within")
    assert journal_study._storage.get_trial(claimed._trial_id).state == TrialState.RUNNING
    assert [t.params for t in journal_study.get_trials(states=(TrialState.WAITING,))] == [frozen.params]


def test_a_trial_claimed_during_the_grace_period_is_left_alone(journal_study, monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(_recovery.time, "monotonic", lambda: clock[0])
    trial = journal_study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert recover_dead_workers(journal_study) == []
    clock[0] += 1
    trial.set_user_attr(WORKER_ATTR, "elsewhere:4")
    clock[0] += 10 * _recovery.UNCLAIMED_GRACE
    assert recover_dead_workers(journal_study) == []
    assert journal_study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING


def test_a_search_waiting_on_an_unclaimed_trial_finishes(tiny_config: Path, monkeypatch) -> None:
    """The hang once seen after a SIGKILL: the target reached only by counting a trial nobody runs."""
    from fednas.config import load_config
    from fednas.search import run_search

    monkeypatch.setattr(_recovery, "UNCLAIMED_GRACE", 0.5)
    path = tiny_config
    config = load_config(path, ["study.trials=1", "federation.rounds=1"])
    run_search(config, progress=False)
    storage = f"sqlite:///{path.parent / 'tiny.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    orphan = study.ask()  # RUNNING, no worker, no heartbeat: as if killed right after Optuna made it
    run_search(load_config(path, ["study.trials=2", "federation.rounds=1"]), progress=False)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[orphan.number] == TrialState.FAIL
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 2
