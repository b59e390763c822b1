"""Strategies that send and receive encoded models: any FedAvg-family strategy, wrapped.

``compressed(FedAvg)`` (also FedProx, FedAvgM, FedAdam, ... : all subclass ``FedAvg``)
returns a subclass that

* in ``configure_train`` adds the uplink codec's keys to the train ConfigRecord and, with a
  downlink codec, replaces each message's arrays by the encoded difference to the model the
  node holds (``DownlinkEncoder``); the wrapped strategy sees the reference model (what the
  nodes actually train from) as the round's global arrays, so FedOpt-style server
  optimizers step from the model the updates were computed against;
* in ``aggregate_train`` decodes each reply that carries a ``compression`` ConfigRecord to
  a full model, ``base + decode(update)`` with ``base`` the arrays the nodes received, and
  hands those replies to the wrapped strategy's own aggregation. Replies without that
  record (a node running no uplink mod) are taken as full models.

Evaluation messages (``configure_evaluate``) are not compressed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fednas.compress._codecs import Codec, Layout, apply_update, codec_from_config
from fednas.compress._mods import COMPRESSION_RECORD, DownlinkEncoder, to_array_record, to_numpy

__all__ = ["CompressedFedAvg", "CompressionMixin", "compressed"]


class CompressionMixin:
    """Mixed in before a ``FedAvg`` subclass by ``compressed``; see the module docstring.

    Keyword args (the rest go to the wrapped strategy):
        uplink: codec clients use for their updates (None: full models come back).
        downlink: codec for the global-model broadcast (None: full precision).
        uplink_error_feedback: clients carry their coding error to the next round
            (default: the codec's ``default_error_feedback``, on for top-k).
        seed: seeds the server's stochastic rounding.
    """

    arrayrecord_key: str
    configrecord_key: str

    def __init__(
        self,
        *args: Any,
        uplink: Codec | None = None,
        downlink: Codec | None = None,
        uplink_error_feedback: bool | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.uplink = uplink
        self.uplink_error_feedback = uplink_error_feedback
        self.downlink = DownlinkEncoder(downlink, seed=seed) if downlink is not None else None
        self._base: dict[str, np.ndarray] | None = None
        self._base_layout: Layout | None = None
        self._sent: set[int] = set()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.uplink is not None:
            config.update(self.uplink.to_config("uplink"))
            ef = self.uplink_error_feedback
            config["uplink-error-feedback"] = bool(self.uplink.default_error_feedback if ef is None else ef)
        if self.downlink is None:
            messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
            self._remember(to_numpy(arrays), messages)
            return messages
        plan = self.downlink.prepare(to_numpy(arrays), server_round)
        messages = list(super().configure_train(server_round, plan.full, config, grid))  # type: ignore[misc]
        if not messages:
            return messages
        template = messages[0].content
        extra = {k: v for k, v in template.items() if k not in (self.arrayrecord_key, self.configrecord_key)}
        sent_config = template[self.configrecord_key]
        full = RecordDict({**extra, self.arrayrecord_key: plan.full,
                           self.configrecord_key: ConfigRecord({**sent_config, **plan.full_config})})
        delta = None
        if plan.delta is not None:
            delta = RecordDict({**extra, self.arrayrecord_key: plan.delta,
                                self.configrecord_key: ConfigRecord({**sent_config, **plan.delta_config})})
        for m in messages:
            holds_base = self.downlink.holds(m.metadata.dst_node_id, plan.base_version)
            m.content = delta if delta is not None and holds_base else full
        self.downlink.commit(plan, [m.metadata.dst_node_id for m in messages])
        self._remember(plan.reference, messages)
        return messages

    def _remember(self, base: dict[str, np.ndarray], messages: list[Message]) -> None:
        self._base, self._base_layout = base, Layout.of(base)
        self._sent = {m.metadata.dst_node_id for m in messages}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if self.downlink is not None:
            ok = {r.metadata.src_node_id for r in replies if not r.has_error()}
            self.downlink.forget(self._sent - ok)
        decoded = [self.decode_reply(r) for r in replies]
        return super().aggregate_train(server_round, decoded)  # type: ignore[misc]

    def decode_reply(self, reply: Message) -> Message:
        """A reply whose encoded update is replaced by the full model it stands for."""
        if reply.has_error() or COMPRESSION_RECORD not in reply.content.config_records:
            return reply
        if self._base is None or self._base_layout is None:
            raise RuntimeError("an encoded reply arrived before any train message was configured")
        codec = codec_from_config(reply.content[COMPRESSION_RECORD], "uplink")
        if codec is None:
            raise ValueError(f"reply from node {reply.metadata.src_node_id}: '{COMPRESSION_RECORD}' names no codec")
        encoded = to_numpy(reply.content[self.arrayrecord_key])
        model = apply_update(self._base, codec.decode(encoded, self._base_layout), self._base_layout)
        content = RecordDict({k: v for k, v in reply.content.items() if k != COMPRESSION_RECORD})
        content[self.arrayrecord_key] = to_array_record(model)
        return Message(metadata=reply.metadata, content=content)


@functools.cache
def compressed(strategy_cls: type[FedAvg]) -> type[FedAvg]:
    """``strategy_cls`` (a ``FedAvg`` subclass) with ``CompressionMixin`` in front.

    The new class takes the wrapped class's arguments plus ``uplink``, ``downlink``,
    ``uplink_error_feedback`` and ``seed`` (keyword-only), e.g.
    ``compressed(FedProx)(proximal_mu=0.01, uplink=Quantize(bits=4))``.

    Raises:
        TypeError: ``strategy_cls`` is not a subclass of ``flwr.serverapp.strategy.FedAvg``.
    """
    if not (isinstance(strategy_cls, type) and issubclass(strategy_cls, FedAvg)):
        raise TypeError(f"strategy_cls: expected a subclass of flwr.serverapp.strategy.FedAvg, got {strategy_cls!r}")
    return type(f"Compressed{strategy_cls.__name__}", (CompressionMixin, strategy_cls), {"__module__": __name__})


CompressedFedAvg = compressed(FedAvg)
