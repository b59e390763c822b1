"""Divide-and-Conquer (DnC), a Byzantine-robust rule by spectral filtering (``federation.strategy = "dnc"``).

Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and
Defenses for Federated Learning" (NDSS 2021), Algorithm 2. Each of ``num_iters`` times: take a
seeded random subset of ``subsample_dim`` coordinates of the replies' floating-point arrays,
centre the replies on their mean, find the top right singular vector ``v`` of the centred
matrix, score each reply by its squared projection ``((x_i - mu) . v)^2``, and keep the
``n - ceil(filter_frac * num_malicious_nodes)`` lowest-scored replies. The replies kept in every
iteration are averaged as FedAvg does (weighted by examples).

Why it fits the attacks here: malicious replies that push together in one direction (sign
flipping, scaling, a shared poisoned direction) are what the top singular direction of the
centred replies finds, while the coordinate-wise rules (median, trimmed mean) and the
distance-based ones (Krum) judge each coordinate or each pair alone and, under label skew,
also discard the honest clients whose data differ most.

Replies hold models, not updates; centring on the mean removes the common global model, so
the scores are those of the updates. Non-floating arrays (batch-norm step counters) are not
scored and are averaged with the rest by FedAvg. The coordinate subsets are seeded by
``rule_seed`` and the round, so a run is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fednas._seeds import derive_seed
from fednas.compress._mods import to_numpy

__all__ = ["DnC", "dnc_keep", "flatten", "valid_models"]


def valid_models(strategy: FedAvg, replies: Iterable[Message]) -> tuple[list[Message], list[dict[str, np.ndarray]]]:
    """The replies without error (logged as FedAvg logs them) and their arrays as NumPy."""
    valid, _ = strategy._check_and_log_replies(replies, is_train=True)
    return valid, [to_numpy(m.content[strategy.arrayrecord_key]) for m in valid]


def flatten(models: list[dict[str, np.ndarray]], keys: list[str]) -> np.ndarray:
    """One float64 row per model: its arrays named by ``keys``, raveled and concatenated."""
    return np.stack([np.concatenate([m[k].ravel() for k in keys]).astype(np.float64) for m in models])


def dnc_keep(updates: np.ndarray, num_remove: int, *, num_iters: int = 5, subsample_dim: int = 10_000,
             seed: int = 0) -> list[int]:
    """Indices (ascending) of the rows of ``updates`` (clients x coordinates) that DnC keeps.

    ``num_remove`` rows are dropped per iteration (the highest squared projections on the top
    singular vector of the centred, subsampled matrix); a row survives if it is kept in every
    iteration. At least one row is always kept (the best-scored of the last iteration).
    """
    n, d = updates.shape
    if num_remove <= 0 or n <= 1:
        return list(range(n))
    num_remove = min(num_remove, n - 1)
    rng = np.random.default_rng(seed)
    good = set(range(n))
    best = 0
    for _ in range(max(1, num_iters)):
        cols = rng.choice(d, size=subsample_dim, replace=False) if d > subsample_dim else np.arange(d)
        sub = updates[:, cols].astype(np.float64)
        centred = sub - sub.mean(axis=0, keepdims=True)
        if not np.any(centred):
            continue  # identical replies: nothing to tell apart
        v = np.linalg.svd(centred, full_matrices=False)[2][0]
        scores = (centred @ v) ** 2
        order = np.argsort(scores, kind="stable")
        best = int(order[0])
        good &= {int(i) for i in order[: n - num_remove]}
    return sorted(good) or [best]


class DnC(FedAvg):
    """FedAvg over the replies DnC keeps; see the module docstring.

    Args:
        num_malicious_nodes: ``m``, the attackers the rule is built for.
        filter_frac: ``c``; ``ceil(c * m)`` replies are removed per iteration.
        num_iters: iterations (independent coordinate subsets).
        subsample_dim: coordinates per iteration (all when the model has fewer).
        rule_seed: seeds the subsets (with the round).
        **kwargs: ``FedAvg``'s.
    """

    takes_seed = True  # make_strategy passes the run's seed as rule_seed

    def __init__(self, *args: Any, num_malicious_nodes: int = 1, filter_frac: float = 1.0, num_iters: int = 5,
                 subsample_dim: int = 10_000, rule_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_malicious_nodes, self.filter_frac = int(num_malicious_nodes), float(filter_frac)
        self.num_iters, self.subsample_dim, self.rule_seed = int(num_iters), int(subsample_dim), int(rule_seed)
        self.kept: dict[int, list[int]] = {}  # round -> indices of the valid replies kept (for records and tests)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, models = valid_models(self, replies)
        if not valid:
            return None, None
        flat = flatten(models, [k for k, a in models[0].items() if np.issubdtype(a.dtype, np.floating)])
        remove = math.ceil(self.filter_frac * self.num_malicious_nodes - 1e-9)
        keep = dnc_keep(flat, remove, num_iters=self.num_iters, subsample_dim=self.subsample_dim,
                        seed=derive_seed(self.rule_seed, "dnc", server_round))
        self.kept[server_round] = keep
        return super().aggregate_train(server_round, [valid[i] for i in keep])
