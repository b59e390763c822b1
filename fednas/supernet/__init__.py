"""Weight sharing: one supernet trained by the federation, its subnets searched without training.

``Supernet`` (the largest network of a space as arrays), ``SliceAverage`` (per-element
averaging of trained subnets), ``SubnetSampler`` / ``Tier`` / ``assign_tiers`` (which subnet
a node trains: device budgets and the sandwich rule). The Flower side is ``fednas.fl``'s
(``SupernetFedAvg``, the supernet rounds of the ServerApp); the study side ``fednas.search``'s.
"""

from __future__ import annotations

from fednas.supernet._sampling import ALL, Pick, RandomTrial, SubnetSampler, Tier, admitting_nodes, assign_tiers
from fednas.supernet._distill import inplace_distillation_loss, shared_forward
from fednas.supernet._weights import SliceAverage, Supernet

__all__ = ["ALL", "Pick", "RandomTrial", "SliceAverage", "SubnetSampler", "Supernet", "Tier", "admitting_nodes",
           "assign_tiers",
           "inplace_distillation_loss", "shared_forward"]
