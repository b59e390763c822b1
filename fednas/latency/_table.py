"""The latency predictor: a lookup table of unit latencies, made where the model will run.

A model is cut into *units*: its top-level children in the order its forward pass calls
them, a ``Sequential`` of blocks (``MobileNet.blocks``, ``ResNet.blocks``) cut into its
blocks. A unit's key is its structure (class, ``repr`` with every layer's shape, stride,
groups and flags) and its input shape, so two candidates that share a block at the same
input share a row. ``profile`` draws architectures from a study's space, collects their
distinct units at each input size and times each one alone on the runtime; the table
(JSON) records the runtime, its version, the threads, the machine and the cost of an empty
call. A model's predicted latency is the sum of its units' medians minus ``units - 1``
empty calls (each unit was timed with one). A unit the table does not hold (a pruned width,
a space the profile did not cover) is estimated from a per-kind least-squares fit of
latency on MACs and activation size over the table's units, and counted as a fallback.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fednas.latency._measure import Latency, measure_interleaved, pinned, time_session
from fednas.latency._runtimes import Runtime, get_runtime
from search_spaces import RandomTrial

__all__ = ["MAX_TABLE_BYTES", "LatencyTable", "TableError", "Unit", "UnitTiming", "draw_labels", "latency_units",
           "load_table", "predict_latency", "profile_and_time", "profile_units"]

FORMAT = "fednas-latency-table"
VERSION = 1
MAX_TABLE_BYTES = 256 * 1024 * 1024  # read no more than this from a table file
MAX_UNITS = 1_000_000


class TableError(ValueError):
    """A latency table file that cannot be used (one line, naming the file and key)."""


@dataclass(frozen=True)
class Unit:
    """One piece of a model as the predictor sees it.

    Attributes:
        key: structure hash and input shape, e.g. ``InvertedResidual:3f2a...@24x14x14``.
        kind: the module's class name.
        module: the module itself.
        input_shape: (C, H, W) or (features,) without the batch.
        macs: its multiply-accumulates (conv and linear layers, the cost model's convention).
        activations: elements of its input and output (what it reads and writes).
    """

    key: str
    kind: str
    module: nn.Module
    input_shape: tuple[int, ...]
    macs: int
    activations: int


def _structure(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}"


def _is_leafy(module: nn.Module) -> bool:
    children = list(module.children())
    return bool(children) and all(not list(c.children()) for c in children)


def _unit_modules(model: nn.Module) -> list[nn.Module]:
    """Top-level children; a Sequential whose children have children of their own is cut into them."""
    out: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, nn.Sequential) and not _is_leafy(child) and len(child):
            out.extend(child.children())
        else:
            out.append(child)
    return out or [model]


def _unit_macs(module: nn.Module, shape: tuple[int, ...]) -> int:
    total = 0
    hooks = []

    def count(m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += output.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += output.numel() * m.in_features

    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(count))
    try:
        with torch.no_grad():
            module(torch.zeros((1, *shape)))
    finally:
        for h in hooks:
            h.remove()
    return int(total)


def latency_units(model: nn.Module, input_shape: tuple[int, ...]) -> list[Unit]:
    """The units of ``model`` (eval mode, batch 1 at ``input_shape``) in the order they run.

    Units the forward pass does not call, and units that do nothing at inference (identity,
    dropout), are left out; one called twice appears twice.
    """
    model = copy.deepcopy(model).eval()
    seen: list[tuple[nn.Module, tuple[int, ...], int]] = []
    hooks = []
    for m in _unit_modules(model):
        def record(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            seen.append((mod, tuple(x.shape[1:]), int(x.numel() + output.numel())))
        hooks.append(m.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
    units = []
    for module, shape, activations in seen:
        if all(isinstance(m, (nn.Identity, nn.Dropout, nn.Sequential)) for m in module.modules()):
            continue  # no work at inference (an absent head, dropout)
        digest = hashlib.sha1(_structure(module).encode()).hexdigest()[:16]
        key = f"{type(module).__name__}:{digest}@{'x'.join(map(str, shape))}"
        units.append(Unit(key, type(module).__name__, module, shape, _unit_macs(module, shape), activations))
    return units


@dataclass(frozen=True)
class UnitTiming:
    """A unit's measured latency (median and quartiles, ms) and what the fallback fit reads."""

    ms: float
    p25_ms: float
    p75_ms: float
    kind: str
    macs: int
    activations: int


@dataclass
class LatencyTable:
    """Unit latencies of one runtime on one machine (see the module docstring)."""

    runtime: str
    runtime_version: str
    threads: int
    repeats: int
    overhead_ms: float
    units: dict[str, UnitTiming]
    boundary_ms_per_element: float = 0.0  # what a unit timed alone pays at its input that it does not in a model
    machine: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # what was profiled: space, inputs, samples
    path: str = ""

    def __post_init__(self) -> None:
        self._fits: dict[str, np.ndarray] = {}
        self._fit_all: np.ndarray | None = None

    # ------------------------------------------------------------------ prediction

    def _fit(self, kind: str) -> np.ndarray:
        """Least-squares [intercept, per MAC, per activation element] over the units of ``kind``
        (all units when the kind has fewer than 3), clipped at 0."""
        if kind not in self._fits:
            rows = [u for u in self.units.values() if u.kind == kind]
            if len(rows) < 3:
                if self._fit_all is None:
                    self._fit_all = _least_squares(list(self.units.values()))
                self._fits[kind] = self._fit_all
            else:
                self._fits[kind] = _least_squares(rows)
        return self._fits[kind]

    def estimate(self, unit: Unit) -> float:
        """A unit the table does not hold, from the fit of its kind (ms, at least the empty call)."""
        a, b, c = self._fit(unit.kind)
        return max(float(a + b * unit.macs + c * unit.activations), self.overhead_ms)

    def predict(self, units: list[Unit]) -> Latency:
        """The latency of a model made of ``units`` (``latency_units``)."""
        ms, p25, p75 = self._sum(units)
        fallback = sum(u.key not in self.units for u in units)
        shared = self.shared_ms(units)
        return Latency(max(ms - shared, self.overhead_ms), max(p25 - shared, 0.0), max(p75 - shared, 0.0),
                       self.runtime, self.runtime_version, self.threads, self.repeats, source="predicted",
                       units=len(units), fallback=fallback, table=self.path)

    def shared_ms(self, units: list[Unit]) -> float:
        """What the units' sum counts more than once: an empty call per unit after the first, and at each
        junction between two units the boundary cost (per element of the activation passed on)."""
        junction = sum(math.prod(u.input_shape) for u in units[1:])
        return self.overhead_ms * max(len(units) - 1, 0) + self.boundary_ms_per_element * junction

    def _sum(self, units: list[Unit]) -> tuple[float, float, float]:
        ms = p25 = p75 = 0.0
        for u in units:
            t = self.units.get(u.key)
            if t is None:
                guess = self.estimate(u)
                ms, p25, p75 = ms + guess, p25 + guess, p75 + guess
            else:
                ms, p25, p75 = ms + t.ms, p25 + t.p25_ms, p75 + t.p75_ms
        return ms, p25, p75

    def calibrate(self, models: list[tuple[list[Unit], float]]) -> None:
        """Fit ``boundary_ms_per_element`` to whole models (their units, their measured ms): least squares of
        ``sum - empty calls - measured`` on the junction elements, at least 0."""
        num = den = 0.0
        for units, measured in models:
            ms, _, _ = self._sum(units)
            excess = ms - self.overhead_ms * max(len(units) - 1, 0) - measured
            junction = float(sum(math.prod(u.input_shape) for u in units[1:]))
            num, den = num + junction * excess, den + junction * junction
        self.boundary_ms_per_element = max(num / den, 0.0) if den > 0 else 0.0

    # ------------------------------------------------------------------ files

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "runtime": self.runtime,
                "runtime_version": self.runtime_version, "threads": self.threads, "repeats": self.repeats,
                "overhead_ms": self.overhead_ms, "boundary_ms_per_element": self.boundary_ms_per_element,
                "machine": self.machine, "created": self.created,
                "source": self.source,
                "units": {k: [u.ms, u.p25_ms, u.p75_ms, u.kind, u.macs, u.activations]
                          for k, u in sorted(self.units.items())}}

    def save(self, path: str | Path) -> None:
        """Write the table (to a temporary file first: an existing table is never left half-written)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)


def _least_squares(rows: list[UnitTiming]) -> np.ndarray:
    if not rows:
        return np.zeros(3)
    x = np.array([[1.0, u.macs, u.activations] for u in rows])
    y = np.array([u.ms for u in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return np.maximum(coef, 0.0)


def machine_info() -> dict[str, Any]:
    """What the table was made on: recorded, never used to refuse a table."""
    import os

    cpus = os.cpu_count()
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        model = ""
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": model or platform.processor(),
            "cpus": cpus, "python": platform.python_version(), "torch": torch.__version__}


def _bad(path: str, key: str, expected: str, got: Any) -> TableError:
    shown = type(got).__name__ if isinstance(got, (dict, list)) else repr(got)[:60]
    return TableError(f"{path}: {key}: expected {expected}, got {shown}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_table(path: str | Path) -> LatencyTable:
    """Read and check a table written by ``fednas latency profile``.

    Raises:
        TableError: missing, too large, not JSON, another format or version, or a bad entry
            (naming the file and the key).
    """
    p = str(path)
    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise TableError(f"{p}: cannot read the latency table ({exc.strerror or exc})") from None
    if size > MAX_TABLE_BYTES:
        raise TableError(f"{p}: {size:,} bytes; expected a latency table of at most {MAX_TABLE_BYTES:,} bytes")
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read(MAX_TABLE_BYTES + 1))
    except RecursionError:
        raise TableError(f"{p}: not a JSON latency table (nested too deeply)") from None
    except (OSError, ValueError) as exc:
        raise TableError(f"{p}: not a JSON latency table ({(str(exc).splitlines() or [''])[0][:80]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(p, "format", f"{FORMAT!r} (a table written by fednas latency profile)",
                   doc.get("format") if isinstance(doc, dict) else doc)
    if doc.get("version") != VERSION:
        raise _bad(p, "version", str(VERSION), doc.get("version"))
    for key in ("runtime", "runtime_version"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise _bad(p, key, "a non-empty string", doc.get(key))
    for key, low in (("threads", 1), ("repeats", 1)):
        v = doc.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= 4096 * (1 if key == "threads" else 1000):
            raise _bad(p, key, f"an integer >= {low}", v)
    for key in ("overhead_ms", "boundary_ms_per_element"):
        value = doc.get(key, 0.0 if key == "boundary_ms_per_element" else None)
        if not _number(value) or value < 0:
            raise _bad(p, key, "a number >= 0", value)
    units = doc.get("units")
    if not isinstance(units, dict) or not units:
        raise _bad(p, "units", "a non-empty table of unit timings", units)
    if len(units) > MAX_UNITS:
        raise _bad(p, "units", f"at most {MAX_UNITS:,} entries", f"{len(units):,} entries")
    parsed = {}
    for key, row in units.items():
        if (not isinstance(row, list) or len(row) != 6 or not all(_number(v) and v >= 0 for v in row[:3])
                or not isinstance(row[3], str) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                          for v in row[4:])):
            raise _bad(p, f"units.{key[:60]}", "[ms, p25_ms, p75_ms, kind, macs, activations]", row)
        parsed[key] = UnitTiming(float(row[0]), float(row[1]), float(row[2]), row[3], row[4], row[5])
    return LatencyTable(doc["runtime"], doc["runtime_version"], doc["threads"], doc["repeats"],
                        float(doc["overhead_ms"]), parsed,
                        boundary_ms_per_element=float(doc.get("boundary_ms_per_element", 0.0)),
                        machine=doc.get("machine") if isinstance(doc.get("machine"), dict) else {},
                        created=str(doc.get("created", "")),
                        source=doc.get("source") if isinstance(doc.get("source"), dict) else {}, path=p)


def predict_latency(table: LatencyTable, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
    """``model``'s latency at ``input_shape`` predicted from ``table``."""
    return table.predict(latency_units(model, input_shape))


# ---------------------------------------------------------------------- profiling

def draw_labels(space: Any, overrides: dict[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` label dicts drawn from ``space`` (its domains with ``overrides``), seeded, plus its two corners."""
    rng = random.Random(seed)
    draws = [space.corner("low", overrides), space.corner("high", overrides)]
    draws += [space.suggest(RandomTrial(rng), overrides) for _ in range(count)]
    return draws


def _empty_call(runtime: Runtime, threads: int, warmup: int, repeats: int) -> float:
    """Median ms of running a one-element model: the fixed cost of one call."""
    class _One(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1.0

    with pinned(threads), runtime.prepare(_One().eval(), torch.zeros(1, 1), threads) as session:
        return float(np.median(time_session(session, warmup, repeats)))


def profile_units(models: Iterable[tuple[nn.Module, tuple[int, ...]]], *, runtime: str = "onnxruntime",
                  threads: int = 1, warmup: int = 10, repeats: int = 50, rounds: int = 3,
                  source: dict[str, Any] | None = None,
                  on_unit: Callable[[int, Unit, UnitTiming], None] | None = None,
                  on_total: Callable[[int], None] | None = None,
                  calibrate: int = 0) -> LatencyTable:
    """Time every distinct unit of ``models`` (each with its input shape) alone on ``runtime``.

    Units are timed ``rounds`` times over, interleaved (``measure_interleaved``), in chunks of
    at most 256 prepared sessions. ``on_total`` hears the number of distinct units before timing
    starts, ``on_unit`` each one timed. ``calibrate``: the first that many models are also timed
    whole, in the same passes as every chunk of units (so a machine whose speed drifts gives both
    the same conditions), and the table's boundary cost is fitted to them (``LatencyTable.calibrate``).
    """
    return profile_and_time(models, [], runtime=runtime, threads=threads, warmup=warmup, repeats=repeats,
                            rounds=rounds, source=source, on_unit=on_unit, on_total=on_total, calibrate=calibrate)[0]


def profile_and_time(models: Iterable[tuple[nn.Module, tuple[int, ...]]],
                     alongside: list[tuple[nn.Module, tuple[int, ...]]], *, runtime: str = "onnxruntime",
                     threads: int = 1, warmup: int = 10, repeats: int = 50, rounds: int = 3,
                     source: dict[str, Any] | None = None,
                     on_unit: Callable[[int, Unit, UnitTiming], None] | None = None,
                     on_total: Callable[[int], None] | None = None,
                     calibrate: int = 0) -> tuple[LatencyTable, list[Latency]]:
    """``profile_units``, and the latencies of the ``alongside`` models timed whole in the same passes
    (each the median over the chunks of its per-chunk median): what a benchmark compares predictions with."""
    rt = get_runtime(runtime)
    models = list(models)
    todo: dict[str, Unit] = {}
    cut: list[list[Unit]] = []
    for model, shape in models:
        cut.append(latency_units(model, shape))
        for u in cut[-1]:
            todo.setdefault(u.key, u)
    if on_total is not None:
        on_total(len(todo))
    whole = models[:calibrate] + list(alongside)
    per_chunk: list[list[Latency]] = [[] for _ in whole]
    timings: dict[str, UnitTiming] = {}
    items = list(todo.items())
    for at in range(0, len(items), 256):
        chunk = items[at:at + 256]
        lats = measure_interleaved([(u.module, u.input_shape) for _, u in chunk] + whole, runtime=rt,
                                   threads=threads, warmup=warmup, repeats=repeats, rounds=rounds)
        for i, ((key, u), lat) in enumerate(zip(chunk, lats), start=at):
            timings[key] = UnitTiming(lat.ms, lat.p25_ms, lat.p75_ms, u.kind, u.macs, u.activations)
            if on_unit is not None:
                on_unit(i, u, timings[key])
        for j, lat in enumerate(lats[len(chunk):]):
            per_chunk[j].append(lat)
    table = LatencyTable(rt.name, rt.version(), threads, repeats * rounds,
                         _empty_call(rt, threads, warmup, repeats * rounds * 4),
                         timings, machine=machine_info(),
                         created=datetime.now(timezone.utc).isoformat(timespec="seconds"), source=source or {})
    timed = [Latency(float(np.median([x.ms for x in ls])), float(np.median([x.p25_ms for x in ls])),
                     float(np.median([x.p75_ms for x in ls])), rt.name, rt.version(), threads,
                     repeats * rounds * len(ls)) for ls in per_chunk]
    if calibrate:
        table.calibrate([(units, lat.ms) for units, lat in zip(cut, timed[:calibrate])])
        table.source = {**table.source, "calibrated_on": min(calibrate, len(models))}
    return table, timed[min(calibrate, len(models)):]


_CACHE: dict[tuple[str, int, int], LatencyTable] = {}


def cached_table(path: str | Path) -> LatencyTable:
    """``load_table`` once per file version (path, size, modification time) in this process."""
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise TableError(f"{path}: cannot read the latency table ({exc.strerror or exc})") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_table(path)
    return _CACHE[key]
