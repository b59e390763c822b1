"""The sampler registry: ``study.sampler`` names and the Optuna sampler each builds, as plain data.

Each entry names a class (``module:Class``; imported only when a study opens) and how it is
constructed from the study section: every sampler takes the study's derived seed, and those
marked ``population`` take ``study.population_size``. Adding a search strategy is one entry
here and, when Optuna has none, one ``optuna.samplers.BaseSampler`` subclass in
``fednas.search._samplers``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SAMPLERS", "SamplerSpec"]


@dataclass(frozen=True)
class SamplerSpec:
    """A search strategy.

    Attributes:
        name: the ``study.sampler`` value.
        cls: ``module:Class`` of the sampler.
        population: the constructor takes ``population_size``.
        options: fixed keyword arguments.
        summary: one line for documentation.
    """

    name: str
    cls: str
    population: bool = False
    options: tuple[tuple[str, object], ...] = ()
    summary: str = ""


SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("nsga2", "optuna.samplers:NSGAIISampler", population=True,
                summary="NSGA-II (Deb et al. 2002): crowding-distance genetic algorithm"),
    SamplerSpec("nsga3", "optuna.samplers:NSGAIIISampler", population=True,
                summary="NSGA-III (Deb & Jain 2014): reference-point genetic algorithm"),
    SamplerSpec("tpe", "optuna.samplers:TPESampler", options=(("multivariate", True),),
                summary="multivariate TPE (Bergstra et al. 2011; Ozaki et al. 2022 for several objectives)"),
    SamplerSpec("gp", "optuna.samplers:GPSampler",
                summary="Gaussian-process Bayesian optimization (log EHVI for several objectives)"),
    SamplerSpec("random", "optuna.samplers:RandomSampler", summary="independent uniform draws"),
    SamplerSpec("evolution", "fednas.search._samplers:RegularizedEvolutionSampler", population=True,
                summary="regularized (aging) evolution (Real et al. 2019): tournament on the newest trials, "
                        "one label mutated"),
    SamplerSpec("rl", "fednas.search._samplers:ReinforceSampler",
                summary="REINFORCE controller (Zoph & Le 2017): a softmax policy per label, moving-average "
                        "baseline, reward from the normalized objectives"),
)}
