"""The strategy registry: ``federation.strategy`` names, their Flower classes and their options.

Each entry names a class of ``flwr.serverapp.strategy`` (imported only when a run builds
it, so reading a config never loads Flower) and the constructor keywords a study may set
in the strategy's own sub-table, with fednas's defaults::

    [federation]
    strategy = "fedadam"

    [federation.fedadam]
    eta = 0.01          # the keyword of flwr.serverapp.strategy.FedAdam, same name

Option names are the constructor's own (tests check each against the signature); the
keywords fednas sets itself (sampling: ``fraction_train``, ``min_train_nodes``, ...) are
not options. The flat keys of earlier versions (``federation.proximal_mu``,
``server_lr``, ``server_momentum``, ``eta``, ``eta_l``, ``tau``) are still read, with a
deprecation line naming the new key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LEGACY_KEYS", "MIN_REPLIES", "STRATEGIES", "OptionSpec", "StrategySpec", "get_strategy",
           "register_strategy"]


@dataclass(frozen=True)
class OptionSpec:
    """One constructor keyword: its fednas default and the range it must lie in."""

    default: float
    low: float = 0.0
    high: float = math.inf
    low_open: bool = False  # (low, ...] instead of [low, ...]
    high_open: bool = False
    integer: bool = False

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        if self.integer and value != int(value):
            return f"expected an integer in {self.describe()}, got {value!r}"
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = value >= self.high if self.high_open else value > self.high
        if too_low or too_high:
            return f"expected a number in {self.describe()}, got {value!r}"
        return None

    def describe(self) -> str:
        hi = "inf)" if math.isinf(self.high) else f"{self.high:g}" + (")" if self.high_open else "]")
        return ("(" if self.low_open else "[") + f"{self.low:g}, " + hi


@dataclass(frozen=True)
class StrategySpec:
    """A strategy of the study config.

    Attributes:
        name: the ``federation.strategy`` value and the name of its sub-table.
        cls: ``module:Class`` of a ``flwr.serverapp.strategy.FedAvg`` subclass (Flower's own, or fednas's
            where Flower has none, e.g. ``fednas.fl._dnc:DnC``).
        options: constructor keyword -> spec (default and range).
        summary: one line for documentation.
    """

    name: str
    cls: str
    options: dict[str, OptionSpec] = field(default_factory=dict)
    summary: str = ""

    def defaults(self) -> dict[str, float]:
        return {k: o.default for k, o in self.options.items()}

    def load(self) -> type:
        """The Flower class (imports Flower)."""
        import importlib

        module, _, name = self.cls.partition(":")
        return getattr(importlib.import_module(module), name)


STRATEGIES: dict[str, StrategySpec] = {}

_POSITIVE = {"low": 0.0, "low_open": True}
_MOMENTUM = {"low": 0.0, "high": 1.0, "high_open": True}


def register_strategy(spec: StrategySpec) -> StrategySpec:
    if spec.name in STRATEGIES:
        raise ValueError(f"strategy {spec.name!r} is already registered")
    STRATEGIES[spec.name] = spec
    return spec


def _fedopt(cls: str, summary: str) -> StrategySpec:
    name = cls.rpartition(":")[2].lower()
    betas = {} if name == "fedadagrad" else {"beta_1": OptionSpec(0.9, **_MOMENTUM), "beta_2": OptionSpec(0.99, **_MOMENTUM)}
    return StrategySpec(name, cls, {
        "eta": OptionSpec(0.01, **_POSITIVE), "eta_l": OptionSpec(0.1, **_POSITIVE),
        "tau": OptionSpec(0.001, **_POSITIVE), **betas,
    }, summary)


for _spec in (
    StrategySpec("fedavg", "flwr.serverapp.strategy:FedAvg", {}, "weighted average of the client models"),
    StrategySpec("fedprox", "flwr.serverapp.strategy:FedProx", {"proximal_mu": OptionSpec(0.01)},
                 "FedAvg with a proximal term mu/2 |w - w_global|^2 in local training"),
    StrategySpec("fedavgm", "flwr.serverapp.strategy:FedAvgM", {
        "server_learning_rate": OptionSpec(1.0, **_POSITIVE), "server_momentum": OptionSpec(0.9, **_MOMENTUM)},
        "FedAvg with server-side momentum"),
    _fedopt("flwr.serverapp.strategy:FedAdam", "server-side Adam on the averaged update"),
    _fedopt("flwr.serverapp.strategy:FedYogi", "server-side Yogi on the averaged update"),
    _fedopt("flwr.serverapp.strategy:FedAdagrad", "server-side Adagrad on the averaged update"),
    # Byzantine-robust rules; num_malicious_nodes is the number of attackers a rule is built to withstand
    StrategySpec("krum", "flwr.serverapp.strategy:Krum", {"num_malicious_nodes": OptionSpec(1, integer=True)},
                 "Krum: the one update closest to its n - f - 2 nearest neighbours (Blanchard et al., 2017)"),
    StrategySpec("multikrum", "flwr.serverapp.strategy:MultiKrum", {
        "num_malicious_nodes": OptionSpec(1, integer=True), "num_nodes_to_select": OptionSpec(2, low=1, integer=True)},
        "Multi-Krum: the average of the m updates Krum scores best"),
    StrategySpec("bulyan", "flwr.serverapp.strategy:Bulyan", {"num_malicious_nodes": OptionSpec(1, integer=True)},
                 "Bulyan: Krum selection, then a coordinate-wise trimmed mean (El Mhamdi et al., 2018)"),
    StrategySpec("fedmedian", "flwr.serverapp.strategy:FedMedian", {},
                 "coordinate-wise median of the updates (Yin et al., 2018)"),
    StrategySpec("fedtrimmedavg", "flwr.serverapp.strategy:FedTrimmedAvg", {
        "beta": OptionSpec(0.2, low=0.0, high=0.5, high_open=True)},
        "coordinate-wise mean without the beta largest and smallest values"),
    StrategySpec("dnc", "fednas.fl._dnc:DnC", {
        "num_malicious_nodes": OptionSpec(1, integer=True), "filter_frac": OptionSpec(1.0, **_POSITIVE),
        "num_iters": OptionSpec(5, low=1, integer=True), "subsample_dim": OptionSpec(10_000, low=1, integer=True)},
        "Divide-and-Conquer: drop the replies that project most on the top singular direction of the centred "
        "replies (Shejwalkar & Houmansadr, 2021)"),
    StrategySpec("fltrust_median", "fednas.fl._trust:FLTrustMedian", {
        "min_trust": OptionSpec(0.0, low=-1.0, high=1.0, high_open=True)},
        "FLTrust's trust-weighted mean (Cao et al., 2021) with the coordinate-wise median update as reference "
        "and every update clipped to the median norm (no server data)"),
):
    register_strategy(_spec)

# Least number of replies each robust rule needs for f = num_malicious_nodes attackers.
MIN_REPLIES = {"krum": lambda f: 2 * f + 3, "multikrum": lambda f: 2 * f + 3, "bulyan": lambda f: 4 * f + 3,
               "dnc": lambda f: f + 1}

# Flat [federation] keys of fednas <= 0.1 -> (strategy, option).
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    "proximal_mu": ("fedprox", "proximal_mu"),
    "server_lr": ("fedavgm", "server_learning_rate"),
    "server_momentum": ("fedavgm", "server_momentum"),
    "eta": ("fedadam", "eta"),
    "eta_l": ("fedadam", "eta_l"),
    "tau": ("fedadam", "tau"),
}


def get_strategy(name: str) -> StrategySpec:
    """Raises: ValueError listing the valid names."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}") from None
