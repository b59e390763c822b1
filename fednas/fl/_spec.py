"""What a federated run needs, carried in Flower's run config, and the nodes' data.

A run is described by a ``RunSpec`` (data, federation settings, seed, architecture,
compression). It travels as one JSON string in the run config (key ``fednas-run``), so the
same ServerApp and ClientApp work on fednas's in-process grid and under ``flwr run``; in the
latter case the run config names a study TOML file and an architecture (a preset, an
``arch.json`` or a bundle folder) instead, and the compression labels come from the bundle,
the study's fixed ``[space.labels]`` and the run config's ``compression`` (a JSON object).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fednas.config import DataConfig, FederationConfig, PrivacyConfig, StudyConfig, load_config
from fednas.data import ArrayDataset, partition
from fednas.models import build_run_model
from search_spaces import CompressionSettings, CompressionSpace

__all__ = ["FederatedData", "RunSpec", "build_run_model", "federated_data", "flwr_run_compression", "supernet_section"]

RUN_KEY = "fednas-run"
# For runtimes that cannot carry a run config (Flower's legacy ``run_simulation`` API):
# the same JSON in this environment variable, which Ray's workers inherit.
RUN_ENV = "FEDNAS_RUN_SPEC"


@dataclass(frozen=True)
class RunSpec:
    """One federated run: data, federation settings, seed, architecture (as a dict, any family), compression."""

    data: DataConfig
    federation: FederationConfig
    seed: int
    arch: dict[str, Any]
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    # a supernet run (``supernet_section``): the space whose supernet is trained, and its settings
    supernet: dict[str, Any] = field(default_factory=dict)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # ``[privacy]``: central DP of the run

    def to_run_config(self) -> dict[str, str]:
        doc = {"data": asdict(self.data), "federation": asdict(self.federation), "seed": self.seed, "arch": self.arch,
               "compression": self.compression.to_dict(), "supernet": self.supernet, "privacy": asdict(self.privacy)}
        return {RUN_KEY: json.dumps(doc, sort_keys=True)}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunSpec:
        """Read the spec from a run config written by ``to_run_config`` or by ``flwr run``."""
        text = run_config.get(RUN_KEY) or os.environ.get(RUN_ENV)
        if text:
            doc = json.loads(str(text))
            return cls(DataConfig(**doc["data"]), FederationConfig(**doc["federation"]), int(doc["seed"]), doc["arch"],
                       CompressionSettings.from_dict(doc.get("compression", {})), doc.get("supernet") or {},
                       PrivacyConfig(**doc.get("privacy", {})))
        return cls._from_flwr_app_config(run_config)

    @classmethod
    def _from_flwr_app_config(cls, run_config: dict[str, Any]) -> RunSpec:
        """The spec of a ``flwr run``: a study TOML, an architecture, and overrides.

        Under ``flwr run`` the apps run from the installed FAB (``$FLWR_HOME/apps/...``)
        in whatever directory the SuperLink was started from, so a relative path is
        looked up in the working directory first and then in the app's root (the FAB
        ships ``studies/*.toml``). ``num-partitions`` must equal the federation's
        number of SuperNodes: the apps partition the data by it, the nodes only bring
        their ``partition-id``.
        """
        import logging
        from dataclasses import replace
        from pathlib import Path

        from search_spaces import PRESETS, load_architecture

        from fednas.models import read_bundle

        def resolve(ref: str) -> str:
            path = Path(ref)
            if path.is_absolute() or path.exists():
                return ref
            in_app = Path(__file__).resolve().parents[2] / path
            return str(in_app) if in_app.exists() else ref

        config = load_config(resolve(str(run_config.get("study-config", "studies/quickstart.toml"))))
        federation = config.federation
        if "num-server-rounds" in run_config:
            federation = replace(federation, rounds=int(run_config["num-server-rounds"]))
        if "num-partitions" in run_config:
            federation = replace(federation, num_clients=int(run_config["num-partitions"]))
        arch_ref = str(run_config.get("architecture", "mobilenet_tiny"))
        bundle_labels: dict[str, Any] = {}
        if arch_ref not in PRESETS and Path(resolve(arch_ref)).is_dir():  # a bundle: its architecture and labels
            arch, doc = read_bundle(resolve(arch_ref))
            bundle_labels = dict(doc.get("labels") or {})
        else:
            arch = load_architecture(arch_ref if arch_ref in PRESETS else resolve(arch_ref))
        compression = flwr_run_compression(config, bundle_labels, str(run_config.get("compression", "") or ""))
        # Flower's runtime configures only its own "flwr" logger: without a handler the
        # ServerApp's INFO lines ("final accuracy ...") would never reach `flwr log`.
        log = logging.getLogger("fednas")
        if not log.handlers and not logging.getLogger().handlers:
            from flwr.common.logger import console_handler

            log.addHandler(console_handler)
            log.setLevel(logging.INFO)
        supernet = supernet_section(config) if config.study.mode == "supernet" else {}
        return cls(config.data, federation, config.study.seed, arch.to_dict(), compression, supernet, config.privacy)


def supernet_section(config: StudyConfig) -> dict[str, Any]:
    """``RunSpec.supernet`` of a supernet study: its space (name, options, label domains) and ``[supernet]``."""
    space = config.space
    return {"space": {"name": space.name, "options": dict(space.options), "labels": dict(space.labels)},
            "settings": asdict(config.supernet)}


def flwr_run_compression(config: StudyConfig, bundle_labels: dict[str, Any], override_json: str = "") -> CompressionSettings:
    """The compression of a ``flwr run``: the study's fixed compression labels, then a bundle's, then overrides.

    Raises:
        ValueError: ``override_json`` is not a JSON object of compression labels, or a value is invalid.
    """
    labels = {k: v for k, v in config.space.labels.items() if not isinstance(v, (list, dict))}
    labels.update(bundle_labels)
    if override_json:
        extra = json.loads(override_json)
        if not isinstance(extra, dict):
            raise ValueError(f"run config 'compression': expected a JSON object of labels, got {override_json!r}")
        labels.update(extra)
    known = CompressionSpace().allowed_domains()
    for k, v in labels.items():
        if k in known and not known[k].contains(v):
            raise ValueError(f"compression label {k!r}: {v!r} not in {known[k].describe()}")
    return CompressionSettings.from_labels(labels)


@dataclass(frozen=True)
class FederatedData:
    """Train/test split and the client shards (indices into ``train``)."""

    train: ArrayDataset
    test: ArrayDataset
    shards: tuple[np.ndarray, ...]

    def client(self, partition_id: int) -> ArrayDataset:
        return self.train.subset(self.shards[partition_id])


def federated_data(data: DataConfig, num_clients: int, seed: int) -> FederatedData:
    """Load and partition once per process; every node and the server share the result."""
    return _cached(json.dumps(asdict(data), sort_keys=True), num_clients, seed)


@functools.lru_cache(maxsize=4)
def _cached(data_json: str, num_clients: int, seed: int) -> FederatedData:
    data = DataConfig(**json.loads(data_json))
    train, test = data.datasets(seed)
    shards = partition(
        data.partition,
        train.y.numpy(),
        num_clients,
        seed=seed,
        alpha=data.alpha,
        shards_per_client=data.shards_per_client,
        groups=train.groups,
        min_size=2,  # a client needs a batch of two for batch norm
    )
    return FederatedData(train, test, tuple(shards))
