"""The one Pareto front: dominance, front statuses, the knee point and the hypervolume.

Plain numpy. Every function takes raw objective values and their directions
("maximize"/"minimize"), so callers never flip signs themselves. ``statuses`` is the front
that ``fednas search``, ``pareto``, ``export --pick`` and ``plot`` all show: the
non-dominated COMPLETE trials among those that satisfy every constraint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["crowding_distance", "hypervolume", "knee_index", "nondominated_ranks", "normalized_losses", "pareto_mask",
           "select_by_rank", "statuses", "to_losses"]


def to_losses(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Values as a float array to be minimized in every column (maximized columns negated).

    Raises:
        ValueError: a direction other than "maximize"/"minimize", or a shape mismatch.
    """
    arr = np.asarray(values, dtype=float).reshape(len(values), -1) if len(values) else np.zeros((0, len(directions)))
    if arr.shape[1] != len(directions):
        raise ValueError(f"expected {len(directions)} objective values per point, got {arr.shape[1]}")
    signs = []
    for d in directions:
        if d not in ("maximize", "minimize"):
            raise ValueError(f"direction: expected 'maximize' or 'minimize', got {d!r}")
        signs.append(-1.0 if d == "maximize" else 1.0)
    return arr * np.asarray(signs)


def pareto_mask(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated points (duplicates of a front point are all kept)."""
    loss = to_losses(values, directions)
    n = len(loss)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated_by = np.all(loss <= loss[i], axis=1) & np.any(loss < loss[i], axis=1)
        mask[i] = not dominated_by.any()
    return mask


def nondominated_ranks(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Non-dominated sorting (NSGA-II): 0 for the Pareto front, 1 for the front once it is removed, ..."""
    loss = to_losses(values, directions)
    ranks = np.full(len(loss), -1, dtype=int)
    rank = 0
    while (ranks < 0).any():
        left = np.flatnonzero(ranks < 0)
        mask = pareto_mask(loss[left], ["minimize"] * loss.shape[1])
        ranks[left[mask]] = rank
        rank += 1
    return ranks


def crowding_distance(values: Sequence[Sequence[float]]) -> np.ndarray:
    """NSGA-II's crowding distance of each point within its set: the extremes of each objective are infinite."""
    arr = np.asarray(values, dtype=float).reshape(len(values), -1) if len(values) else np.zeros((0, 1))
    n = len(arr)
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(arr.shape[1]):
        order = np.argsort(arr[:, j], kind="stable")
        span = arr[order[-1], j] - arr[order[0], j]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (arr[order[2:], j] - arr[order[:-2], j]) / span
    return dist


def select_by_rank(values: Sequence[Sequence[float]], directions: Sequence[str], keep: int) -> list[int]:
    """Indices of the ``keep`` best points: by non-dominated rank, ties in the last rank broken by larger
    crowding distance (then by index), as NSGA-II's survivor selection does."""
    ranks = nondominated_ranks(values, directions)
    chosen: list[int] = []
    for rank in range(int(ranks.max()) + 1 if len(ranks) else 0):
        members = np.flatnonzero(ranks == rank)
        if len(chosen) + len(members) <= keep:
            chosen += members.tolist()
            continue
        crowd = crowding_distance(to_losses([values[i] for i in members], directions))
        order = sorted(range(len(members)), key=lambda k: (-crowd[k], members[k]))
        chosen += [int(members[k]) for k in order[: keep - len(chosen)]]
        break
    return sorted(chosen)


def statuses(trials: Sequence[Any], names: Sequence[str], directions: Sequence[str]) -> list[str]:
    """"front", "dominated" or "infeasible" for each trial, the front taken over feasible trials only.

    ``trials`` are records with ``number``, ``feasible`` and ``values`` (metric name -> value).
    """
    feasible = [t for t in trials if t.feasible]
    mask = pareto_mask([[t.values[n] for n in names] for t in feasible], directions) if feasible else []
    on_front = {t.number for t, m in zip(feasible, mask) if m}
    return ["infeasible" if not t.feasible else ("front" if t.number in on_front else "dominated") for t in trials]


def normalized_losses(
    values: Sequence[Sequence[float]], directions: Sequence[str], bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Losses scaled to [0, 1] per objective (0 = best); a constant objective maps to 0.

    Args:
        values: points x objectives, raw values.
        directions: one per objective.
        bounds: (low, high) of the losses to scale by; default: the points' own range.
    """
    loss = to_losses(values, directions)
    if len(loss) == 0:
        return loss
    low, high = bounds if bounds is not None else (loss.min(axis=0), loss.max(axis=0))
    span = np.where(high > low, high - low, 1.0)
    return np.where(high > low, (loss - low) / span, 0.0)


def knee_index(values: Sequence[Sequence[float]], directions: Sequence[str]) -> int:
    """Index of the point closest (Euclidean) to the ideal point after scaling to [0, 1].

    Each objective is scaled over the given points, so the ideal point is the origin; ties
    go to the earliest point.

    Raises:
        ValueError: when there are no points.
    """
    if len(values) == 0:
        raise ValueError("knee point: no points")
    dist = np.linalg.norm(normalized_losses(values, directions), axis=1)
    return int(np.argmin(dist))


def hypervolume(losses: np.ndarray, reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``losses`` (to minimize) and bounded by ``reference``.

    Points not strictly better than the reference in every objective add nothing. The
    recursion slices along the last objective (fine for the few objectives and tens to
    hundreds of points of a fednas study).
    """
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(losses, dtype=float).reshape(-1, len(ref))
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[pareto_mask(pts, ["minimize"] * len(ref))]
    return _hv(np.unique(pts, axis=0), ref)


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    if pts.shape[1] == 2:
        order = np.argsort(pts[:, 0], kind="stable")
        total, best_y = 0.0, ref[1]
        for x, y in pts[order]:
            if y < best_y:
                total += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(total)
    order = np.argsort(pts[:, -1], kind="stable")
    pts = pts[order]
    total = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        depth = upper - pts[i, -1]
        if depth > 0:
            total += depth * _hv(pts[: i + 1, :-1], ref[:-1])
    return float(total)
