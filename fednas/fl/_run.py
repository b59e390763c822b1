"""Run one federation in this process: the real ServerApp over an ``InProcessGrid``."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fednas.fl import client_app, server_app
from fednas.fl._faults import dropout_fn
from fednas.fl._grid import SUPERLINK_NODE_ID, InProcessGrid
from fednas.fl._spec import RunSpec
from fednas._seeds import derive_seed
from fednas.fl.server_app import RoundRecord, RunHooks, ServerOutcome, run_hooks

__all__ = ["SubnetEvaluator", "run_federation", "run_supernet", "serverapp_identity"]


@contextmanager
def serverapp_identity(run_id: int) -> Iterator[None]:
    """Act as the ServerApp process of run ``run_id`` (Flower's runtimes set this identity;
    ``Message`` reads it to fill in the sender), restoring the previous identity after."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def run_federation(
    spec: RunSpec,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    run_id: int = 1,
    initial: dict[str, Any] | None = None,
    nodes: list[int] | None = None,
) -> ServerOutcome:
    """Run ``spec`` with fednas's ServerApp and ClientApp on an in-process grid.

    This is what Flower's simulation runtime does, minus Ray: the runtime's job of
    giving each node its Context and routing messages is done by ``InProcessGrid``.
    Node sampling (Python's ``random``) is seeded from the spec and the caller's
    random state is restored afterwards. ``initial``: a state dict to start from;
    ``nodes``: the node ids that take part (default all; the grid's ids are 1001, 1002, ...).
    """
    return _run_app(spec, RunHooks(on_round=on_round, initial=initial, nodes=nodes), run_id)


def run_supernet(
    spec: RunSpec,
    *,
    start: tuple[Any, list[Any]] | None = None,
    on_round: Callable[..., None] | None = None,
    run_id: int = 1,
) -> Any:
    """Train the supernet of ``spec`` (``spec.supernet`` set) with fednas's apps on an in-process grid.

    ``start``: a checkpoint ``(Supernet, rounds done)`` to continue from; ``on_round`` gets
    ``(SupernetRound, Supernet)`` after every round. Returns a ``SupernetOutcome``.
    """
    if not spec.supernet:
        raise ValueError("run_supernet: the spec names no supernet (RunSpec.supernet is empty)")
    return _run_app(spec, RunHooks(on_round=on_round, start=start), run_id)


def _grid(spec: RunSpec, run_id: int) -> tuple[InProcessGrid, dict[str, str]]:
    run_config = spec.to_run_config()
    grid = InProcessGrid(
        client_app.app, spec.federation.num_clients, run_config, run_id=run_id, drop=dropout_fn(spec)
    )
    return grid, run_config


def _run_app(spec: RunSpec, hooks: RunHooks, run_id: int) -> Any:
    grid, run_config = _grid(spec, run_id)
    context = Context(run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config=run_config)
    saved_random = random.getstate()
    token = run_hooks.set(hooks)
    try:
        with serverapp_identity(run_id):
            random.seed(derive_seed(spec.seed, "node-sampling"))
            server_app.app(grid, context)
    finally:
        run_hooks.reset(token)
        random.setstate(saved_random)
    return hooks.outcomes[-1]


class SubnetEvaluator:
    """Score many subnets of one supernet with pooled batch-norm statistics, on one in-process grid.

    Use as a context manager (it acts as the ServerApp while open)::

        with SubnetEvaluator(spec, supernet) as ev:
            score = ev.evaluate(arch, macs, params)   # one batch-norm round trip, counted

    The nodes keep their Context between evaluations, as SuperNodes do. With device tiers,
    only the nodes whose tier can run the subnet are asked for their statistics.
    """

    def __init__(self, spec: RunSpec, supernet: Any, *, run_id: int = 2) -> None:
        from fednas.fl._grid import CountingGrid
        from fednas.fl._spec import federated_data

        self.spec, self.supernet, self.run_id = spec, supernet, run_id
        self.data = federated_data(spec.data, spec.federation.num_clients, spec.seed)
        self.grid = CountingGrid(_grid(spec, run_id)[0])
        self._identity: Any = None

    def __enter__(self) -> SubnetEvaluator:
        self._identity = serverapp_identity(self.run_id)
        self._identity.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._identity.__exit__(*exc)

    def nodes(self, macs: int, params: int) -> list[int]:
        from fednas.fl._supernet import nodes_for

        return nodes_for(self.grid, self.spec.federation.tier_list(), macs, params)

    def evaluate(self, arch: Any, macs: int, params: int) -> Any:
        """A ``SubnetScore``; raises ``FederationError`` when no node can run or answer for the subnet."""
        from fednas.fl._supernet import evaluate_subnet
        from fednas.fl.server_app import FederationError

        nodes = self.nodes(macs, params)
        if not nodes:
            raise FederationError(f"no device tier can run {arch.describe()} ({macs:,} MACs, {params:,} parameters)")
        return evaluate_subnet(self.grid, self.supernet, arch, self.data, nodes=nodes,
                               device=self.spec.federation.device)
