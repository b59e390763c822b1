"""The fednas ClientApp: local training, local evaluation, batch-norm moments.

Each message carries the global weights (``arrays``) and a ``config`` record with the
architecture JSON and the local training settings; the node's data shard comes from its
``partition-id`` and the run config. The apps know nothing of Optuna.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fednas._seeds import derive_seed
from fednas.compress import from_torch, keep_zeros, make_downlink_mod, make_uplink_mod, to_torch
from fednas.fl._attacks import ATTACKER_KEY, attack_update, flip_labels, malicious_partitions
from fednas.fl._faults import fault_mod
from fednas.fl._privacy import privacy_mod
from fednas.fl._pruning import KEEP_ZEROS_KEY, MASKS_KEY
from fednas.fl._secure import secure_mod
from fednas.fl._spec import FederatedData, RunSpec, federated_data
from fednas.models import load_model, model_template, pruned_template
from fednas.train import TrainConfig, batchnorm_moments, evaluate, resolve_device, taylor_channel_scores, train
from search_spaces import CompressionSettings

__all__ = ["app", "derive_seed", "model_from_message"]

# fault_mod outermost (an injected fault hits before anything runs); downlink before uplink,
# so the uplink mod sees the decoded global arrays. Both pass messages without codec keys through.
# privacy_mod innermost: a central-DP run's update is clipped before anything else sees the reply
# (it passes messages without a clipping norm through). secure_mod runs SecAgg+ stages and turns
# the legacy message of the stage that trains into fednas's own for the mods inside it.


def _uplink_seed(msg: Message, context: Context, server_round: int) -> list[int]:
    """Stochastic rounding of the update seeded by the run seed, the round and the partition: the same under
    the in-process grid and under Flower's deployment runtime (whose run and node ids are random)."""
    spec = RunSpec.from_run_config(context.run_config)
    return [derive_seed(spec.seed, "uplink", server_round, int(context.node_config["partition-id"]))]


app = ClientApp(mods=[fault_mod, secure_mod, make_downlink_mod(), make_uplink_mod(seed=_uplink_seed), privacy_mod])


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


def model_from_message(
    msg: Message, data: FederatedData, compression: CompressionSettings | None = None
) -> torch.nn.Module:
    """Build the architecture named in the message (factorized as ``compression`` says) and load the global weights.

    After the server pruned the global model, the config carries its channel masks
    (``prune-masks``) and the same pruned structure is rebuilt (cached per mask digest).
    A message's architecture is parsed and checked once per process (``fednas.models.model_template``).
    """
    config = msg.content["config"]
    comp_json = (compression or CompressionSettings()).to_json()
    if MASKS_KEY in config:  # the server pruned the global model: rebuild its structure from the masks
        model = pruned_template(str(config["arch"]), comp_json, str(config[MASKS_KEY]), data.train.num_classes,
                                data.train.in_channels, data.train.resolution)
    else:  # the structure is built once per process (cached), weights come from the message
        model = model_template(str(config["arch"]), comp_json, data.train.num_classes, data.train.in_channels)
    model.load_state_dict(to_torch(msg.content["arrays"]))
    return model


@functools.lru_cache(maxsize=2)
def _bundle_teacher(path: str) -> torch.nn.Module:
    return load_model(path).eval()


def _teacher(model: torch.nn.Module, compression: CompressionSettings) -> torch.nn.Module:
    """The distillation teacher: an exported bundle, or a frozen copy of the received global model."""
    teacher = _bundle_teacher(compression.kd_teacher) if compression.kd_teacher else copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    spec, data, pid = _node_data(context)
    shard = data.client(pid)
    cfg = msg.content["config"]
    model = model_from_message(msg, data, spec.compression)
    fed = spec.federation
    local = TrainConfig(
        epochs=fed.local_epochs,
        batch_size=fed.batch_size,
        lr=float(cfg.get("lr", fed.lr)),
        momentum=fed.momentum,
        weight_decay=fed.weight_decay,
        proximal_mu=float(cfg.get("proximal-mu", 0.0)),
        max_steps=fed.local_steps,
        device=str(resolve_device(fed.device)),
    )
    round_ = int(cfg.get("server-round", 0))
    seed = derive_seed(spec.seed, round_, pid)
    malicious = fed.attack != "none" and pid in malicious_partitions(fed, spec.seed)
    received = {k: v.detach().clone() for k, v in model.state_dict().items()} if malicious else {}
    y = shard.y
    if malicious and fed.attack == "label_flip":
        y = flip_labels(shard.y, data.train.num_classes, fed.strength(), seed)
    kd = spec.compression
    dp_metrics: dict[str, float] = {}
    # after unstructured pruning the received zeros stay zero while this client trains
    hold = keep_zeros(model) if bool(cfg.get(KEEP_ZEROS_KEY, False)) else contextlib.nullcontext()
    with hold:
        if spec.privacy.local:  # DP-SGD (Opacus); the config refuses distillation and FedProx beside it
            from fednas.fl._dpsgd import EPSILON_KEY, record_steps, train_dpsgd

            z = kd.dp_noise_multiplier if kd.dp_noise_multiplier is not None else spec.privacy.noise_multiplier
            result, rate = train_dpsgd(model, shard.x, y, local, seed=seed, noise_multiplier=z,
                                       max_grad_norm=spec.privacy.clipping_norm)
            dp_metrics = {EPSILON_KEY: record_steps(context, z, rate, result.steps, spec.privacy.delta)}
        elif kd.kd_on:
            from fednas.compress import train_with_teacher

            result = train_with_teacher(model, _teacher(model, kd), shard.x, y, local, seed=seed,
                                        temperature=kd.kd_temperature, weight=kd.kd_weight, kind=kd.kd_kind)
        elif "inplace-kd-arch" in cfg:  # a supernet round: also train a smaller subnet inside this one
            from fednas.supernet import inplace_distillation_loss
            from search_spaces import arch_from_json

            loss = inplace_distillation_loss(model, arch_from_json(str(cfg["arch"])),
                                             arch_from_json(str(cfg["inplace-kd-arch"])),
                                             num_classes=data.train.num_classes, in_channels=data.train.in_channels)
            result = train(model, shard.x, y, local, seed=seed, loss_fn=loss)
        else:
            result = train(model, shard.x, y, local, seed=seed)
    state = model.state_dict()
    if malicious:
        state = attack_update(fed.attack, fed.strength(), received, state, seed)
    metrics = MetricRecord({"train_loss": result.loss, "num-examples": result.examples,
                            **dp_metrics,
                            **({ATTACKER_KEY: float(malicious)} if fed.attack != "none" else {})})
    content = RecordDict({"arrays": from_torch(state), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    spec, data, pid = _node_data(context)
    shard = data.client(pid)
    loss, acc = evaluate(model_from_message(msg, data, spec.compression), shard.x, shard.y,
                         device=resolve_device(spec.federation.device))
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(shard)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("taylor_scores")
def taylor_scores_fn(msg: Message, context: Context) -> Message:
    """Reply with first-order Taylor channel scores of the received model on local data."""
    spec, data, pid = _node_data(context)
    shard = data.client(pid)
    scores = taylor_channel_scores(model_from_message(msg, data, spec.compression), shard.x, shard.y,
                                   device=resolve_device(spec.federation.device))
    return Message(content=RecordDict({"scores": ArrayRecord(dict(scores))}), reply_to=msg)


@app.query("bn_moments")
def bn_moments_fn(msg: Message, context: Context) -> Message:
    """Reply with per-layer [sum, sum of squares, count] of batch-norm inputs on local data."""
    spec, data, pid = _node_data(context)
    shard = data.client(pid)
    moments = batchnorm_moments(model_from_message(msg, data, spec.compression), shard.x,
                                device=resolve_device(spec.federation.device))
    record = ArrayRecord({f"bn{i}": m for i, m in enumerate(moments)})
    return Message(content=RecordDict({"moments": record}), reply_to=msg)


@app.query("ckks_public")
def ckks_public_fn(msg: Message, context: Context) -> Message:
    """Reply with the run's public CKKS context (``privacy.secure_aggregation = "ckks"``)."""
    from fednas.fl._ckks import ckks_public

    return ckks_public(msg, context)


@app.query("ckks_decrypt")
def ckks_decrypt_fn(msg: Message, context: Context) -> Message:
    """Decrypt a round's summed CKKS ciphertexts."""
    from fednas.fl._ckks import ckks_decrypt

    return ckks_decrypt(msg, context)
