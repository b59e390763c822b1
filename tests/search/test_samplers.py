"""Search strategies: every ``study.sampler`` is seeded and deterministic; evolution and REINFORCE do what they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from fednas.config import ConfigError, parse_config
from fednas.samplers import SAMPLERS
from fednas.search._samplers import RegularizedEvolutionSampler, ReinforceSampler, pareto_ranks
from fednas.search._study import _sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _toy(trial: optuna.Trial) -> tuple[float, float]:
    a = trial.suggest_categorical("a", ["x", "y", "z"])
    b = trial.suggest_int("b", 1, 6)
    c = trial.suggest_float("c", 0.0, 1.0)
    return (0.0 if a == "z" else 1.0) + abs(b - 5) * 0.3 + c, b + c


def _run(sampler: optuna.samplers.BaseSampler, n: int, storage: str | None = None, name: str = "toy") -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler, storage=storage,
                                study_name=name, load_if_exists=True)
    study.optimize(_toy, n_trials=n)
    return study


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_is_built_from_the_config_and_is_deterministic_under_its_seed(name: str) -> None:
    config = parse_config({"study": {"sampler": name, "seed": 3, "population_size": 6}})
    n = 14 if name == "gp" else 24
    first = [t.params for t in _run(_sampler(config, 0), n).trials]
    second = [t.params for t in _run(_sampler(config, 0), n).trials]
    assert first == second
    other = parse_config({"study": {"sampler": name, "seed": 4, "population_size": 6}})
    assert [t.params for t in _run(_sampler(other, 0), n).trials] != first


def test_an_unknown_sampler_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"study.sampler: expected one of \['nsga2', 'nsga3', 'tpe', 'gp', 'random', "
                                          r"'evolution', 'rl'\]"):
        parse_config({"study": {"sampler": "hillclimb"}})


def test_pareto_ranks_match_a_brute_force_peeling() -> None:
    values = np.random.default_rng(0).integers(0, 5, size=(40, 2)).astype(float)
    ranks = pareto_ranks(values)
    left, rank = set(range(40)), 0
    while left:
        front = {i for i in left if not any(np.all(values[j] <= values[i]) and np.any(values[j] < values[i])
                                             for j in left)}
        assert {i for i in range(40) if ranks[i] == rank} == front
        left -= front
        rank += 1


def test_evolution_mutates_one_label_of_a_tournament_winner_among_the_newest_trials() -> None:
    sampler = RegularizedEvolutionSampler(population_size=6, sample_size=3, seed=0)
    study = _run(sampler, 30)
    for t in study.trials[12:]:
        others = [p for p in study.trials[: t.number] if p.state == optuna.trial.TrialState.COMPLETE][-6:]
        # the child is one label away from some member of the living population (its parent)
        assert any(sum(p.params[k] != t.params[k] for k in t.params) == 1 for p in others), t.number
    # the parent is drawn from the newest population_size completed trials only
    probe = RegularizedEvolutionSampler(population_size=6, sample_size=6, seed=1)
    newest = {t.number for t in study.trials[-6:]}
    assert all(probe.parent(study).number in newest for _ in range(20))


def test_reinforce_learns_the_better_choice_and_its_policy_is_read_from_storage(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'rl.db'}"
    study = _run(ReinforceSampler(seed=0), 80, storage, "rl")
    rl_share = np.mean([t.params["a"] == "z" for t in study.trials[-30:]])
    random_share = np.mean([t.params["a"] == "z" for t in _run(optuna.samplers.RandomSampler(seed=0), 80).trials[-30:]])
    assert rl_share > 0.5 > random_share + 0.1, (rl_share, random_share)
    # A fresh sampler (a resumed study, another worker) replays the same history to the same policy.
    space = RegularizedEvolutionSampler().infer_relative_search_space(study, study.trials[-1])
    reloaded = optuna.load_study(study_name="rl", storage=storage)
    a, b = ReinforceSampler(seed=0).policy(study, space), ReinforceSampler(seed=9).policy(reloaded, space)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    z = list(space["a"].choices).index("z")
    assert int(np.argmax(a["a"])) == z


def test_reinforce_rewards_are_normalized_over_the_trials_so_far_and_zero_when_infeasible() -> None:
    study = optuna.create_study(directions=["minimize"])
    for value, constraint in ((3.0, -1.0), (1.0, 2.0), (2.0, -1.0)):
        trial = study.ask()
        trial.suggest_int("b", 1, 3)
        trial.set_constraint("max_x", constraint)
        study.tell(trial, value)
    assert ReinforceSampler().rewards(study, study.trials) == [1.0, 0.0, pytest.approx(0.5)]


@pytest.mark.parametrize("name", ["evolution", "rl"])
def test_a_fednas_study_runs_with_the_new_samplers(tiny_study_factory, name: str) -> None:
    _, config, result = tiny_study_factory(f"s-{name}", (f"study.sampler='{name}'", "study.trials=4",
                                                         "study.population_size=2", "federation.rounds=1"))
    assert result.completed == 4
    study = optuna.load_study(study_name=f"s-{name}", storage=config.storage)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) >= 2
