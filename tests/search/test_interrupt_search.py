"""A real SIGINT to this process while ``run_search`` runs (Python API, real SQLite storage)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna
import pytest

from fednas.config import load_config
from fednas.search import SearchInterrupted, run_search, summarize
from fednas.search._progress import Progress


def _config(tiny_config: Path, tmp_path: Path):
    return load_config(tiny_config, [f"study.storage='sqlite:///{tmp_path / 's.db'}'", "study.trials=2",
                                     "federation.rounds=3"])


def _states(config) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in optuna.load_study(study_name="tiny", storage=config.storage).trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_signal_during_a_round_fails_and_requeues_that_trial(tiny_config, tmp_path, monkeypatch) -> None:
    config = _config(tiny_config, tmp_path)
    real = Progress.round_done

    def round_done(self, record):
        real(self, record)
        if record.round == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Progress, "round_done", round_done)
    with pytest.raises(SearchInterrupted) as info:
        run_search(config, progress=False)
    assert info.value.signum == signal.SIGINT and info.value.retried == [0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    study = optuna.load_study(study_name="tiny", storage=config.storage)
    first = study.trials[0]
    assert first.state.name == "FAIL" and first.user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    assert len(first.user_attrs.get("rounds", [])) == 0  # stopped inside the run, not after it
    assert _states(config) == {"FAIL": 1, "WAITING": 1}

    monkeypatch.setattr(Progress, "round_done", real)
    result = run_search(config, progress=False)
    assert result.completed == 2
    study = optuna.load_study(study_name="tiny", storage=config.storage)
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retried and retried[0].state.name == "COMPLETE" and retried[0].params == first.params
    # the completed retry shows no reason of the interrupted attempt (pareto --all, JSON)
    assert "fail_reason" not in retried[0].user_attrs and summarize(retried[0], config.objectives).reason == ""


def test_signal_between_trials_stops_without_failing_anything(tiny_config, tmp_path, monkeypatch) -> None:
    config = _config(tiny_config, tmp_path)
    real = Progress.trial_finished

    def trial_finished(self, state, summary, **kwargs):
        real(self, state, summary, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # after the first trial was recorded COMPLETE

    monkeypatch.setattr(Progress, "trial_finished", trial_finished)
    with pytest.raises(SearchInterrupted) as info:
        run_search(config, progress=False)
    assert info.value.retried == []
    assert _states(config) == {"COMPLETE": 1}
