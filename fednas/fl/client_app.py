"""The fednas ClientApp: local training, local evaluation, batch-norm moments.

Each message carries the global weights (``arrays``) and a ``config`` record with the
architecture JSON and the local training settings; the node's data shard comes from its
``partition-id`` and the run config. The apps know nothing of Optuna.
"""

from __future__ import annotations

import hashlib

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fednas.fl._faults import fault_mod
from fednas.fl._spec import FederatedData, RunSpec, federated_data
from fednas.train import TrainConfig, batchnorm_moments, evaluate, train
from search_spaces import MobileNetArch, build_model

__all__ = ["app", "derive_seed", "model_from_message"]

app = ClientApp(mods=[fault_mod])


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed from parts (run seed, round, node...)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _node_data(context: Context) -> tuple[RunSpec, FederatedData, int]:
    spec = RunSpec.from_run_config(context.run_config)
    data = federated_data(spec.data, spec.federation.num_clients, spec.seed)
    pid = int(context.node_config["partition-id"])
    nodes = int(context.node_config.get("num-partitions", len(data.shards)))
    if nodes != len(data.shards) or not 0 <= pid < len(data.shards):
        raise ValueError(
            f"node is partition {pid} of {nodes} but the data is split for {len(data.shards)} clients; "
            f"set num-partitions (flwr run) or federation.num_clients to {nodes}"
        )
    return spec, data, pid


def model_from_message(msg: Message, data: FederatedData) -> torch.nn.Module:
    """Build the architecture named in the message and load the global weights."""
    arch = MobileNetArch.from_json(str(msg.content["config"]["arch"]))
    model = build_model(arch, num_classes=data.train.num_classes, in_channels=data.train.in_channels)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    spec, data, pid = _node_data(context)
    shard = data.client(pid)
    cfg = msg.content["config"]
    model = model_from_message(msg, data)
    fed = spec.federation
    local = TrainConfig(
        epochs=fed.local_epochs,
        batch_size=fed.batch_size,
        lr=float(cfg.get("lr", fed.lr)),
        momentum=fed.momentum,
        weight_decay=fed.weight_decay,
        proximal_mu=float(cfg.get("proximal-mu", 0.0)),
        max_steps=fed.local_steps,
    )
    round_ = int(cfg.get("server-round", 0))
    result = train(model, shard.x, shard.y, local, seed=derive_seed(spec.seed, round_, pid))
    metrics = MetricRecord({"train_loss": result.loss, "num-examples": result.examples})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    _, data, pid = _node_data(context)
    shard = data.client(pid)
    loss, acc = evaluate(model_from_message(msg, data), shard.x, shard.y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(shard)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("bn_moments")
def bn_moments_fn(msg: Message, context: Context) -> Message:
    """Reply with per-layer [sum, sum of squares, count] of batch-norm inputs on local data."""
    _, data, pid = _node_data(context)
    shard = data.client(pid)
    moments = batchnorm_moments(model_from_message(msg, data), shard.x)
    record = ArrayRecord({f"bn{i}": m for i, m in enumerate(moments)})
    return Message(content=RecordDict({"moments": record}), reply_to=msg)
