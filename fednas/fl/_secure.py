"""Secure aggregation of a run's updates: Flower's SecAgg+ protocol, so the server learns only the sum.

``privacy.secure_aggregation = "secagg+"`` runs each training round through Flower's own
``SecAggPlusWorkflow`` (``flwr.server.workflow``) on the client side's ``secaggplus_mod``
(``flwr.client.mod``): every sampled client masks its weighted, quantized model with
pairwise and private masks agreed in a key exchange, the server sums the masked vectors and
removes the masks with Shamir shares the clients send back (also for clients that dropped
after the key exchange), and only the weighted mean is ever in the clear.

That workflow lives in Flower's legacy stack, so ``SecAggPlusRound`` adapts fednas's
Message-API round to it: the run's own strategy still samples the clients and writes their
train config (``configure_train``); each message becomes a legacy ``FitIns`` for a
``LegacyContext`` holding a one-round legacy strategy, and the workflow's four stages go
through the run's ``CountingGrid`` (so their bytes are counted like any other message; their
exchanges are labelled ``secagg.setup``, ``secagg.share_keys``, ``train`` and
``secagg.unmask``). On the client, ``secure_mod`` hands SecAgg+ messages to
``secaggplus_mod`` and translates the legacy layout to fednas's and back around the app,
which trains as in any run.

What fednas adds or works around:

* **Only floating-point arrays are summed.** Integer buffers (batch norm's
  ``num_batches_tracked``) keep the server's value.
* **Quantization, seeded.** Each client multiplies its model by its weight (examples seen
  / ``max_weight``, the most any client can report), clips it to
  ``[-secagg_clipping_range, secagg_clipping_range]`` and rounds it stochastically to
  ``2**secagg_quantization_bits`` levels; the rounding draws from NumPy's global generator,
  which ``secure_mod`` seeds from the run seed, round and partition. Clients report how many
  values they clipped (``secagg-clipped``); a round's total is kept in its record.
* **Two Flower bugs.** ``ConfigRecord.count_bytes`` raises on the empty lists the unmask
  stage sends (``fednas.fl._grid.record_bytes`` counts them as 0 bytes), and an even
  integer ``num_shares`` below the client count makes the server send one share count and
  build neighbourhoods for another, which crashes the clients' ``_share_keys``: fednas
  passes the share count as a fraction of the round's clients, which Flower itself rounds to
  an odd count before it sends it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fednas._seeds import derive_seed
from fednas.config import PrivacyConfig

__all__ = ["CKKS_KEY", "SECURE_KEY", "SecAggPlusRound", "floating_keys", "merge_mean", "protocol_cost", "secure_mod"]

CKKS_KEY = "fednas-ckks"  # in a train config: the JSON {max_weight}; the reply is encrypted (fednas.fl._ckks)
SECURE_KEY = "fednas-secure"  # in a legacy FitIns config: the JSON of what secure_mod needs
SECAGG_STAGES = ("secagg.setup", "secagg.share_keys", "train", "secagg.unmask")
CLIPPED_KEY = "secagg-clipped"  # values a client clipped to the quantization range


def floating_keys(arrays: ArrayRecord) -> list[str]:
    """The arrays a secure sum covers: the floating-point ones (integer buffers keep the server's value)."""
    return [k for k in arrays.keys() if np.issubdtype(np.dtype(arrays[k].dtype), np.floating)]


def merge_mean(arrays: ArrayRecord, mean: dict[str, np.ndarray]) -> ArrayRecord:
    """``arrays`` (the global model) with the securely aggregated ones replaced, each in its own dtype."""
    return ArrayRecord({k: Array(mean[k].astype(arrays[k].numpy().dtype)) if k in mean else arrays[k]
                        for k in arrays.keys()})


def protocol_cost(exchanges: list[Any], extra: tuple[str, ...]) -> dict[str, Any]:
    """A protocol's measured cost over a run's exchanges: bytes of its ``extra`` exchange types, upload bytes
    of the protected train replies, and the seconds of both."""
    others = [e for e in exchanges if e.message_type in extra]
    train = [e for e in exchanges if e.message_type == "train"]
    return {"protocol_bytes": sum(e.download_bytes + e.upload_bytes for e in others),
            "protected_upload_bytes": sum(e.upload_bytes for e in train),
            "seconds": sum(e.seconds for e in others + train),
            "clipped_values": sum(e.clipped for e in train)}


class SecAggPlusRound:
    """Aggregate one round's train messages by Flower's SecAgg+ workflow; the weighted mean, or None.

    Args:
        privacy: ``[privacy]`` (share fraction, reconstruction threshold, quantization).
        max_weight: the most examples any client can report in a round (its weight is
            divided by this before quantization, so it stays <= 1).
    """

    def __init__(self, privacy: PrivacyConfig, max_weight: float) -> None:
        from flwr.server.workflow import SecAggPlusWorkflow

        self.privacy = privacy
        self.failure = ""  # why the latest round did not complete
        self.max_weight = float(max(max_weight, 1))
        self.workflow = SecAggPlusWorkflow(
            num_shares=float(privacy.secagg_num_shares),  # a fraction: see the module's note on even counts
            reconstruction_threshold=float(privacy.secagg_threshold),
            max_weight=self.max_weight,
            clipping_range=float(privacy.secagg_clipping_range),
            quantization_range=2 ** privacy.secagg_quantization_bits,
            modulus_range=2**32,
        )

    def __call__(self, server_round: int, messages: list[Message], arrays: ArrayRecord, grid: Any) -> ArrayRecord | None:
        """Run the protocol for ``messages`` (the strategy's train messages) over ``grid`` (a ``CountingGrid``)."""
        from flwr.common import FitIns, ndarrays_to_parameters
        from flwr.server.compat.grid_client_proxy import GridClientProxy
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

        if not messages:
            return None
        keys = list(arrays.keys())
        summed = floating_keys(arrays)
        note = json.dumps({"keys": keys, "summed": summed, "max_weight": self.max_weight,
                           "clipping_range": float(self.privacy.secagg_clipping_range)})
        strategy = _OneRound()
        run_id = grid.run.run_id
        for msg in messages:
            content = msg.content
            config = {k: content["config"][k] for k in content["config"].keys()}
            ins = FitIns(ndarrays_to_parameters([content["arrays"][k].numpy() for k in keys]),
                         {**config, SECURE_KEY: note})
            strategy.instructions.append((GridClientProxy(msg.metadata.dst_node_id, grid, run_id), ins))
        context = LegacyContext(Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                                strategy=strategy)
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        first = len(grid.traffic.exchanges)
        saved = random.getstate()  # the workflow shuffles neighbours with Python's random, which also samples nodes
        try:
            self.workflow(grid, context)
        finally:
            random.setstate(saved)
        stages = grid.traffic.exchanges[first:]
        for ex, stage in zip(stages, SECAGG_STAGES, strict=False):
            ex.message_type = stage
        if strategy.aggregate is None:
            last = stages[-1] if stages else None
            self.failure = ("SecAgg+ did not start: no client was sampled" if last is None else
                            f"SecAgg+ halted in stage {last.message_type!r}: {last.replies - last.errors} of "
                            f"{last.sent} clients replied, too few for the reconstruction threshold "
                            f"(privacy.secagg_threshold = {self.privacy.secagg_threshold:g})"
                            + (f"; first error: {last.error_reasons[0]}" if last.error_reasons else ""))
            return None
        return merge_mean(arrays, dict(zip(summed, strategy.aggregate, strict=True)))

    def report(self, exchanges: list[Any]) -> dict[str, Any]:
        """The protocol and its measured cost (``protocol_bytes``: the key exchange; ``protected_upload_bytes``:
        the masked vectors; values clipped to the quantization range)."""
        return {"protocol": "secagg+", "num_shares": self.privacy.secagg_num_shares,
                "threshold": self.privacy.secagg_threshold, "clipping_range": self.privacy.secagg_clipping_range,
                "quantization_bits": self.privacy.secagg_quantization_bits,
                **protocol_cost(exchanges, SECAGG_STAGES[:2] + SECAGG_STAGES[3:])}


class _OneRound:
    """A legacy ``flwr.server.strategy.Strategy`` for one SecAgg+ round: the planned instructions out,
    the securely aggregated mean (every result carries it after the unmask stage) kept."""

    def __init__(self) -> None:
        self.instructions: list[tuple[Any, Any]] = []
        self.aggregate: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, Any]]:
        return self.instructions

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict]:
        from flwr.common import parameters_to_ndarrays

        if results:
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}


def secure_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Client mod: run SecAgg+ stages with Flower's ``secaggplus_mod``, encrypt the reply of a CKKS train
    message (``fednas.fl._ckks``); other messages pass through.

    In the stage that trains (``collect masked vectors``) the legacy ``FitIns`` is turned into
    fednas's train message for the rest of the app, and its reply into the ``FitRes``
    (floating arrays, in the server's order) that ``secaggplus_mod`` masks.
    """
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if msg.metadata.message_type != "train":
        return call_next(msg, context)
    if "config" in msg.content.config_records and CKKS_KEY in msg.content["config"]:
        from fednas.fl._ckks import ckks_train

        reply = call_next(msg, context)
        return reply if reply.has_error() else ckks_train(msg, context, reply)
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    from fednas.fl._privacy import _seeded_numpy
    from fednas.fl._spec import RunSpec

    seed = 0  # the quantization's stochastic rounding runs inside secaggplus_mod, from NumPy's generator
    ins = msg.content.config_records.get("fitins.config")
    if ins is not None:  # the stage that trains
        seed = derive_seed(RunSpec.from_run_config(context.run_config).seed, "secagg-rounding",
                           int(ins.get("server-round", 0)), int(context.node_config.get("partition-id", 0)))

    def app(legacy: Message, ctx: Context) -> Message:
        native, note = _native(legacy)
        reply = call_next(native, ctx)
        if reply.has_error():
            raise RuntimeError(f"the client app failed: {reply.error.reason}")
        return _fitres(legacy, reply, note)

    with _seeded_numpy(seed):
        return secaggplus_mod(msg, context, app)


def _native(legacy: Message) -> tuple[Message, dict[str, Any]]:
    """A legacy ``FitIns`` message as fednas's train message (``arrays`` by name, ``config``)."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import parameters_to_ndarrays

    ins = compat.recorddict_to_fitins(legacy.content, keep_input=True)
    note = json.loads(str(ins.config[SECURE_KEY]))
    values = parameters_to_ndarrays(ins.parameters)
    if len(values) != len(note["keys"]):
        raise ValueError(f"SecAgg+: {len(values)} arrays received for {len(note['keys'])} names")
    arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(note["keys"], values, strict=True)})
    config = ConfigRecord({k: v for k, v in ins.config.items() if k != SECURE_KEY})
    return Message(metadata=legacy.metadata, content=RecordDict({"arrays": arrays, "config": config})), note


def _fitres(legacy: Message, reply: Message, note: dict[str, Any]) -> Message:
    """fednas's train reply as the legacy ``FitRes`` that ``secaggplus_mod`` masks (summed arrays only)."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    arrays, metrics = reply.content["arrays"], reply.content["metrics"]
    values = [np.asarray(arrays[k].numpy(), dtype=np.float64) for k in note["summed"]]
    examples = int(metrics.get("num-examples", 1))
    ratio = examples / float(note["max_weight"])
    limit = float(note["clipping_range"])
    clipped = sum(int(np.count_nonzero(np.abs(v * ratio) > limit)) for v in values)
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    fit = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(values), examples, scalars)
    content = compat.fitres_to_recorddict(fit, keep_input=False)
    content["metrics"] = MetricRecord({**scalars, CLIPPED_KEY: clipped})  # what fednas's grid reads
    return Message(content, reply_to=legacy)
