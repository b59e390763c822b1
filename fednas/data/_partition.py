"""Splitting one dataset's samples among federated clients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fednas.data._errors import DataError

__all__ = ["PARTITIONERS", "label_skew", "partition"]

_MAX_DRAWS = 50  # Dirichlet re-draws before topping small clients up by moving samples


def _iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator, **_: object) -> list[np.ndarray]:
    """Shuffles and cuts into ``num_clients`` near-equal parts."""
    return np.array_split(rng.permutation(len(labels)), num_clients)


def _dirichlet_draw(by_class: list[np.ndarray], num_clients: int, alpha: float,
                    rng: np.random.Generator) -> list[np.ndarray]:
    chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for idx in by_class:
        idx = rng.permutation(idx)
        share = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
        for client, chunk in enumerate(np.split(idx, cuts)):
            chunks[client].append(chunk)
    return [np.concatenate(c) for c in chunks]


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Moves random samples from the largest client to each client below ``min_size``."""
    parts = list(parts)
    for client in range(len(parts)):
        while len(parts[client]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            pick = int(rng.integers(len(parts[donor])))
            parts[client] = np.append(parts[client], parts[donor][pick])
            parts[donor] = np.delete(parts[donor], pick)
    return parts


def _dirichlet(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, alpha: float,
               min_size: int, **_: object) -> list[np.ndarray]:
    """Per class, shares ~ Dirichlet(alpha) over clients (Hsu et al. 2019); small alpha, more skew."""
    if num_clients * min_size > len(labels):
        raise DataError(f"min_size={min_size}: {num_clients} clients x {min_size} exceeds the {len(labels)} "
                        f"samples; expected num_clients * min_size <= number of samples")
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(_MAX_DRAWS):
        parts = _dirichlet_draw(by_class, num_clients, alpha, rng)
        if min(len(p) for p in parts) >= min_size:
            return parts
    return _top_up(parts, min_size, rng)


def _shards(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, shards_per_client: int,
            **_: object) -> list[np.ndarray]:
    """Sorts by label, cuts into shards, deals ``shards_per_client`` random shards to each client."""
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise DataError(f"shards_per_client={shards_per_client}: {num_clients} clients x {shards_per_client} "
                        f"shards exceeds the {len(labels)} samples; expected at most one shard per sample")
    order = rng.permutation(len(labels))  # random order within each label
    order = order[np.argsort(labels[order], kind="stable")]
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in dealt]


def _natural(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *,
             groups: np.ndarray | None, **_: object) -> list[np.ndarray]:
    """One client per group; fewer clients get groups dealt round-robin over a seeded shuffle."""
    if groups is None:
        raise DataError("groups is required by partition 'natural'; expected one owner id per sample "
                        "(e.g. ArrayDataset.groups from source 'leaf')")
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise DataError(f"groups has shape {groups.shape}; expected {labels.shape}, one owner id per sample")
    names, group_of = np.unique(groups, return_inverse=True)
    if num_clients > len(names):
        raise DataError(f"num_clients={num_clients} exceeds the {len(names)} groups; expected at most "
                        f"{len(names)} for partition 'natural'")
    order = np.arange(len(names)) if num_clients == len(names) else rng.permutation(len(names))
    client_of_group = np.empty(len(names), dtype=np.int64)
    client_of_group[order] = np.arange(len(names)) % num_clients
    client = client_of_group[group_of.reshape(-1)]
    by_client = np.argsort(client, kind="stable")
    return np.split(by_client, np.cumsum(np.bincount(client, minlength=num_clients))[:-1])


PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
    "shards": _shards,
    "natural": _natural,
}
"""Name -> ``fn(labels, num_clients, rng, *, alpha, shards_per_client, groups, min_size)``."""


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels: got {labels.dtype} {labels.shape}; expected a 1-D integer array")
    return labels


def _check_int(key: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise DataError(f"{key}={value!r}; expected an integer {bound}")


def partition(name: str, labels: np.ndarray, num_clients: int, *, seed: int, alpha: float = 0.5,
              shards_per_client: int = 2, groups: np.ndarray | None = None,
              min_size: int = 1) -> list[np.ndarray]:
    """Splits sample positions among clients with the partitioner ``name``.

    Args:
        name: A key of ``PARTITIONERS``: "iid", "dirichlet", "shards" or "natural".
        labels: Int labels ``[N]`` (a tensor such as ``ArrayDataset.y`` works too).
        num_clients: Number of clients, in ``[1, N]``.
        seed: Seeds a ``numpy.random.Generator``; same arguments, same partition.
        alpha: Dirichlet concentration (> 0) for "dirichlet"; smaller means more label skew.
        shards_per_client: Shards dealt to each client by "shards".
        groups: Owner id per sample (``ArrayDataset.groups``); required by "natural".
        min_size: Fewest samples a "dirichlet" client may get.

    Returns:
        One sorted int64 index array per client; disjoint, together covering every sample once.

    Raises:
        DataError: Unknown name or invalid parameter (the message names the parameter).
    """
    if name not in PARTITIONERS:
        raise DataError(f"unknown partitioner {name!r}; expected one of: {', '.join(sorted(PARTITIONERS))}")
    labels = _as_labels(labels)
    _check_int("num_clients", num_clients, 1, len(labels))
    _check_int("shards_per_client", shards_per_client, 1)
    _check_int("min_size", min_size, 0)
    _check_int("seed", seed, 0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
        raise DataError(f"alpha={alpha!r}; expected a finite number > 0")
    parts = PARTITIONERS[name](labels, int(num_clients), np.random.default_rng(seed), alpha=float(alpha),
                               shards_per_client=int(shards_per_client), groups=groups,
                               min_size=int(min_size))
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def label_skew(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each client's label distribution and the pooled one.

    0 means every client sees the global label mix; values approach 1 as clients hold
    disjoint classes. Empty clients are ignored.

    Args:
        labels: Int labels ``[N]``.
        parts: Index arrays, one per client (e.g. from :func:`partition`).
        num_classes: Number of classes; every label must be below it.

    Returns:
        The mean distance, in [0, 1].
    """
    labels = _as_labels(labels)
    _check_int("num_classes", num_classes, 1)
    if len(labels) and labels.max() >= num_classes or len(labels) and labels.min() < 0:
        raise DataError(f"labels span [{labels.min()}, {labels.max()}]; expected [0, {num_classes})")
    parts = [np.asarray(p, dtype=np.int64) for p in parts if len(p)]
    if not parts:
        return 0.0
    pooled = np.bincount(labels[np.concatenate(parts)], minlength=num_classes) / sum(len(p) for p in parts)
    distances = [0.5 * np.abs(np.bincount(labels[p], minlength=num_classes) / len(p) - pooled).sum()
                 for p in parts]
    return float(np.mean(distances))
