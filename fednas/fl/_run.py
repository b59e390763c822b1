"""Run one federation in this process: the real ServerApp over an ``InProcessGrid``."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fednas.fl import client_app, server_app
from fednas.fl._faults import dropout_fn
from fednas.fl._grid import SUPERLINK_NODE_ID, InProcessGrid
from fednas.fl._spec import RunSpec
from fednas._seeds import derive_seed
from fednas.fl.server_app import RoundRecord, RunHooks, ServerOutcome, run_hooks

__all__ = ["run_federation", "serverapp_identity"]


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
) -> ServerOutcome:
    """Run ``spec`` with fednas's ServerApp and ClientApp on an in-process grid.

    This is what Flower's simulation runtime does, minus Ray: the runtime's job of
    giving each node its Context and routing messages is done by ``InProcessGrid``.
    Node sampling (Python's ``random``) is seeded from the spec and the caller's
    random state is restored afterwards.
    """
    run_config = spec.to_run_config()
    grid = InProcessGrid(
        client_app.app, spec.federation.num_clients, run_config, run_id=run_id, drop=dropout_fn(spec)
    )
    context = Context(run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config=run_config)
    hooks = RunHooks(on_round=on_round)
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
