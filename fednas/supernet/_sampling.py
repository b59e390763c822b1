"""Which subnet each node trains: device tiers, their budgets, the sandwich rule.

A federation may have device tiers (``federation.tiers``): each a share of the nodes and a
budget (largest MACs and/or parameters its devices can run). Nodes are given to tiers in the
order of their node ids, by the shares (largest remainder). ``SubnetSampler`` knows, for each
tier, the largest and the smallest subnet of the space within the budget, and draws random
members within it; a node is only ever given subnets of its own tier.

Per round, the nodes sampled in each tier are assigned by the sandwich rule: one trains the
tier's largest subnet, one its smallest, the others random members. The order rotates with
the round (SuperFedNAS's tracking sandwich), so every node trains the extremes in turn and no
node is stuck with one size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from fednas.config import Tier, tier_counts
from fednas.cost import count_macs, count_params
from search_spaces import Architecture, Domain, RandomTrial, SearchSpace, build_model

__all__ = ["RandomTrial", "SubnetSampler", "Tier", "admitting_nodes", "assign_tiers"]

POOL = 96  # random members measured per tier to find the largest one within a budget


ALL = Tier("all", 1.0)


def assign_tiers(node_ids: list[int], tiers: tuple[Tier, ...]) -> dict[int, Tier]:
    """Node id -> tier: node ids in ascending order, split by the tiers' shares (``fednas.config.tier_counts``)."""
    nodes = sorted(node_ids)
    if not tiers:
        return {n: ALL for n in nodes}
    out, start = {}, 0
    for tier, count in zip(tiers, tier_counts([t.share for t in tiers], len(nodes))):
        for n in nodes[start:start + count]:
            out[n] = tier
        start += count
    return out


def admitting_nodes(node_ids: list[int], tiers: tuple[Tier, ...], macs: int, params: int) -> list[int]:
    """The node ids (ascending) whose device tier can run a model of this size (all of them without tiers)."""
    tier_of = assign_tiers(node_ids, tiers)
    return [n for n in sorted(node_ids) if tier_of[n].admits(macs, params)]


@dataclass(frozen=True)
class Pick:
    """A subnet given to a node: its labels, architecture and size."""

    labels: dict[str, Any]
    arch: Architecture
    macs: int
    params: int
    role: str  # "largest", "smallest" or "random"


class SubnetSampler:
    """Subnets of a space for the nodes of each tier.

    Args:
        space: the study's search space (compression labels are ignored).
        overrides: the study's label domains (``[space.labels]``).
        num_classes / in_channels / resolution: the data's, for building and measuring.
        tiers: the device tiers (empty: one tier, no budget).
        seed: the run seed (the pool a tier's largest subnet is found in is drawn from it).

    Raises:
        ValueError: a tier's budget is below the smallest subnet of the space.
    """

    def __init__(self, space: SearchSpace, overrides: dict[str, Domain], *, num_classes: int, in_channels: int,
                 resolution: int, tiers: tuple[Tier, ...] = (), seed: int = 0) -> None:
        self.space, self.overrides = space, overrides
        self.num_classes, self.in_channels, self.resolution = num_classes, in_channels, resolution
        self.tiers = tiers or (ALL,)
        self._costs: dict[str, tuple[int, int]] = {}
        self.smallest = self._pick(space.corner("low", overrides), "smallest")
        self.largest_overall = self._pick(space.corner("high", overrides), "largest")
        pool_rng = random.Random(seed)
        self._pool = [self.largest_overall, self.smallest] + [self.draw(pool_rng) for _ in range(POOL)]
        self.largest: dict[str, Pick] = {}
        for tier in self.tiers:
            if not tier.admits(self.smallest.macs, self.smallest.params):
                raise ValueError(f"federation.tiers: tier {tier.describe()} cannot run even the smallest subnet of "
                                 f"the space ({self.smallest.macs:,} MACs, {self.smallest.params:,} parameters)")
            fits = [p for p in self._pool if tier.admits(p.macs, p.params)]
            best = max(fits, key=lambda p: (p.macs, p.params))
            self.largest[tier.name] = Pick(best.labels, best.arch, best.macs, best.params, "largest")

    def cost(self, arch: Architecture) -> tuple[int, int]:
        """(MACs, parameters) of a subnet at the data's input (cached)."""
        key = arch.to_json(sort_keys=True)
        if key not in self._costs:
            model = build_model(arch, num_classes=self.num_classes, in_channels=self.in_channels)
            self._costs[key] = (count_macs(model, in_channels=self.in_channels, resolution=self.resolution),
                                count_params(model))
        return self._costs[key]

    def _pick(self, labels: dict[str, Any], role: str) -> Pick:
        arch = self.space.decode(labels)
        macs, params = self.cost(arch)
        return Pick(labels, arch, macs, params, role)

    def draw(self, rng: random.Random, tier: Tier = ALL, tries: int = 32) -> Pick:
        """A uniformly drawn member of the space within ``tier``'s budget (rejection sampling; after
        ``tries`` misses, a random member of the tier's measured pool)."""
        for _ in range(tries):
            pick = self._pick(self.space.suggest(RandomTrial(rng), self.overrides), "random")
            if tier.admits(pick.macs, pick.params):
                return pick
        fits = [p for p in self._pool if tier.admits(p.macs, p.params)]
        p = rng.choice(fits)
        return Pick(p.labels, p.arch, p.macs, p.params, "random")

    def assign(self, server_round: int, nodes: list[int], tier_of: dict[int, Tier], rng: random.Random,
               rule: str = "sandwich") -> dict[int, Pick]:
        """The subnet each of ``nodes`` trains this round.

        ``rule="sandwich"``: in each tier, the nodes (rotated by the round) get the tier's largest
        subnet, its smallest, then random members; ``"random"``: random members only.
        """
        out: dict[int, Pick] = {}
        for tier in self.tiers:
            members = sorted(n for n in nodes if tier_of[n].name == tier.name)
            if not members:
                continue
            shift = server_round % len(members)
            members = members[shift:] + members[:shift]
            for k, node in enumerate(members):
                if rule == "sandwich" and k == 0:
                    out[node] = self.largest[tier.name]
                elif rule == "sandwich" and k == 1:
                    out[node] = self.smallest
                else:
                    out[node] = self.draw(rng, tier)
        return out
