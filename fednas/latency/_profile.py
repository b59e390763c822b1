"""``fednas latency profile``: the unit table of a study's space, timed on this machine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fednas.config import StudyConfig
from fednas.latency._table import LatencyTable, Unit, UnitTiming, draw_labels, profile_units
from fednas.models import build_run_model

__all__ = ["MAX_PROFILE_SAMPLES", "profile_study"]

MAX_PROFILE_SAMPLES = 100_000


def profile_study(config: StudyConfig, *, samples: int, resolutions: list[int], in_channels: int, num_classes: int,
                  runtime: str, threads: int, warmup: int, repeats: int, rounds: int = 3, calibrate: int = 20,
                  seed: int = 0,
                  on_unit: Callable[[int, int, Unit, UnitTiming], None] | None = None) -> LatencyTable:
    """Draw ``samples`` candidates (and the space's two corners) from the study's space and labels, and time
    every distinct unit they are built from at each of ``resolutions``; then time ``calibrate`` of
    them whole and fit the table's boundary cost to them (``LatencyTable.calibrate``).

    Raises:
        ValueError: a bad count or size, or a runtime that is not installed.
    """
    from search_spaces import JointSpace, domain_from_config, get_search_space

    if not 1 <= rounds <= 1000:
        raise ValueError(f"--rounds: expected an integer in [1, 1000], got {rounds}")
    if not 0 <= calibrate <= 10_000:
        raise ValueError(f"--calibrate: expected an integer in [0, 10000], got {calibrate}")
    if not 0 <= samples <= MAX_PROFILE_SAMPLES:
        raise ValueError(f"--samples: expected an integer in [0, {MAX_PROFILE_SAMPLES:,}], got {samples}")
    space = JointSpace(get_search_space(config.space.name, config.space.options))
    overrides = {k: domain_from_config(v, k) for k, v in config.space.labels.items()}
    draws = draw_labels(space, overrides, samples, seed)
    models: list[tuple[Any, tuple[int, ...]]] = []
    seen: set[str] = set()
    for labels in draws:
        key = repr(sorted(labels.items()))
        if key in seen:
            continue
        seen.add(key)
        arch, settings = space.decode(labels), space.settings(labels)
        for res in resolutions:
            try:
                model = build_run_model(arch, settings, num_classes=num_classes, in_channels=in_channels)
                models.append((model, (in_channels, res, res)))
            except (RuntimeError, ValueError):  # an architecture too deep for this input: no candidate to time
                continue
    if not models:
        raise ValueError(f"no architecture of space {config.space.name!r} builds at {in_channels}x{resolutions}")
    total: list[int] = [0]

    def counted(i: int, u: Unit, t: UnitTiming) -> None:
        if on_unit is not None:
            on_unit(i, total[0], u, t)

    source = {"space": config.space.name, "space_options": config.space.options, "labels": config.space.labels,
              "samples": samples, "seed": seed, "architectures": len(seen), "in_channels": in_channels,
              "resolutions": resolutions, "num_classes": num_classes}
    return profile_units(models, runtime=runtime, threads=threads, warmup=warmup, repeats=repeats, rounds=rounds,
                         source=source, calibrate=calibrate,
                         on_unit=counted, on_total=lambda n: total.__setitem__(0, n))
