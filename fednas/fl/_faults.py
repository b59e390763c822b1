"""Injected client faults, for studying (and testing) robustness.

``federation.client_failure_rate`` makes that fraction of client calls raise inside the
ClientApp (a Flower mod; the reply is an error message, as with any failing client), and
``federation.client_dropout_rate`` makes that fraction of nodes not answer at all (the
in-process grid loses the reply, as a real grid loses a node that went offline). Both are
drawn per (seed, round, node, message type), so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message

from fednas.fl._spec import RunSpec

__all__ = ["ClientFault", "dropout_fn", "fault_mod", "fault_draw"]


class ClientFault(RuntimeError):
    """An injected client failure."""


def fault_draw(seed: int, kind: str, message: Message, partition: int | str) -> float:
    """A uniform draw in [0, 1) fixed by the run seed, the round and the node."""
    from fednas._seeds import derive_seed

    group = message.metadata.group_id  # a SecAgg+ stage has no config: its group id is the round
    rnd = (message.content["config"].get("server-round", 0) if "config" in message.content
           else int(group) if group.isdigit() else 0)
    return derive_seed(seed, kind, message.metadata.message_type, rnd, partition) / 2**31


def fault_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Raise for a seeded fraction ``client_failure_rate`` of calls, else pass through."""
    spec = RunSpec.from_run_config(context.run_config)
    rate = spec.federation.client_failure_rate
    if rate > 0 and fault_draw(spec.seed, "fail", msg, context.node_config.get("partition-id", 0)) < rate:
        raise ClientFault(f"injected client failure (client_failure_rate={rate})")
    return call_next(msg, context)


def dropout_fn(spec: RunSpec) -> Callable[[Message, int], bool] | None:
    """For ``InProcessGrid``: whether the node (by partition id) drops this message, or None if never."""
    rate = spec.federation.client_dropout_rate
    if rate <= 0:
        return None

    def dropped(msg: Message, partition: int) -> bool:
        return fault_draw(spec.seed, "drop", msg, partition) < rate

    return dropped
