"""Flower pieces of update compression: ClientApp mods and the server's downlink encoder.

Uplink (client -> server). ``make_uplink_mod()`` wraps a ClientApp's ``train`` handler:
it keeps the arrays the train message brought, lets the app train, takes
``update = trained - received`` (raw entries: the trained value), adds the node's
error-feedback residual kept in ``context.state``, encodes the sum with the codec the
message's ConfigRecord names (``uplink-codec``, ``uplink-bits``, ``uplink-per-channel``,
``uplink-topk``, ``uplink-topk-values``, ``uplink-error-feedback``) and replaces the
reply's ``arrays`` ArrayRecord with the encoded arrays, adding a ConfigRecord
``compression`` that names the codec. A train message without ``uplink-codec`` passes
through untouched, so the server turns compression on per run.

Downlink (server -> client). The server sends the *difference* between the new global
model and the model the clients already hold, encoded; ``DownlinkEncoder`` keeps the
server's copy of what clients hold (the reference) and advances it by exactly what it
sent, so both sides stay bit-identical and the coding error of one round is part of the
next round's difference (error feedback for free). Protocol, in the train message's
ConfigRecord: ``downlink-version`` (the version the node holds after decoding) and, for a
delta, ``downlink-base`` (the version the delta applies to) plus the codec keys
``downlink-codec``... A node that does not hold the base version (first round, a node
not sampled last round, a node that failed) gets the new reference in full precision.
``make_downlink_mod()`` decodes before the app runs and keeps the held model and its
version in ``context.state``; a delta for another base version raises ``DownlinkOutOfSync``
(the reply is an error and the server then sends that node full precision).

Order on a ClientApp: ``ClientApp(mods=[make_downlink_mod(), make_uplink_mod()])`` (the
first mod is outermost: the uplink mod must see the decoded global arrays). App-wide mods
must be given to the constructor: Flower 1.42 binds ``app._mods`` when ``@app.train()``
registers a function. They then wrap every handler (train, evaluate, query); each mod
acts only on messages that carry its keys. ``@app.train(mods=[...])`` scopes them to train.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from fednas.compress._codecs import (Codec, Layout, apply_update, codec_from_config, encode_with_feedback,
                                     update_between)

__all__ = [
    "COMPRESSION_RECORD",
    "DownlinkEncoder",
    "DownlinkOutOfSync",
    "DownlinkPlan",
    "make_downlink_mod",
    "make_uplink_mod",
    "array_numpy",
    "from_torch",
    "numpy_array",
    "to_array_record",
    "to_numpy",
    "to_torch",
    "wire_bytes",
]

COMPRESSION_RECORD = "compression"
"""Name of the ConfigRecord an encoded reply carries (the uplink codec's config entries)."""

UPLINK_RESIDUAL = "fednas-uplink-residual"
DOWNLINK_MODEL = "fednas-downlink-model"
DOWNLINK_STATE = "fednas-downlink"


class DownlinkOutOfSync(RuntimeError):
    """A downlink delta arrived for a base version this node does not hold."""


_NPY_MAGIC = b"\x93NUMPY"


def array_numpy(array: Array) -> np.ndarray:
    """``Array.numpy()`` without ``np.load``'s header parser (``ast.literal_eval``, ~80 us per array).

    A plain C-ordered ``.npy`` payload of a simple dtype is read with ``np.frombuffer`` after
    checking the header's ``descr`` and ``fortran_order`` and that the data length matches
    the array's shape; anything else goes through ``Array.numpy()``. Profiled on
    mobilenet_tiny (129 arrays per model), the header parsing was a third of fednas's
    overhead over a plain FedAvg loop (BENCHMARKS.md, "Overhead").
    """
    data = array.data
    if array.stype == "numpy.ndarray" and data[:6] == _NPY_MAGIC and data[6] in (1, 2, 3):
        start = 10 if data[6] == 1 else 12
        length = int.from_bytes(data[8:start], "little")
        header = bytes(data[start : start + length])
        key = header.find(b"'descr': '")
        if key >= 0 and b"'fortran_order': False" in header:
            descr = header[key + 10 : header.find(b"'", key + 10)].decode("ascii")
            dtype = np.dtype(descr)
            count = int(np.prod(array.shape, dtype=np.int64))
            offset = start + length
            if not dtype.hasobject and len(data) - offset == count * dtype.itemsize:
                return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(array.shape).copy()
    return array.numpy()


_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def numpy_array(arr: np.ndarray) -> Array:
    """``Array.from_numpy_ndarray`` with the ``.npy`` header cached per (dtype, shape).

    The bytes are exactly ``np.save``'s: the first array of a dtype and shape is saved by
    ``np.save`` and its header kept; later ones are that header plus ``arr.tobytes()``.
    Fortran-ordered and object arrays go through Flower's own constructor.
    """
    if arr.dtype.hasobject or (arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous):
        return Array.from_numpy_ndarray(arr)
    key = (arr.dtype.str, tuple(arr.shape))
    header = _NPY_HEADERS.get(key)
    if header is None:
        array = Array.from_numpy_ndarray(arr)
        if len(_NPY_HEADERS) < 4096:  # a model's few hundred shapes; never grows without bound
            _NPY_HEADERS[key] = array.data[: len(array.data) - arr.nbytes]
        return array
    return Array(dtype=str(arr.dtype), shape=tuple(arr.shape), stype="numpy.ndarray", data=header + arr.tobytes())


def from_torch(state: Mapping[str, Any]) -> ArrayRecord:
    """A PyTorch state dict as an ArrayRecord (``ArrayRecord(state_dict)``'s bytes, faster)."""
    record = ArrayRecord()
    for k, v in state.items():
        record[k] = numpy_array(v.detach().cpu().numpy())
    return record


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord's arrays as NumPy arrays, in the record's order."""
    return {k: array_numpy(a) for k, a in record.items()}


def to_torch(record: ArrayRecord) -> dict[str, Any]:
    """An ArrayRecord as a PyTorch state dict (``ArrayRecord.to_torch_state_dict``, with the fast reader)."""
    import torch

    return {k: torch.from_numpy(v) for k, v in to_numpy(record).items()}


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """NumPy arrays as an ArrayRecord (each serialized as ``.npy``, as Flower does)."""
    # not np.ascontiguousarray: it turns 0-d arrays (batch norm counters) into shape (1,)
    return ArrayRecord({k: numpy_array(np.array(v, order="C", copy=None)) for k, v in arrays.items()})


def wire_bytes(encoded: Mapping[str, np.ndarray]) -> int:
    """What Flower's ``count_bytes`` reports for ``encoded`` as an ArrayRecord (data, ``.npy`` headers, keys)."""
    return to_array_record(encoded).count_bytes()


def _category(msg: Message) -> str:
    return msg.metadata.message_type.split(".", 1)[0]


def _seed(msg: Message, context: Context, server_round: int) -> list[int]:
    return [int(msg.metadata.run_id), int(context.node_id), int(server_round)]


# --------------------------------------------------------------------------- uplink


def make_uplink_mod(
    *,
    arrays_key: str = "arrays",
    config_key: str = "config",
    state_key: str = UPLINK_RESIDUAL,
    seed: Callable[[Message, Context, int], Sequence[int]] | None = None,
) -> Mod:
    """A ClientApp mod that encodes the model update of every ``train`` reply.

    Args:
        arrays_key: name of the ArrayRecord in messages and replies (the strategy's).
        config_key: name of the ConfigRecord of train messages (the strategy's).
        state_key: where ``context.state`` keeps the error-feedback residual (an ArrayRecord).
        seed: ``seed(msg, context, server_round)`` seeds stochastic codecs. The default,
            ``(run id, node id, round)``, is unique per update but not reproducible under
            Flower's deployment runtime, whose run and node ids are random; an app that
            knows a run seed and the node's partition should pass its own.
    """
    seed_of = seed or _seed

    def uplink_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        config = msg.content.config_records.get(config_key) if msg.has_content() else None
        codec = codec_from_config(config, "uplink") if config is not None and _category(msg) == "train" else None
        if codec is None:
            return call_next(msg, context)
        received = to_numpy(msg.content[arrays_key])
        reply = call_next(msg, context)
        if reply.has_error() or not reply.has_content() or arrays_key not in reply.content.array_records:
            return reply
        layout = Layout.of(received)
        update = update_between(to_numpy(reply.content[arrays_key]), received, layout)
        rng = np.random.default_rng(list(seed_of(msg, context, int(config.get("server-round", 0)))))
        if bool(config.get("uplink-error-feedback", codec.default_error_feedback)):
            residual = _load_residual(context, state_key, layout)
            encoded, residual = encode_with_feedback(codec, update, residual, layout=layout, rng=rng)
            context.state[state_key] = to_array_record(residual)
        else:
            encoded = codec.encode(update, rng=rng, layout=layout)
        reply.content[arrays_key] = to_array_record(encoded)
        reply.content[COMPRESSION_RECORD] = ConfigRecord(codec.to_config("uplink"))
        return reply

    return uplink_mod


def _load_residual(context: Context, key: str, layout: Layout) -> dict[str, np.ndarray] | None:
    record = context.state.array_records.get(key)
    if record is None:
        return None
    residual = to_numpy(record)
    fits = set(residual) == {s.name for s in layout.coded} and all(
        residual[s.name].shape == s.shape for s in layout.coded
    )
    return residual if fits else None  # another model: start afresh


# --------------------------------------------------------------------------- downlink


def make_downlink_mod(
    *, arrays_key: str = "arrays", config_key: str = "config", state_key: str = DOWNLINK_STATE,
    model_key: str = DOWNLINK_MODEL,
) -> Mod:
    """A ClientApp mod that turns a downlink-encoded message into full global arrays.

    Messages without ``downlink-version`` in their ConfigRecord pass through untouched.

    Raises:
        DownlinkOutOfSync: the delta's base version is not the version this node holds.
    """

    def downlink_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        config = msg.content.config_records.get(config_key) if msg.has_content() else None
        if config is None or "downlink-version" not in config:
            return call_next(msg, context)
        version = int(config["downlink-version"])
        sent = to_numpy(msg.content[arrays_key])
        if "downlink-base" in config:
            base_version = int(config["downlink-base"])
            held_version = context.state.config_records.get(state_key, {}).get("version")
            if held_version is None or int(held_version) != base_version or model_key not in context.state:
                raise DownlinkOutOfSync(
                    f"node {context.node_id}: delta for version {base_version}, but holds version {held_version}"
                )
            codec = codec_from_config(config, "downlink")
            if codec is None:
                raise ValueError("downlink-base given without downlink-codec")
            held = to_numpy(context.state[model_key])
            layout = Layout.of(held)
            model = apply_update(held, codec.decode(sent, layout), layout)
        else:
            model = sent
        record = to_array_record(model)
        context.state[model_key] = record
        context.state[state_key] = ConfigRecord({"version": version})
        content = RecordDict(dict(msg.content.items()))
        content[arrays_key] = record
        return call_next(Message(metadata=msg.metadata, content=content), context)

    return downlink_mod


@dataclass
class DownlinkPlan:
    """One broadcast: the new reference and what each kind of node is sent.

    ``delta``/``delta_config`` go to nodes holding ``base_version``; ``full``/``full_config``
    (the new reference in full precision) to all others.
    """

    version: int
    reference: dict[str, np.ndarray]
    full: ArrayRecord
    full_config: dict[str, int | str | float | bool]
    delta: ArrayRecord | None = None
    delta_config: dict[str, int | str | float | bool] = field(default_factory=dict)
    base_version: int | None = None


class DownlinkEncoder:
    """Server side of the downlink: the reference copy of what clients hold, and the deltas.

    Usage per round: ``plan = enc.prepare(global_arrays, server_round)``; send
    ``plan.delta`` to ``enc.holders_of(plan.base_version)`` among the sampled nodes and
    ``plan.full`` to the rest; then ``enc.commit(plan, sampled_nodes)``. Call ``forget``
    for nodes whose reply failed or never came (they may not hold the new version).

    Args:
        codec: codes the difference between the new global model and the reference.
        seed: seeds the stochastic rounding (with the round number).
    """

    def __init__(self, codec: Codec, *, seed: int = 0) -> None:
        self.codec = codec
        self.seed = seed
        self.reference: dict[str, np.ndarray] | None = None
        self.version = 0
        self._held: dict[int, int] = {}

    def prepare(self, arrays: Mapping[str, np.ndarray], server_round: int) -> DownlinkPlan:
        """Encode ``arrays`` (the new global model) against the reference; nothing is committed."""
        version = self.version + 1
        full_config = {"downlink-version": version}
        if self.reference is None:
            reference = {k: np.asarray(v) for k, v in arrays.items()}
            return DownlinkPlan(version, reference, to_array_record(reference), full_config)
        layout = Layout.of(self.reference)
        if set(arrays) != set(self.reference):
            raise ValueError("global arrays changed names between rounds; cannot send a delta")
        rng = np.random.default_rng([self.seed, server_round, version])
        encoded = self.codec.encode(update_between(arrays, self.reference, layout), rng=rng, layout=layout)
        reference = apply_update(self.reference, self.codec.decode(encoded, layout), layout)
        delta_config = {**self.codec.to_config("downlink"), "downlink-version": version, "downlink-base": self.version}
        return DownlinkPlan(
            version, reference, to_array_record(reference), full_config,
            delta=to_array_record(encoded), delta_config=delta_config, base_version=self.version,
        )

    def holds(self, node_id: int, version: int | None) -> bool:
        return version is not None and self._held.get(node_id) == version

    def commit(self, plan: DownlinkPlan, node_ids: Iterable[int]) -> None:
        """``node_ids`` were sent ``plan``: they now hold ``plan.version`` (the reference)."""
        self.reference, self.version = plan.reference, plan.version
        for nid in node_ids:
            self._held[nid] = plan.version

    def forget(self, node_ids: Iterable[int]) -> None:
        """These nodes may not hold any known version: send them full precision next time."""
        for nid in node_ids:
            self._held.pop(nid, None)
