"""Grids: an in-process transport and a byte-counting decorator.

``InProcessGrid`` implements ``flwr.serverapp.Grid`` by calling the real ``ClientApp``
for each destination node, with that node's own ``Context`` (kept across rounds, as a
SuperNode keeps it). No Ray, no subprocess: a trial's federation costs what its local
training costs. Each node receives its own copy of the message content, made through
Flower's protobuf serde, so nodes cannot share state through the server's objects.

``CountingGrid`` wraps any grid (in-process, simulation, deployment) and measures the
records of every message pushed and every reply pulled with Flower's ``count_bytes``.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from uuid import uuid4

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fednas._interrupt import checkpoint
from fednas.fl._attacks import ATTACKER_KEY
from fednas.fl._secure import CLIPPED_KEY

__all__ = ["CountingGrid", "InProcessGrid", "NodeSubset", "Traffic", "record_bytes"]

log = logging.getLogger(__name__)

SUPERLINK_NODE_ID = 1
# Flower's error code for an exception raised inside a ClientApp.
CLIENT_APP_RAISED_EXCEPTION = 0


def record_bytes(content: RecordDict) -> int:
    """Bytes of all records of a message's content, as Flower's ``count_bytes`` measures them.

    Flower's ``ConfigRecord.count_bytes`` raises on an empty list (IndexError; SecAgg+'s
    unmask stage sends them) and on an empty string (ValueError; a legacy ``FitRes`` status
    message is one): such values are counted here as 0 bytes (their keys as Flower counts keys).
    """
    total = 0
    for records in (content.array_records, content.metric_records):
        total += sum(r.count_bytes() for r in records.values())
    for record in content.config_records.values():
        empty = [k for k, v in record.items() if isinstance(v, (list, str, bytes)) and not v]
        if empty:  # the key's own bytes, as count_bytes counts them, and no value bytes
            record = ConfigRecord({k: v for k, v in record.items() if k not in empty})
            total += sum(len(k) for k in empty)
        total += record.count_bytes()
    return total


def _wire_copy(content: RecordDict) -> RecordDict:
    return recorddict_from_proto(recorddict_to_proto(content))


class InProcessGrid(Grid):
    """A ``Grid`` whose nodes are ``ClientApp`` calls in this process.

    Args:
        client_app: the ClientApp every node runs.
        num_nodes: number of nodes; node ``i`` gets ``partition-id = i``.
        run_config: the run config each node's Context carries.
        run_id: id of the run.
        node_ids: explicit node ids (default: 1001, 1002, ...).
        drop: optional predicate ``(message, partition_id) -> bool``; a message it selects
            reaches no node and gets no reply, as when a node goes offline.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict[str, bool | float | int | str],
        *,
        run_id: int = 1,
        node_ids: list[int] | None = None,
        drop: Callable[[Message, int], bool] | None = None,
    ) -> None:
        self._app = client_app
        self._drop = drop
        ids = node_ids or [1001 + i for i in range(num_nodes)]
        if len(ids) != num_nodes:
            raise ValueError(f"node_ids: expected {num_nodes} ids, got {len(ids)}")
        self._contexts = {
            nid: Context(
                run_id=run_id,
                node_id=nid,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, nid in enumerate(ids)
        }
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def context(self, node_id: int) -> Context:
        """The node's own Context (its ``state`` persists across rounds)."""
        return self._contexts[node_id]

    def partition_of(self, node_id: int) -> int:
        return int(self._contexts[node_id].node_config["partition-id"])

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self._contexts:
                raise ValueError(f"message for unknown node {msg.metadata.dst_node_id}")
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            msg.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            if self._drop is None or not self._drop(msg, self.partition_of(msg.metadata.dst_node_id)):
                self._replies[msg.metadata.message_id] = self._deliver(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def _deliver(self, msg: Message) -> Message:
        checkpoint()  # Ctrl-C stops between client calls
        node_id = msg.metadata.dst_node_id
        received = Message(metadata=msg.metadata, content=_wire_copy(msg.content))
        try:
            reply = self._app(received, self._contexts[node_id])
            if reply.has_content():
                reply = Message(metadata=reply.metadata, content=_wire_copy(reply.content))
        except Exception as exc:  # a failing client is a reply with an error, as in Flower
            log.debug("ClientApp on node %s raised:\n%s", node_id, traceback.format_exc())
            reason = f"{type(exc).__name__}: {exc}"
            reply = Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=received)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@dataclass
class Exchange:
    """One ``send_and_receive``: what went down, what came up."""

    message_type: str
    sent: int = 0
    replies: int = 0
    errors: int = 0
    download_bytes: int = 0
    upload_bytes: int = 0
    seconds: float = 0.0
    error_reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    attackers: int = 0  # replies from malicious clients (``federation.attack``)
    clipped: int = 0  # SecAgg+: values the replying clients clipped to the quantization range
    maxima: dict[str, float] = field(default_factory=dict)  # each metric's largest value over the replies


@dataclass
class Traffic:
    """All exchanges of a run, in order."""

    exchanges: list[Exchange] = field(default_factory=list)

    @property
    def download_bytes(self) -> int:
        return sum(e.download_bytes for e in self.exchanges)

    @property
    def upload_bytes(self) -> int:
        return sum(e.upload_bytes for e in self.exchanges)

    @property
    def total_bytes(self) -> int:
        return self.download_bytes + self.upload_bytes


class _Delegating(Grid):
    """A grid decorator: everything goes to ``grid``; subclasses change what they wrap."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


class CountingGrid(_Delegating):
    """Delegate to ``grid`` and count the bytes of every message's records each way."""

    def __init__(self, grid: Grid, on_exchange: Callable[[Exchange], None] | None = None) -> None:
        super().__init__(grid)
        self.traffic = Traffic()
        self._on_exchange = on_exchange

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ex = self._open(messages)
        ids = list(self._grid.push_messages(messages))
        ex.sent = len(ids)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        if self.traffic.exchanges:
            self._count_replies(self.traffic.exchanges[-1], replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        start = time.perf_counter()
        ex = self._open(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        ex.sent = len(messages)
        self._count_replies(ex, replies)
        ex.seconds = time.perf_counter() - start
        if self._on_exchange:
            self._on_exchange(ex)
        return replies

    def _open(self, messages: list[Message]) -> Exchange:
        kind = messages[0].metadata.message_type if messages else ""
        ex = Exchange(kind, download_bytes=sum(record_bytes(m.content) for m in messages))
        self.traffic.exchanges.append(ex)
        return ex

    @property
    def last_errors(self) -> list[str]:
        """Error reasons of the latest exchange."""
        return list(self.traffic.exchanges[-1].error_reasons) if self.traffic.exchanges else []

    @staticmethod
    def _count_replies(ex: Exchange, replies: list[Message]) -> None:
        weighted: dict[str, float] = {}
        total = 0.0
        for r in replies:
            ex.replies += 1
            if r.has_error():
                ex.errors += 1
                ex.error_reasons.append(r.error.reason)
                continue
            ex.upload_bytes += record_bytes(r.content)
            records = r.content.metric_records  # a SecAgg+ reply also carries the legacy fitres.num_examples
            for metrics in [records["metrics"]] if "metrics" in records else list(records.values()):
                ex.attackers += int(metrics.get(ATTACKER_KEY, 0) or 0)
                ex.clipped += int(metrics.get(CLIPPED_KEY, 0) or 0)
                w = float(metrics.get("num-examples", 1))
                total += w
                for k, v in metrics.items():
                    if k != "num-examples" and isinstance(v, (int, float)):
                        weighted[k] = weighted.get(k, 0.0) + w * float(v)
                        ex.maxima[k] = max(ex.maxima.get(k, float(v)), float(v))
        if total:
            ex.metrics = {k: v / total for k, v in weighted.items()}


class NodeSubset(_Delegating):
    """Delegate to ``grid`` but show only ``node_ids`` (the nodes whose device tier can run the model)."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        super().__init__(grid)
        self._nodes = sorted(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        live = set(self._grid.get_node_ids())
        return [n for n in self._nodes if n in live]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        outside = sorted({m.metadata.dst_node_id for m in messages} - set(self._nodes))
        if outside:
            raise ValueError(f"message for node(s) {outside} outside this run's nodes")
        return self._grid.push_messages(messages)
