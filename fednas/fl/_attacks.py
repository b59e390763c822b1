"""Malicious clients of ``federation.attack`` (see ``fednas.attacks``): who they are and what they send."""

from __future__ import annotations

import random

import torch

from fednas._seeds import derive_seed
from fednas.config import FederationConfig

__all__ = ["ATTACKER_KEY", "attack_update", "flip_labels", "malicious_partitions"]

ATTACKER_KEY = "attacker"  # reply metric: 1 from a malicious client, 0 from an honest one (only with an attack on)


def malicious_partitions(fed: FederationConfig, seed: int) -> frozenset[int]:
    """The partition ids of the malicious clients: ``fed.attackers()`` of them, drawn once per run from ``seed``."""
    k = fed.attackers()
    if not k:
        return frozenset()
    return frozenset(random.Random(derive_seed(seed, "attack")).sample(range(fed.num_clients), k))


def flip_labels(y: torch.Tensor, num_classes: int, fraction: float, seed: int) -> torch.Tensor:
    """``y`` with a seeded ``fraction`` of its labels mapped to ``num_classes - 1 - y``."""
    flipped = y.clone()
    n = round(fraction * len(y))
    if n:
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
        flipped[idx] = num_classes - 1 - y[idx]
    return flipped


def attack_update(attack: str, strength: float, received: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
                  seed: int) -> dict[str, torch.Tensor]:
    """What a malicious client sends in place of ``trained`` (its honest weights after local training).

    ``received`` is the global model it was sent. Floating-point tensors are attacked; the
    others (batch-norm step counters) are sent as trained. ``label_flip`` acts on the data
    instead (``flip_labels``), so its weights are sent unchanged here.
    """
    if attack in ("none", "label_flip"):
        return trained
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in trained.items():
        r = received.get(key)
        if r is None or not t.is_floating_point() or r.shape != t.shape:
            out[key] = t
        elif attack == "sign_flip":
            out[key] = r - strength * (t - r)
        elif attack == "scaling":
            out[key] = r + strength * (t - r)
        elif attack == "gaussian":
            out[key] = r + strength * torch.randn(t.shape, generator=gen, dtype=t.dtype)
        else:
            raise ValueError(f"federation.attack: unknown attack {attack!r}")
    return out
