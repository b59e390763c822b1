"""study.warm_start: a new study tries the best candidates of an earlier one first."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from fednas.config import ConfigError, load_config
from fednas.search import run_search


def test_a_new_study_enqueues_the_earlier_front_and_scores_it_itself(tiny_config: Path, tmp_path: Path) -> None:
    earlier = run_search(load_config(tiny_config, ["study.name=first", "study.trials=4"]), progress=False)
    old = optuna.load_study(study_name="first", storage=earlier.storage)
    done = [t for t in old.trials if t.state.name == "COMPLETE"]
    sets = ["study.name=second", "study.trials=2", f"study.warm_start={earlier.storage}", "study.warm_start_trials=2",
            "study.seed=7", f"study.storage=sqlite:///{tmp_path / 'second.db'}", "federation.rounds=1"]
    result = run_search(load_config(tiny_config, sets), progress=False)
    new = optuna.load_study(study_name="second", storage=result.storage)
    info = new.user_attrs["warm_start"]
    assert info["study"] == "first" and len(info["trials"]) == 2 and info["front"] >= 1
    by_number = {t.number: t for t in done}
    searched = [k for k in new.trials[0].params]
    for trial, number in zip(new.trials, info["trials"]):
        assert trial.user_attrs["warm_start"] == f"first#{number}"
        assert {k: trial.params[k] for k in searched} == {k: by_number[number].params[k] for k in searched}
        assert trial.user_attrs["rounds"][-1]["round"] == 1  # trained by the new study's own federation
    ranks_first = info["trials"][0]
    assert by_number[ranks_first].values is not None


def test_a_missing_earlier_study_is_a_config_error(tiny_config: Path, tmp_path: Path) -> None:
    sets = ["study.name=w", f"study.warm_start=sqlite:///{tmp_path / 'none.db'}",
            f"study.storage=sqlite:///{tmp_path / 'w.db'}"]
    with pytest.raises(ConfigError, match="study.warm_start"):
        run_search(load_config(tiny_config, sets), progress=False)
    with pytest.raises(ConfigError, match="study.warm_start_study"):
        load_config(tiny_config, ["study.warm_start_study=x"])
    with pytest.raises(ConfigError, match="study.warm_start_trials"):
        load_config(tiny_config, ["study.warm_start_trials=0"])
