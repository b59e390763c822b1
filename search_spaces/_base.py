"""Search-space machinery: label domains and the ``SearchSpace`` extension point.

A search space maps a flat dict of labelled choices (the same dict Optuna stores as
``trial.params``) to an architecture, and knows each label's default domain. A study
config may override any label's domain with a list of choices, a range, or a fixed value.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Choice",
    "RandomTrial",
    "Domain",
    "Fixed",
    "Range",
    "SearchSpace",
    "TrialLike",
    "domain_from_config",
    "extreme",
]


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` a search space uses."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


class RandomTrial:
    """``TrialLike`` over a ``random.Random``: draws every label uniformly from its domain (subnet sampling,
    latency profiling)."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.rng.choice(list(choices))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self.rng.randrange(low, high + 1, step)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        if step:
            return low + step * self.rng.randrange(int(round((high - low) / step)) + 1)
        return self.rng.uniform(low, high)


class Domain(ABC):
    """The set of values one label may take."""

    @abstractmethod
    def suggest(self, trial: TrialLike, label: str) -> Any:
        """Draw a value from ``trial``; fixed domains do not touch the trial."""

    @abstractmethod
    def values_ok(self, allowed: Domain) -> str | None:
        """Return why this domain is not inside ``allowed``, or None if it is."""

    @abstractmethod
    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this domain."""

    @abstractmethod
    def describe(self) -> str:
        """Short human-readable form, e.g. ``[3, 5, 7]`` or ``1..4``."""


@dataclass(frozen=True)
class Choice(Domain):
    """A categorical label: one of ``values``."""

    values: tuple[Any, ...]

    def suggest(self, trial: TrialLike, label: str) -> Any:
        return trial.suggest_categorical(label, list(self.values))

    def contains(self, value: Any) -> bool:
        return any(_same(value, v) for v in self.values)

    def values_ok(self, allowed: Domain) -> str | None:
        bad = [v for v in self.values if not allowed.contains(v)]
        return f"{bad} not in {allowed.describe()}" if bad else None

    def describe(self) -> str:
        return "[" + ", ".join(_fmt(v) for v in self.values) + "]"


@dataclass(frozen=True)
class Range(Domain):
    """A numeric range ``low..high`` (inclusive), integer when both ends are ints."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and (
            self.step is None or isinstance(self.step, int)
        )

    def suggest(self, trial: TrialLike, label: str) -> Any:
        if self.is_int:
            return trial.suggest_int(label, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(label, float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.is_int and not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    def values_ok(self, allowed: Domain) -> str | None:
        if isinstance(allowed, Range):
            if allowed.is_int and not self.is_int:
                return f"{self.describe()} must be an integer range"
            if self.low < allowed.low or self.high > allowed.high or not allowed.contains(self.low):
                return f"{self.describe()} not inside {allowed.describe()}"
            return None
        if isinstance(allowed, Choice):
            return f"a range is not allowed here; choose from {allowed.describe()}"
        return None

    def describe(self) -> str:
        return f"{_fmt(self.low)}..{_fmt(self.high)}" + (f" step {_fmt(self.step)}" if self.step else "")


@dataclass(frozen=True)
class Fixed(Domain):
    """A label held at one value (not searched)."""

    value: Any

    def suggest(self, trial: TrialLike, label: str) -> Any:
        return self.value

    def contains(self, value: Any) -> bool:
        return _same(value, self.value)

    def values_ok(self, allowed: Domain) -> str | None:
        return None if allowed.contains(self.value) else f"{_fmt(self.value)} not in {allowed.describe()}"

    def describe(self) -> str:
        return _fmt(self.value)


def domain_from_config(value: Any, key: str) -> Domain:
    """Turn a config entry into a domain: list -> Choice, table -> Range, scalar -> Fixed.

    Raises:
        ValueError: naming ``key`` when the entry has the wrong shape.
    """
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{key}: empty list of choices; expected at least one value")
        return Choice(tuple(value))
    if isinstance(value, dict):
        unknown = set(value) - {"low", "high", "step", "log"}
        if unknown or "low" not in value or "high" not in value:
            raise ValueError(f"{key}: expected a table {{low, high[, step][, log]}}, got keys {sorted(value)}")
        low, high, step, log = value["low"], value["high"], value.get("step"), value.get("log", False)
        for name, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"{key}.{name}: expected a number, got {v!r}")
        if low > high:
            raise ValueError(f"{key}: low {low} is above high {high}")
        if not isinstance(log, bool):
            raise ValueError(f"{key}.log: expected true or false, got {log!r}")
        return Range(low, high, step, log)
    if isinstance(value, (bool, int, float, str)):
        return Fixed(value)
    raise ValueError(f"{key}: expected a value, a list of choices or a {{low, high}} table, got {value!r}")


def extreme(domain: Domain, which: str) -> Any:
    """The ``"low"`` or ``"high"`` end of a domain: a range's bound, a choice's smallest or largest number
    (``False < True``), a fixed value; a choice of non-numbers (activations) gives its first value."""
    if which not in ("low", "high"):
        raise ValueError(f"which: expected 'low' or 'high', got {which!r}")
    if isinstance(domain, Fixed):
        return domain.value
    if isinstance(domain, Range):
        end = domain.low if which == "low" else domain.high
        return int(end) if domain.is_int else end
    if isinstance(domain, Choice):
        numeric = [v for v in domain.values if isinstance(v, (int, float))]
        if not numeric:
            return domain.values[0]
        return min(numeric) if which == "low" else max(numeric)
    raise TypeError(f"unknown domain {domain!r}")  # pragma: no cover


class SearchSpace(ABC):
    """Extension point: a family of architectures addressed by flat labels."""

    name: str = ""

    @abstractmethod
    def domains(self) -> dict[str, Domain]:
        """Default domain of every label, in a stable order."""

    @abstractmethod
    def decode(self, values: dict[str, Any]) -> Any:
        """Turn a complete label -> value dict into an architecture (pure)."""

    def allowed_domains(self) -> dict[str, Domain]:
        """The widest domain a study may give each label; by default the default domains.

        A space whose defaults are narrower than what it accepts (e.g. knobs that default
        to a fixed "off" value) overrides this.
        """
        return self.domains()

    def resolve(self, overrides: dict[str, Domain] | None = None) -> dict[str, Domain]:
        """Default domains with ``overrides`` applied and checked.

        Raises:
            ValueError: for an unknown label or a domain outside the label's allowed one.
        """
        domains = dict(self.domains())
        allowed = self.allowed_domains() if overrides else {}
        for label, dom in (overrides or {}).items():
            if label not in domains:
                raise ValueError(
                    f"unknown label {label!r} for search space {self.name!r}; valid: {', '.join(domains)}"
                )
            why = dom.values_ok(allowed[label])
            if why:
                raise ValueError(f"label {label!r}: {why}")
            domains[label] = dom
        return domains

    def suggest(self, trial: TrialLike, overrides: dict[str, Domain] | None = None) -> dict[str, Any]:
        """Sample every label through ``trial`` and return the flat dict."""
        return {label: dom.suggest(trial, label) for label, dom in self.resolve(overrides).items()}

    def corner(self, which: str, overrides: dict[str, Domain] | None = None) -> dict[str, Any]:
        """Every label at the ``"low"`` or ``"high"`` end of its domain (``extreme``)."""
        return {label: extreme(dom, which) for label, dom in self.resolve(overrides).items()}

    def supernet(self, overrides: dict[str, Domain] | None = None) -> Any:
        """The weight-sharing supernet of the space: every label at its high end (deepest, widest,
        largest kernel and expansion, squeeze-excitation where allowed); each member of the space
        is a slice of it (``Architecture.weight_slices``).

        Raises:
            ValueError: the space's family has no weight-sharing supernet.
        """
        arch = self.decode(self.corner("high", overrides))
        if not getattr(arch, "elastic", False):
            raise ValueError(f"search space {self.name!r}: the {arch.family!r} family has no weight-sharing "
                             "supernet (study.mode = 'supernet' needs a family whose records are elastic)")
        return arch


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, str) else str(v)
