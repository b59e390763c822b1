"""Encrypted aggregation of a run's updates with CKKS homomorphic encryption (TenSEAL).

``privacy.secure_aggregation = "ckks"``: every client encrypts its weighted model under one
CKKS key that all clients share and the server does not hold; the server adds the
ciphertexts with the public context only, and one client of the round decrypts the sum (a
``query.ckks_decrypt`` message), which the server divides by the sum of the weights. The
server thus never sees an update in the clear.

**The key-sharing caveat.** There is one secret key for all clients: a client that colludes
with the server can decrypt every other client's ciphertext. (SecAgg+ has no such single
point; CKKS is here because it needs one round instead of four and tolerates any dropout.)

Keys: a SuperNode whose ``node_config`` has ``ckks-key`` loads the TenSEAL context (with
its secret key) from that file (``write_ckks_key`` makes one; give it to every SuperNode and
never to the SuperLink). Without it (fednas's in-process grid, simulation) the clients of a
run share a context generated once per process and run. The server gets the public context
(no secret key) from one client (``query.ckks_public``), once per run. Encryption draws
fresh randomness, so CKKS runs agree with plain FedAvg within the scheme's error (about
1e-8 here) but are not bit-for-bit reproducible.

Parameters: polynomial modulus degree 8192 (4096 values per ciphertext), coefficient
moduli 60/40/40/60 bits, scale 2**40. Only floating-point arrays are summed; integer
buffers keep the server's value.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fednas.fl._secure import CKKS_KEY, floating_keys, merge_mean, protocol_cost

__all__ = ["CKKS_KEY", "CkksRound", "ckks_decrypt", "ckks_public", "ckks_train", "write_ckks_key"]

CKKS_RECORD = "ckks"  # the ConfigRecord with the ciphertexts (``chunks``) or the public context
POLY_DEGREE = 8192
SLOTS = POLY_DEGREE // 2
COEFF_BITS = (60, 40, 40, 60)
SCALE_BITS = 40
MAX_CHUNKS = 1 << 16  # ciphertexts per message: 268M values, far beyond any model here
CKKS_STAGES = ("query.ckks_public", "query.ckks_decrypt")  # the exchanges besides the train one


def _tenseal() -> Any:
    try:
        import tenseal
    except ImportError:  # pragma: no cover - the config refuses ckks without it
        raise RuntimeError("privacy.secure_aggregation = 'ckks' needs TenSEAL: pip install 'fednas[secure]'") from None
    return tenseal


def _new_context() -> Any:
    ts = _tenseal()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=POLY_DEGREE, coeff_mod_bit_sizes=list(COEFF_BITS))
    ctx.global_scale = 2**SCALE_BITS
    return ctx


def write_ckks_key(path: str) -> None:
    """Write a new CKKS context with its secret key to ``path``, for every SuperNode's ``ckks-key``."""
    with open(path, "wb") as f:
        f.write(_new_context().serialize(save_secret_key=True))


@functools.lru_cache(maxsize=8)
def _shared_context(run_id: int, seed: int) -> Any:
    return _new_context()  # one per (run, seed) in this process: the in-process grid's clients share it


@functools.lru_cache(maxsize=4)
def _file_context(path: str) -> Any:
    with open(path, "rb") as f:
        ctx = _tenseal().context_from(f.read())
    if not ctx.has_secret_key():
        raise ValueError(f"{path}: the CKKS context has no secret key (made by write_ckks_key?)")
    return ctx


def _client_context(context: Context) -> Any:
    from fednas.fl._spec import RunSpec

    path = context.node_config.get("ckks-key")
    if path:
        return _file_context(str(path))
    return _shared_context(context.run_id, RunSpec.from_run_config(context.run_config).seed)


def ckks_train(msg: Message, context: Context, reply: Message) -> Message:
    """A train reply encrypted: the floating arrays (in the received order) times weight / max_weight."""
    ts = _tenseal()
    note = json.loads(str(msg.content["config"][CKKS_KEY]))
    keys = floating_keys(msg.content["arrays"])
    arrays, metrics = reply.content["arrays"], reply.content["metrics"]
    weight = float(metrics.get("num-examples", 1)) / float(note["max_weight"])
    flat = np.concatenate([np.asarray(arrays[k].numpy(), np.float64).ravel() for k in keys]) * weight
    ctx = _client_context(context)
    chunks = [ts.ckks_vector(ctx, flat[i:i + SLOTS].tolist()).serialize() for i in range(0, flat.size, SLOTS)]
    content = RecordDict({CKKS_RECORD: ConfigRecord({"chunks": chunks}), "metrics": metrics})
    return Message(content, reply_to=msg)


def ckks_public(msg: Message, context: Context) -> Message:
    """Reply with the public CKKS context (no secret key) the server adds ciphertexts with."""
    public = _client_context(context).copy()
    public.make_context_public()
    return Message(RecordDict({CKKS_RECORD: ConfigRecord({"context": public.serialize()})}), reply_to=msg)


def ckks_decrypt(msg: Message, context: Context) -> Message:
    """Decrypt the round's summed ciphertexts (the only plaintext this reveals is the sum)."""
    ts = _tenseal()
    ctx = _client_context(context)
    record = msg.content[CKKS_RECORD]
    size = int(record["size"])
    chunks = list(record["chunks"])
    if not 0 < len(chunks) <= MAX_CHUNKS or size > len(chunks) * SLOTS:
        raise ValueError(f"ckks_decrypt: {len(chunks)} ciphertexts for {size} values")
    flat = np.concatenate([np.asarray(ts.ckks_vector_from(ctx, c).decrypt(), np.float64) for c in chunks])[:size]
    return Message(RecordDict({"sum": ArrayRecord({"sum": Array(flat)})}), reply_to=msg)


class CkksRound:
    """Aggregate one round's train messages by CKKS encryption; the weighted mean, or None.

    Args:
        max_weight: the most examples any client can report in a round (weights are divided by it).
    """

    def __init__(self, max_weight: float) -> None:
        self.max_weight = float(max(max_weight, 1))
        self.public: Any = None
        self.failure = ""

    def __call__(self, server_round: int, messages: list[Message], arrays: ArrayRecord, grid: Any) -> ArrayRecord | None:
        ts = _tenseal()
        if not messages:
            self.failure = "CKKS: no client was sampled"
            return None
        note = json.dumps({"max_weight": self.max_weight})
        for msg in messages:
            msg.content["config"][CKKS_KEY] = note
        keys = floating_keys(arrays)
        size = sum(int(np.prod(arrays[k].shape)) for k in keys)
        expected = -(-size // SLOTS)
        replies = [r for r in grid.send_and_receive(messages) if not r.has_error()]
        if not replies:
            self.failure = "CKKS: no client returned an encrypted update"
            return None
        if self.public is None:
            self.public = self._public(grid, replies[0].metadata.src_node_id)
        total, weight = None, 0.0
        for r in replies:
            chunks = list(r.content[CKKS_RECORD]["chunks"])
            if len(chunks) != expected:
                raise ValueError(f"CKKS: node {r.metadata.src_node_id} sent {len(chunks)} ciphertexts, expected "
                                 f"{expected} for {size} values")
            vectors = [ts.ckks_vector_from(self.public, c) for c in chunks]
            total = vectors if total is None else [a + b for a, b in zip(total, vectors, strict=True)]
            weight += float(r.content["metrics"].get("num-examples", 1)) / self.max_weight
        record = ConfigRecord({"chunks": [v.serialize() for v in total], "size": size})
        query = Message(RecordDict({CKKS_RECORD: record}), replies[0].metadata.src_node_id, "query.ckks_decrypt")
        answer = list(grid.send_and_receive([query]))
        if not answer or answer[0].has_error():
            why = answer[0].error.reason if answer else "no reply"
            self.failure = f"CKKS: the decrypting client failed ({why})"
            return None
        flat = answer[0].content["sum"]["sum"].numpy() / weight
        mean, at = {}, 0
        for k in keys:
            n = int(np.prod(arrays[k].shape))
            mean[k] = flat[at:at + n].reshape(arrays[k].shape)
            at += n
        return merge_mean(arrays, mean)

    def _public(self, grid: Any, node: int) -> Any:
        answer = list(grid.send_and_receive([Message(RecordDict(), node, "query.ckks_public")]))
        if not answer or answer[0].has_error():
            raise RuntimeError(f"CKKS: node {node} sent no public context"
                               + (f" ({answer[0].error.reason})" if answer else ""))
        public = _tenseal().context_from(answer[0].content[CKKS_RECORD]["context"])
        if public.has_secret_key():
            raise RuntimeError(f"CKKS: node {node} sent its secret key to the server")
        return public

    def report(self, exchanges: list[Any]) -> dict[str, Any]:
        """The protocol and its measured cost (``protocol_bytes``: the public context and the decryption
        queries; ``protected_upload_bytes``: the ciphertexts)."""
        return {"protocol": "ckks", "poly_modulus_degree": POLY_DEGREE, "scale_bits": SCALE_BITS,
                **protocol_cost(exchanges, CKKS_STAGES)}
