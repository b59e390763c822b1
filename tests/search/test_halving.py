"""Successive halving over rounds: the ranking, and a halving study end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from fednas.config import ConfigError, load_config
from fednas.study import crowding_distance, nondominated_ranks, read_study, select_by_rank
from tests.conftest import TINY_STUDY


def test_nondominated_ranks_and_crowding() -> None:
    # (accuracy max, macs min): a, b on the front; c dominated by a only; d by all
    values = [[0.9, 100], [0.8, 50], [0.85, 120], [0.5, 200]]
    assert nondominated_ranks(values, ["maximize", "minimize"]).tolist() == [0, 0, 1, 2]
    crowd = crowding_distance([[1.0, 5.0], [2.0, 3.0], [3.0, 1.0], [2.5, 2.0]])
    assert np.isinf(crowd[0]) and np.isinf(crowd[2]) and 0 < crowd[3] < np.inf


def test_select_by_rank_fills_by_front_then_crowding() -> None:
    values = [[0.90, 100], [0.80, 50], [0.85, 60], [0.70, 40], [0.5, 500]]  # front: all but the last
    directions = ["maximize", "minimize"]
    assert select_by_rank(values, directions, 4) == [0, 1, 2, 3]
    two = select_by_rank(values, directions, 2)  # the front's extremes have infinite crowding distance
    assert two == [0, 3]
    assert select_by_rank(values, directions, 5) == [0, 1, 2, 3, 4]


def _config(tmp_path: Path, *extra: str):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    return load_config(path, ["study.fidelity='halving'", "study.trials=6", "federation.rounds=3",
                              "study.halving_min_rounds=1", "study.halving_eta=3", *extra])


def test_rungs_and_brackets(tmp_path: Path) -> None:
    study = _config(tmp_path, "federation.rounds=18", "study.halving_min_rounds=2").study
    assert study.rungs(18) == [2, 6, 18]
    assert study.rungs(20) == [2, 6, 18, 20]
    assert study.rungs(2) == [2]
    assert study.bracket(18) == 27


def test_halving_study_promotes_by_nondominated_rank(tmp_path: Path) -> None:
    from fednas.search import run_search

    config = _config(tmp_path)
    run_search(config, progress=False)
    trials = optuna.load_study(study_name="tiny", storage=config.storage).trials
    evaluated = [t for t in trials if "halving_rounds" in t.user_attrs]
    assert len(evaluated) == 6
    complete = [t for t in evaluated if t.state.name == "COMPLETE"]
    stopped = [t for t in evaluated if t.state.name == "PRUNED"]
    assert complete and stopped
    assert all(t.user_attrs["halving_rounds"] == 1 and "halving:" in t.user_attrs["pruned_reason"] for t in stopped)
    for t in complete:  # continued from its weights: three rounds in all, numbered on
        assert t.user_attrs["halving_rounds"] == 3
        assert [r["round"] for r in t.user_attrs["rounds"]] == [1, 2, 3]
        assert t.user_attrs["client_epochs"] == 3 * 3
        assert t.user_attrs["halving_accuracy"]["3"] == t.values[0]
    # in each bracket, ceil(n / 3) continue: exactly the selection on the objectives known after rung 1
    brackets: dict[int, list] = {}
    for t in evaluated:
        brackets.setdefault(t.user_attrs["halving_bracket"], []).append(t)
    for members in brackets.values():
        known = [[t.user_attrs["halving_accuracy"]["1"], t.user_attrs["macs"],
                  t.user_attrs["halving_comm_bytes"]["1"]] for t in members]
        keep = -(-len(members) // 3)
        chosen = {members[i].number for i in select_by_rank(known, ["maximize", "minimize", "minimize"], keep)}
        assert chosen == {t.number for t in members if t.state.name == "COMPLETE"}
    view = read_study(config.storage, "tiny")
    assert {t.number for t in view.front()} <= {t.number for t in complete}


@pytest.mark.parametrize("extra, key", [
    (["study.mode='supernet'"], "study.fidelity"),
    (["space.labels.prune_method='l1'"], "space.labels.prune_method"),
    (["study.halving_eta=1"], "study.halving_eta"),
    (["study.fidelity='hyperband'"], "study.fidelity"),
])
def test_halving_config_errors(tmp_path: Path, extra: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _config(tmp_path, *extra)


@pytest.mark.slow
def test_sigkill_mid_bracket_then_resume(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from fednas.testing import wait_for

    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    storage = f"sqlite:///{tmp_path / 'halving.db'}"
    sets = ["study.fidelity='halving'", "study.trials=6", "federation.rounds=3", "study.halving_min_rounds=1",
            "data.limit=480"]
    args = [sys.executable, "-m", "fednas", "search", str(path), "--storage", storage, "--quiet",
            *[a for s in sets for a in ("--set", s)]]

    def running() -> int:
        try:
            trials = optuna.load_study(study_name="tiny", storage=storage).trials
        except Exception:  # not created yet
            return 0
        return sum(t.state.name == "RUNNING" and "halving_bracket" in t.user_attrs for t in trials)

    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: running() >= 3, poll=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="tiny", storage=storage)
    from fednas.search._halving import count_evaluated

    assert count_evaluated(study) == 6
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed and all(t.user_attrs.get("halving_bracket") is not None for t in failed)
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") is not None]
    assert retried  # the killed bracket's candidates were enqueued again and evaluated
