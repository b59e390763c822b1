"""Search strategies Optuna does not have: regularized evolution and a REINFORCE controller.

Both are ``optuna.samplers.BaseSampler`` subclasses that keep no state of their own beyond
their seeded random generator: what they know comes from the study's completed trials in
storage, so a resumed study (or another worker) continues from the same history.

Several objectives are handled the same way in both: each completed trial's values are
oriented to be minimized, and a trial that violates a constraint (``Trial.set_constraint``
> 0) ranks after every feasible one.

* ``RegularizedEvolutionSampler`` (Real et al., "Regularized Evolution for Image Classifier
  Architecture Search", AAAI 2019): the population is the ``population_size`` newest
  completed trials (the oldest die, "aging"); a tournament draws ``sample_size`` of them,
  the winner (lowest Pareto rank within the tournament, then lowest constraint violation,
  then at random) is the parent, and the child is the parent with one label re-drawn to a
  different value. Until the population is full, candidates are drawn at random.
* ``ReinforceSampler`` (Williams 1992; as the controller of Zoph & Le, "Neural Architecture
  Search with Reinforcement Learning", ICLR 2017, here without the RNN: one independent
  softmax per label): every label's values (a categorical's choices; an integer range's
  integers, or ``bins`` points when it has more; ``bins`` points of a float range, log-spaced
  for log ranges) get logits, trained by REINFORCE with a moving-average baseline by
  replaying the completed trials in order. The reward of a trial is one minus the mean of
  its objectives min-max normalized over the trials completed up to it (all oriented to be
  minimized), 0 when it violates a constraint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["RegularizedEvolutionSampler", "ReinforceSampler", "pareto_ranks"]


def pareto_ranks(values: np.ndarray) -> np.ndarray:
    """Non-domination rank (0: the front) of each row of ``values`` (to be minimized)."""
    n = len(values)
    ranks = np.full(n, -1)
    remaining = np.arange(n)
    rank = 0
    while len(remaining):
        sub = values[remaining]
        dominated = np.zeros(len(remaining), dtype=bool)
        for i in range(len(remaining)):
            better_eq = np.all(sub <= sub[i], axis=1) & np.any(sub < sub[i], axis=1)
            dominated[i] = better_eq.any()
        ranks[remaining[~dominated]] = rank
        remaining = remaining[dominated]
        rank += 1
    return ranks


def _oriented(study: optuna.Study, trials: Sequence[FrozenTrial]) -> np.ndarray:
    sign = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in study.directions])
    return np.array([np.asarray(t.values, dtype=float) * sign for t in trials]).reshape(len(trials), len(sign))


def _violation(trial: FrozenTrial) -> float:
    return float(sum(max(v, 0.0) for v in (trial.constraints or {}).values()))


def _completed(study: optuna.Study) -> list[FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((t for t in trials if t.values is not None), key=lambda t: t.number)


class _StorageSampler(optuna.samplers.BaseSampler):
    """Shared parts: a seeded generator, random draws for what the relative space does not hold."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._space = IntersectionSearchSpace(include_pruned=True)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {k: d for k, d in self._space.calculate(study).items() if not d.single()}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def _draw(self, dist: BaseDistribution) -> Any:
        if isinstance(dist, CategoricalDistribution):
            return dist.choices[self._rng.randint(len(dist.choices))]
        if isinstance(dist, IntDistribution):
            if dist.log:
                v = int(round(np.exp(self._rng.uniform(np.log(dist.low), np.log(dist.high + 1) - 1e-12)) - 0.5))
                return int(min(max(v, dist.low), dist.high))
            return int(dist.low + dist.step * self._rng.randint((dist.high - dist.low) // dist.step + 1))
        assert isinstance(dist, FloatDistribution)
        if dist.log:
            return float(np.exp(self._rng.uniform(np.log(dist.low), np.log(dist.high))))
        if dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step))
            return float(dist.low + dist.step * self._rng.randint(n + 1))
        return float(self._rng.uniform(dist.low, dist.high))


class RegularizedEvolutionSampler(_StorageSampler):
    """Aging evolution: tournament selection among the newest trials, one label mutated.

    Args:
        population_size: how many of the newest completed trials are alive.
        sample_size: tournament size (default: a quarter of the population, at least 2).
        seed: seed of the draws.
    """

    def __init__(self, *, population_size: int = 20, sample_size: int | None = None, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        if population_size < 2:
            raise ValueError(f"population_size: expected >= 2, got {population_size}")
        self.population_size = population_size
        self.sample_size = sample_size or max(2, population_size // 4)
        if not 1 <= self.sample_size <= population_size:
            raise ValueError(f"sample_size: expected 1..{population_size}, got {self.sample_size}")

    def parent(self, study: optuna.Study) -> FrozenTrial | None:
        """The tournament winner among the living population, or None while it is not full."""
        population = _completed(study)[-self.population_size:]
        if len(population) < self.population_size:
            return None
        picked = [population[i] for i in self._rng.choice(len(population), self.sample_size, replace=False)]
        ranks = pareto_ranks(_oriented(study, picked))
        order = sorted(range(len(picked)), key=lambda i: (_violation(picked[i]) > 0, ranks[i],
                                                          _violation(picked[i]), self._rng.rand()))
        return picked[order[0]]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        parent = self.parent(study)
        names = sorted(search_space)
        if parent is None or any(n not in parent.params for n in names):
            return {n: self._draw(search_space[n]) for n in names}
        child = {n: parent.params[n] for n in names}
        label = names[self._rng.randint(len(names))]
        dist = search_space[label]
        for _ in range(32):  # a different value (a label with one value never gets here: single() is excluded)
            value = self._draw(dist)
            if value != child[label]:
                break
        child[label] = value
        return child


def _grid(dist: BaseDistribution, bins: int) -> list[Any]:
    """The values the controller chooses among for one label."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        count = (dist.high - dist.low) // dist.step + 1
        if count <= max(bins, 64) and not dist.log:
            return [dist.low + i * dist.step for i in range(count)]
        space = np.geomspace(dist.low, dist.high, bins) if dist.log else np.linspace(dist.low, dist.high, bins)
        return sorted({int(round(v)) for v in space})
    assert isinstance(dist, FloatDistribution)
    if dist.step is not None and round((dist.high - dist.low) / dist.step) + 1 <= bins:
        n = int(round((dist.high - dist.low) / dist.step))
        return [float(dist.low + i * dist.step) for i in range(n + 1)]
    space = np.geomspace(dist.low, dist.high, bins) if dist.log else np.linspace(dist.low, dist.high, bins)
    return [float(v) for v in space]


def _index(grid: list[Any], value: Any) -> int:
    if value in grid:
        return grid.index(value)
    numeric = np.array([float(g) for g in grid])
    return int(np.argmin(np.abs(numeric - float(value))))


class ReinforceSampler(_StorageSampler):
    """A softmax policy per label trained by REINFORCE with a moving-average baseline.

    Args:
        learning_rate: step size of the policy-gradient updates.
        baseline_decay: the baseline is ``decay * baseline + (1 - decay) * reward``.
        bins: points a wide integer range or a float range is discretized into.
        seed: seed of the draws.
    """

    def __init__(self, *, learning_rate: float = 0.2, baseline_decay: float = 0.9, bins: int = 10,
                 seed: int | None = None) -> None:
        super().__init__(seed=seed)
        if not learning_rate > 0 or not 0 <= baseline_decay < 1 or bins < 2:
            raise ValueError(f"learning_rate > 0, 0 <= baseline_decay < 1, bins >= 2 expected; got "
                             f"{learning_rate}, {baseline_decay}, {bins}")
        self.learning_rate, self.baseline_decay, self.bins = learning_rate, baseline_decay, bins

    def rewards(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[float]:
        """Each trial's reward, normalized over the trials completed up to it."""
        values = _oriented(study, trials)
        out = []
        for i, t in enumerate(trials):
            seen = values[: i + 1]
            low, high = seen.min(0), seen.max(0)
            span = np.where(high > low, high - low, 1.0)
            out.append(0.0 if _violation(t) > 0 else float(1.0 - np.mean((values[i] - low) / span)))
        return out

    def policy(self, study: optuna.Study, search_space: dict[str, BaseDistribution]) -> dict[str, np.ndarray]:
        """The logits of every label after replaying the completed trials."""
        grids = {n: _grid(d, self.bins) for n, d in search_space.items()}
        logits = {n: np.zeros(len(g)) for n, g in grids.items()}
        trials = [t for t in _completed(study) if all(n in t.params for n in search_space)]
        baseline = None
        for t, reward in zip(trials, self.rewards(study, trials)):
            baseline = reward if baseline is None else baseline
            advantage = reward - baseline
            for n, g in grids.items():
                p = np.exp(logits[n] - logits[n].max())
                p /= p.sum()
                grad = -p
                grad[_index(g, t.params[n])] += 1.0
                logits[n] += self.learning_rate * advantage * grad
            baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * reward
        return logits

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        logits = self.policy(study, search_space)
        out = {}
        for n in sorted(search_space):
            grid = _grid(search_space[n], self.bins)
            p = np.exp(logits[n] - logits[n].max())
            out[n] = grid[int(self._rng.choice(len(grid), p=p / p.sum()))]
        return out
