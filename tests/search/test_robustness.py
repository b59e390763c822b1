"""Crashes, interrupts and several workers, with real processes and real storage files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from fednas.testing import wait_for

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _default_sigint() -> None:  # under a shell's background job SIGINT would start out ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _search(config: Path, storage: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fednas", "search", str(config), "--storage", storage, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
    )


def _trials(storage: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).trials
    except KeyError:
        return []


def _states(trials) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _complete_labels(trials) -> list[str]:
    return [json.dumps(t.user_attrs["labels"], sort_keys=True) for t in trials if t.state.name == "COMPLETE"]


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume(tiny_config: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'kill.db'}"
    args = ("--trials", "3", "--set", "federation.rounds=12", "--quiet")
    proc = _search(tiny_config, storage, *args)
    # wait until one trial is complete and the next one is running, then kill -9
    wait_for(lambda: _states(_trials(storage)).get("COMPLETE", 0) >= 1 and _states(_trials(storage)).get("RUNNING", 0) == 1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = _trials(storage)
    killed = [t for t in before if t.state.name == "RUNNING"]
    assert len(killed) == 1
    first_done = [t for t in before if t.state.name == "COMPLETE"]
    artifacts = Path(optuna.load_study(study_name="tiny", storage=storage).user_attrs["artifacts_dir"])
    kept = [artifacts / t.user_attrs["weights_artifact"] for t in first_done]
    assert all(p.exists() for p in kept)

    again = _search(tiny_config, storage, *args)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    after = _trials(storage)
    assert _states(after)["COMPLETE"] == 3
    dead = after[killed[0].number]
    assert dead.state.name == "FAIL" and "died" in dead.system_attrs["fail_reason"]
    retried = [t for t in after if t.system_attrs.get("failed_trial") == killed[0].number]
    assert retried and retried[0].params == killed[0].params  # the same candidate was tried again
    assert all(p.exists() for p in kept)  # finished trials and their weights were kept
    labels = _complete_labels(after)
    assert len(labels) == len(set(labels))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_signal_marks_the_trial_and_resumes(tiny_config: Path, tmp_path: Path, signum: int) -> None:
    storage = f"sqlite:///{tmp_path / 'int.db'}"
    args = ("--trials", "2", "--set", "federation.rounds=12", "--quiet")
    proc = _search(tiny_config, storage, *args)
    wait_for(lambda: _states(_trials(storage)).get("RUNNING", 0) == 1)
    time.sleep(0.5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "Resume with the same command: fednas search" in err and "Traceback" not in err
    assert "Exception ignored" not in err
    trials = _trials(storage)
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    how = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert len(interrupted) == 1 and interrupted[0].user_attrs["fail_reason"] == f"interrupted ({how})"
    assert f"trial {interrupted[0].number} was marked failed" in err
    assert _states(trials).get("WAITING", 0) == 1  # enqueued again
    again = _search(tiny_config, storage, *args)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    after = _trials(storage)
    assert _states(after)["COMPLETE"] == 2
    retried = [t for t in after if t.system_attrs.get("failed_trial") == interrupted[0].number]
    assert retried and retried[0].params == interrupted[0].params


@pytest.mark.slow
def test_ctrl_c_to_the_parent_of_jobs_stops_every_worker_cleanly(tiny_config: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'jobs.db'}"
    args = ("--trials", "3", "--jobs", "2", "--set", "federation.rounds=12", "--quiet")
    proc = _search(tiny_config, storage, *args)
    wait_for(lambda: _states(_trials(storage)).get("RUNNING", 0) == 2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # the parent only: it forwards the request to its workers
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "running trials were marked failed" in err and "Traceback" not in err
    states = _states(_trials(storage))
    assert states.get("RUNNING", 0) == 0 and states["FAIL"] == 2 and states["WAITING"] == 2, states
    again = _search(tiny_config, storage, *args)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert _states(_trials(storage))["COMPLETE"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_workers_share_a_study_without_losing_or_doubling_trials(tiny_config: Path, tmp_path: Path, kind: str) -> None:
    storage = f"sqlite:///{tmp_path / 'par.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'par.log'}"
    if kind == "sqlite":
        proc = _search(tiny_config, storage, "--trials", "5", "--jobs", "2")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "[w0]" in err and "[w1]" in err
    else:  # two commands started by hand on the same journal file
        procs = [_search(tiny_config, storage, "--trials", "5", "--quiet") for _ in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
    if kind == "journal":
        study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "par.log"))))
        trials = study.trials
    else:
        trials = _trials(storage)
    states = _states(trials)
    assert states["COMPLETE"] == 5, states
    assert states.get("RUNNING", 0) == 0 and states.get("WAITING", 0) == 0
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    workers = {t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"}
    assert len(workers) == 2  # both workers did trials
    labels = _complete_labels(trials)
    assert len(labels) == len(set(labels))
