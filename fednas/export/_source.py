"""What gets exported: a trained model with its record, taken from a stored trial."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fednas._errors import ConfigError
from fednas.config import StudyConfig
from fednas.objectives import objective_names
from fednas.study import PICKS, pick_trial, read_study, weights_path
from search_spaces import Architecture, arch_from_dict

__all__ = ["PICKS", "ModelSource", "pick_trial", "source_from_supernet", "source_from_trial"]

# The metrics a bundle records: those known before and after training, and the mixed-precision ones (the bundle
# holds those weights); not the post-training int8 ones (the export quantizes to int8 again).
METRICS = objective_names("static") + objective_names("trained") + ("weight_bytes", "accuracy_quantized")


@dataclass(frozen=True)
class ModelSource:
    """A trained network and everything the bundle records about it.

    Attributes:
        arch: the architecture.
        state: the final global model's state dict.
        config: the study config whose data and federation trained it.
        metrics: accuracy, MACs, parameters, bytes and communication as measured in training.
        objectives: objective name -> {"direction", "value"} (empty for ``fednas train``).
        labels: every label of the candidate (architecture and any compression settings).
        searched: the labels the study searched (Optuna's params).
        rounds: per-round records of the federated run.
        origin: where it came from (storage, study, trial; or the training run).
        prune_masks: for a run the server pruned, the channel masks that rebuild its structure.
        privacy: with central DP, what the run spent (``ServerOutcome.privacy``); {} without.
        secure: with secure aggregation, the protocol and its measured cost (``ServerOutcome.secure``); {} without.
    """

    arch: Architecture
    state: dict[str, torch.Tensor]
    config: StudyConfig
    metrics: dict[str, Any]
    objectives: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    searched: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    prune_masks: str = ""  # channel masks of a run the server pruned (``fednas.compress.encode_channel_masks``)
    origin: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    secure: dict[str, Any] = field(default_factory=dict)


def source_from_trial(storage: str, study: str, *, trial: int | None = None, pick: str | None = None) -> ModelSource:
    """Read the chosen trial's record and weights (the study is only read).

    Raises:
        ConfigError / StorageError: see ``read_study`` and ``pick_trial``.
    """
    from safetensors.torch import load_file

    view = read_study(storage, study)
    chosen = pick_trial(view, trial=trial, pick=pick)
    if view.config is None:
        raise ConfigError(f"study {study!r} has no stored fednas config; it was not made by `fednas search`")
    try:
        arch = arch_from_dict(chosen.arch)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trial {chosen.number}: stored architecture is invalid ({exc})") from None
    state = load_file(str(weights_path(view, chosen)))
    metrics = {k: chosen.attrs[k] for k in METRICS if k in chosen.attrs}
    for key in ("latency", "precision"):  # how latency_ms was obtained; the weights per bit width
        if isinstance(chosen.attrs.get(key), dict):
            metrics[key] = chosen.attrs[key]
    origin = {"storage": storage, "study": study, "trial": chosen.number, "picked": pick or "",
              "weights_artifact": chosen.attrs.get("weights_artifact", "")}
    if chosen.attrs.get("mode") == "supernet":  # inherited weights, fine-tuned when phase 3 ran
        finetuned = chosen.attrs.get("finetuned") or {}
        metrics["accuracy_inherited"] = chosen.attrs.get("accuracy_inherited", metrics.get("accuracy"))
        if finetuned:
            metrics["accuracy"] = metrics["accuracy_finetuned"] = finetuned["accuracy"]
        origin["training"] = {"mode": "supernet", "supernet_rounds": chosen.attrs.get("supernet_round", 0),
                              "finetune_rounds": finetuned.get("rounds", 0), "finetune_nodes": finetuned.get("nodes", 0)}
    return ModelSource(
        arch=arch,
        state=state,
        config=view.config,
        metrics=metrics,
        objectives={n: {"direction": d, "value": chosen.values[n]} for n, d in view.objectives.items()},
        labels=dict(chosen.labels),
        searched=dict(chosen.searched),
        rounds=list(chosen.attrs.get("rounds", [])),
        prune_masks=str(chosen.attrs.get("prune_masks", "")),
        origin=origin,
        privacy=dict(chosen.attrs.get("privacy") or {}),
        secure=dict(chosen.attrs.get("secure_aggregation") or {}),
    )


def source_from_supernet(storage: str, study: str) -> ModelSource:
    """The largest subnet of a supernet study's trained supernet (the space's largest member), as a trial would
    score it: inherited weights, batch-norm statistics pooled from the clients (one round trip on the in-process
    grid, counted in ``comm_bytes``), held-out accuracy. The study is only read.

    A bundle of it serves as ``kd_teacher`` of later studies: the supernet's largest subnet as teacher.

    Raises:
        ConfigError: the study has no stored config or no trained supernet, or its weights file is missing or
            does not fit the stored architecture.
    """
    from safetensors.numpy import load_file

    from fednas.cost import measure
    from fednas.fl import FederationError, RunSpec, SubnetEvaluator, federated_data, supernet_section
    from fednas.study import SUPERNET_ATTR, artifact_path
    from fednas.supernet import Supernet

    view = read_study(storage, study)
    if view.config is None:
        raise ConfigError(f"study {study!r} has no stored fednas config; it was not made by `fednas search`")
    stored = view.supernet
    if not stored.get("artifact") or not isinstance(stored.get("arch"), dict):
        raise ConfigError(f"study {study!r} has no trained supernet (study attribute {SUPERNET_ATTR!r}); only "
                          "study.mode = 'supernet' studies store one")
    config = view.config
    try:
        arch = arch_from_dict(stored["arch"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"study {study!r}: stored supernet architecture is invalid ({exc})") from None
    path = artifact_path(view, str(stored["artifact"]), f"study {study!r}: supernet weights file")
    data = federated_data(config.data, config.federation.num_clients, config.study.seed)
    train = data.train
    supernet = Supernet(arch, train.num_classes, train.in_channels, dict(load_file(str(path))))
    spec = RunSpec(config.data, config.federation, config.study.seed, arch.to_dict(),
                   supernet=supernet_section(config))
    try:
        model = supernet.subnet(arch)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{path}: the supernet weights do not fit the stored architecture ({exc})") from None
    cost = measure(model, in_channels=train.in_channels, resolution=train.resolution)
    try:
        with SubnetEvaluator(spec, supernet) as evaluator:
            score = evaluator.evaluate(arch, cost.macs, cost.params)
    except FederationError as exc:
        raise ConfigError(f"study {study!r}: the supernet's largest subnet could not be scored ({exc})") from None
    rounds = list(stored.get("rounds", []))
    metrics = {"accuracy": score.accuracy, "macs": cost.macs, "params": cost.params, "bytes": cost.bytes,
               "comm_bytes": score.download_bytes + score.upload_bytes, "download_bytes": score.download_bytes,
               "upload_bytes": score.upload_bytes}
    origin = {"storage": storage, "study": study, "supernet": "largest subnet", "architecture": arch.describe(),
              "training": {"mode": "supernet", "supernet_rounds": len(rounds), "finetune_rounds": 0,
                           "finetune_nodes": 0}}
    return ModelSource(arch=arch, state={k: v.detach().clone() for k, v in score.model.state_dict().items()},
                       config=config, metrics=metrics, origin=origin)
