"""Federated supernet training on fednas's Flower apps, and subnet evaluation with pooled statistics.

``SupernetFedAvg`` is a Flower ``FedAvg`` whose global model is a ``fednas.supernet.Supernet``:
``configure_train`` gives every sampled node its own subnet (``SubnetSampler``: within the
node's device tier, by the sandwich rule) and sends it that subnet's slice of the weights, as
an ordinary train message that fednas's ClientApp trains like any other candidate;
``aggregate_train`` folds the replies back in, each supernet element averaged over the nodes
whose subnet held it (``SliceAverage``; FedAvg's own aggregation requires equal keys).

``run_supernet_server`` is the ServerApp's loop for a supernet run (phase 1 of a supernet
study): per round, train, aggregate, and every ``eval_every`` rounds score the largest and
the smallest subnet with batch-norm statistics pooled from the clients, for the training
curve. It can start from a checkpoint, and hands each round's state to ``on_round`` (the
study stores it). Node sampling and subnet draws are seeded per round, so a run resumed
from round ``r`` continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fednas._seeds import derive_seed
from fednas.compress import from_torch, to_array_record, to_numpy
from fednas.config import FederationConfig, SupernetConfig
from fednas.fl._grid import CountingGrid, record_bytes
from fednas.fl._spec import FederatedData, RunSpec, federated_data
from fednas.supernet import Pick, SliceAverage, SubnetSampler, Supernet, Tier, admitting_nodes, assign_tiers
from fednas.train import evaluate, resolve_device
from search_spaces import Architecture, domain_from_config, get_search_space, with_compression

__all__ = ["SubnetScore", "SupernetFedAvg", "SupernetOutcome", "SupernetRound", "evaluate_subnet", "make_sampler",
           "run_supernet_server", "supernet_of"]

log = logging.getLogger(__name__)
INPLACE_KD_KEY = "inplace-kd-arch"  # train config: the smaller subnet a node distills into, inside its own


@dataclass
class SupernetRound:
    """One round of supernet training: what it cost and, when evaluated, how its extremes scored."""

    round: int
    train_loss: float
    replies: int
    failures: int
    dropped: int
    client_epochs: int
    subnets: int  # distinct subnets trained this round
    download_bytes: int  # every exchange of the round (training and, when evaluated, batch-norm pooling)
    upload_bytes: int
    bytes_by_tier: dict[str, dict[str, int]]  # training messages only: tier -> download/upload bytes
    seconds: float
    accuracy_largest: float = math.nan
    accuracy_smallest: float = math.nan


@dataclass
class SupernetOutcome:
    """The trained supernet and the rounds that trained it (including rounds done before a resume)."""

    supernet: Supernet
    rounds: list[SupernetRound] = field(default_factory=list)

    @property
    def download_bytes(self) -> int:
        return sum(r.download_bytes for r in self.rounds)

    @property
    def upload_bytes(self) -> int:
        return sum(r.upload_bytes for r in self.rounds)

    @property
    def client_epochs(self) -> int:
        return sum(r.client_epochs for r in self.rounds)


@dataclass(frozen=True)
class SubnetScore:
    """A subnet evaluated with inherited weights: accuracy after pooling batch-norm statistics."""

    accuracy: float
    loss: float
    download_bytes: int
    upload_bytes: int
    nodes: int
    model: Any  # the subnet module, weights and pooled statistics loaded


def supernet_of(spec: RunSpec) -> tuple[Any, dict[str, Any], Architecture]:
    """The search space, its label domains and its supernet architecture named by ``spec.supernet``."""
    doc = spec.supernet["space"]
    space = with_compression(get_search_space(doc["name"], doc.get("options", {})))
    overrides = {k: domain_from_config(v, k) for k, v in doc.get("labels", {}).items()}
    return space, overrides, space.arch.supernet({k: v for k, v in overrides.items() if k in space.arch.domains()})


def make_sampler(spec: RunSpec, data: FederatedData) -> SubnetSampler:
    space, overrides, _ = supernet_of(spec)
    train = data.train
    return SubnetSampler(space, overrides, num_classes=train.num_classes, in_channels=train.in_channels,
                         resolution=train.resolution, tiers=spec.federation.tier_list(), seed=spec.seed)


class SupernetFedAvg(FedAvg):
    """FedAvg over a weight-sharing supernet: each node trains its own subnet, weights averaged per element.

    Args:
        supernet: the global model (updated in place by ``aggregate_train``).
        sampler: which subnets exist for each tier, and how they are drawn.
        rule: "sandwich" or "random" (``SubnetSampler.assign``).
        seed: run seed; node sampling and subnet draws of round ``r`` derive from (seed, r).
        **kwargs: ``FedAvg``'s (fractions, minimum node counts).
    """

    def __init__(self, supernet: Supernet, sampler: SubnetSampler, *, rule: str = "sandwich", seed: int = 0,
                 distill: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supernet, self.sampler, self.rule, self.seed, self.distill = supernet, sampler, rule, seed, distill
        self.assigned: dict[int, Pick] = {}
        self.tier_of: dict[int, Tier] = {}
        self.bytes_by_tier: dict[str, dict[str, int]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One message per sampled node: its subnet's architecture and slice of the supernet (``arrays`` unused)."""
        if self.fraction_train == 0.0:
            return []
        while len(nodes := sorted(grid.get_node_ids())) < self.min_available_nodes:
            log.info("waiting for nodes: %d connected, %d needed", len(nodes), self.min_available_nodes)
            time.sleep(1)
        rng = random.Random(derive_seed(self.seed, "supernet-round", server_round))
        sample = rng.sample(nodes, max(int(len(nodes) * self.fraction_train), self.min_train_nodes))
        self.tier_of = assign_tiers(nodes, self.sampler.tiers)
        picks = self.sampler.assign(server_round, sample, self.tier_of, rng, self.rule)
        self.assigned, self.bytes_by_tier = {}, {}
        messages = []
        for node in sample:
            pick = picks[node]
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "arch": pick.arch.to_json()})
            if self.distill and pick.arch != self.sampler.smallest.arch:  # in-place distillation on the node
                cfg[INPLACE_KD_KEY] = self.sampler.smallest.arch.to_json()
            content = RecordDict({self.arrayrecord_key: to_array_record(self.supernet.extract(pick.arch)),
                                  self.configrecord_key: cfg})
            self.assigned[node] = pick
            self._count(node, "download_bytes", record_bytes(content))
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        return messages

    def _count(self, node: int, way: str, n: int) -> None:
        tier = self.bytes_by_tier.setdefault(self.tier_of[node].name, {"download_bytes": 0, "upload_bytes": 0})
        tier[way] += n

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average every supernet element over the replies whose subnet held it, weighted by examples.

        A reply that does not fit the subnet its node was sent (missing or misshapen tensors)
        is left out and logged, as a failed node is.
        """
        valid, _ = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        average, used = SliceAverage(self.supernet), []
        for msg in valid:
            node = msg.metadata.src_node_id
            pick = self.assigned.get(node)
            try:
                if pick is None:
                    raise ValueError(f"node {node} was sent no subnet this round")
                weight = float(next(iter(msg.content.metric_records.values()))[self.weighted_by_key])
                average.add(pick.arch, to_numpy(msg.content[self.arrayrecord_key]), weight)
            except (KeyError, StopIteration, ValueError) as exc:
                log.warning("round %d: reply of node %s left out: %s", server_round, node, exc)
                continue
            self._count(node, "upload_bytes", record_bytes(msg.content))
            used.append(msg.content)
        if not used:
            return None, None
        average.apply()
        metrics = self.train_metrics_aggr_fn(used, self.weighted_by_key)
        return to_array_record(self.supernet.state), metrics


def evaluate_subnet(grid: CountingGrid, supernet: Supernet, arch: Architecture, data: FederatedData, *,
                    nodes: list[int] | None = None, device: str = "cpu") -> SubnetScore:
    """Score ``arch`` with the supernet's weights: batch-norm statistics pooled from ``nodes``
    (default: all) in one round trip through ``grid`` (counted), then the held-out split."""
    from fednas.fl.server_app import _pool_batchnorm

    model = supernet.subnet(arch)
    seen = len(grid.traffic.exchanges)
    _pool_batchnorm(grid, model, from_torch(model.state_dict()), arch.to_json(), nodes=nodes)
    new = grid.traffic.exchanges[seen:]
    loss, acc = evaluate(model, data.test.x, data.test.y, device=resolve_device(device))
    return SubnetScore(acc, loss, sum(e.download_bytes for e in new), sum(e.upload_bytes for e in new),
                       sum(e.replies - e.errors for e in new), model.eval())


def nodes_for(grid: Grid, tiers: tuple[Tier, ...], macs: int, params: int) -> list[int]:
    """The grid's nodes whose device tier can run a subnet of this size (all nodes without tiers)."""
    return admitting_nodes(list(grid.get_node_ids()), tiers, macs, params)


def run_supernet_server(grid: Grid, spec: RunSpec, *, start: tuple[Supernet, list[SupernetRound]] | None = None,
                        on_round: Callable[[SupernetRound, Supernet], None] | None = None) -> SupernetOutcome:
    """Train the supernet of ``spec`` for ``supernet.rounds`` rounds (from ``start``'s round on, if given).

    Raises:
        FederationError: a round got fewer successful replies than ``min_train_nodes``.
    """
    from fednas.fl._strategies import sampling_kwargs
    from fednas.fl.server_app import _check_round, _flower_quiet

    fed: FederationConfig = spec.federation
    settings = SupernetConfig(**spec.supernet["settings"])
    data = federated_data(spec.data, fed.num_clients, spec.seed)
    _, _, arch = supernet_of(spec)
    train = data.train
    if start is None:
        supernet, done = Supernet.initial(arch, num_classes=train.num_classes, in_channels=train.in_channels,
                                          seed=spec.seed), []
    else:
        supernet, done = start[0], list(start[1])
    sampler = make_sampler(spec, data)
    strategy = SupernetFedAvg(supernet, sampler, rule=settings.sampling, seed=spec.seed, distill=settings.distill,
                              **sampling_kwargs(fed))
    counting = CountingGrid(grid)
    outcome = SupernetOutcome(supernet, done)
    tiers = fed.tier_list()
    largest = max(sampler.largest.values(), key=lambda p: (p.macs, p.params))
    config = ConfigRecord({"lr": fed.lr})
    with _flower_quiet():
        for rnd in range(len(done) + 1, settings.rounds + 1):
            seen, t0 = len(counting.traffic.exchanges), time.perf_counter()
            replies = counting.send_and_receive(strategy.configure_train(rnd, ArrayRecord(), config, counting))
            ex = _check_round(counting, rnd, fed.min_train_nodes, first_round=len(done) + 1)
            strategy.aggregate_train(rnd, replies)
            acc_l = acc_s = math.nan
            if (settings.eval_every and rnd % settings.eval_every == 0) or rnd == settings.rounds:
                acc_l = evaluate_subnet(counting, supernet, largest.arch, data, device=fed.device,
                                        nodes=nodes_for(counting, tiers, largest.macs, largest.params)).accuracy
                acc_s = evaluate_subnet(counting, supernet, sampler.smallest.arch, data, device=fed.device).accuracy
            new = counting.traffic.exchanges[seen:]
            ok = ex.replies - ex.errors
            record = SupernetRound(
                round=rnd, train_loss=ex.metrics.get("train_loss", math.nan), replies=ok, failures=ex.errors,
                dropped=ex.sent - ex.replies, client_epochs=ok * fed.local_epochs,
                subnets=len({p.arch.to_json() for p in strategy.assigned.values()}),
                download_bytes=sum(e.download_bytes for e in new), upload_bytes=sum(e.upload_bytes for e in new),
                bytes_by_tier=strategy.bytes_by_tier, seconds=time.perf_counter() - t0,
                accuracy_largest=acc_l, accuracy_smallest=acc_s)
            outcome.rounds.append(record)
            if on_round:
                on_round(record, supernet)
    return outcome

