"""``fednas train --superlink``: the same training as ``fednas train``, on Flower's deployment runtime.

The candidate's whole run spec (data, federation, seed, architecture, compression, privacy)
travels in the run config (``fednas-run``, JSON), so the ServerApp and every ClientApp build
exactly what the in-process run builds, with no file paths to agree on. ``flwr run`` ships the
app (a FAB of this project) to the SuperLink named by a connection in Flower's own config
(``$FLWR_HOME/config.toml``: address, TLS certificates, authentication); each SuperNode brings
its data shard through its ``node_config`` (``partition-id=i num-partitions=N``). The
ServerApp saves the final model into ``out-dir`` on the machine it runs on; when that folder is
readable here (the SuperLink on this machine or on a shared file system) the bundle is written
from it as ``fednas train`` writes it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from fednas._errors import ConfigError
from fednas.config import StudyConfig
from fednas.export._source import ModelSource
from fednas.pipeline import Candidate

__all__ = ["app_root", "flwr_run_config", "load_outcome", "train_on_superlink"]

MAX_OUTCOME_BYTES = 64 * 2**20  # outcome.json written by the ServerApp: per-round records, masks


def app_root() -> Path:
    """The project folder ``flwr run`` packs (pyproject.toml with ``[tool.flwr.app]``).

    Raises:
        ConfigError: fednas is installed without its project folder (a wheel).
    """
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text(encoding="utf-8", errors="replace"):
        raise ConfigError(f"--superlink: {pyproject} with [tool.flwr.app] not found; fednas must be installed from "
                          "its project folder (pip install -e .), which `flwr run` ships to the SuperLink")
    return root


def flwr_run_config(candidate: Candidate, config: StudyConfig, rounds: int, out_dir: Path | str) -> dict[str, Any]:
    """The run config of a deployed run: the spec as JSON, and where the ServerApp saves the model."""
    federation = replace(config.federation, rounds=rounds)
    spec = candidate.spec(config.data, federation, config.study.seed, config.privacy)
    return {**spec.to_run_config(), "out-dir": str(out_dir), "num-server-rounds": rounds,
            "num-partitions": federation.num_clients}


def _toml(values: dict[str, Any]) -> str:
    lines = []
    for k, v in values.items():  # json.dumps of a str or int is a valid TOML basic string / integer
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def load_outcome(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(outcome.json, state dict)`` saved by the ServerApp (``fednas.fl.server_app.save_outcome``).

    Raises:
        ConfigError: a missing, oversized or malformed file (naming it).
    """
    from safetensors.torch import load_file

    from fednas.fl.server_app import OUTCOME_FILE, OUTCOME_WEIGHTS

    doc_path, weights = folder / OUTCOME_FILE, folder / OUTCOME_WEIGHTS
    for p in (doc_path, weights):
        if not p.is_file():
            raise ConfigError(f"{p}: not found")
    if doc_path.stat().st_size > MAX_OUTCOME_BYTES:
        raise ConfigError(f"{doc_path}: {doc_path.stat().st_size:,} bytes, more than {MAX_OUTCOME_BYTES:,}")
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
        rounds = doc["rounds"]
        if not isinstance(rounds, list) or not rounds:
            raise ValueError("rounds: expected a non-empty list")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{doc_path}: {exc}") from None
    return doc, load_file(str(weights))


def _flwr() -> str:
    found = Path(sys.executable).parent / "flwr"
    return str(found) if found.exists() else (shutil.which("flwr") or "")


def train_on_superlink(candidate: Candidate, config: StudyConfig, *, rounds: int, connection: str | None,
                       origin: dict[str, Any], staging: Path) -> ModelSource | None:
    """Run the federated training through ``flwr run`` on the SuperLink ``connection`` (None: Flower's default).

    ``staging``: a folder of this machine that the ServerApp writes the final model into.
    Returns the bundle's source when that folder is readable here after the run, else None
    (the ServerApp ran elsewhere: the model is in ``staging`` on the SuperLink's machine).

    Raises:
        ConfigError: no ``flwr`` CLI, no project folder, or a malformed saved outcome.
        FederationError: ``flwr run`` failed (its exit code in the message).
    """
    from fednas.fl import FederationError

    root, flwr = app_root(), _flwr()
    if not flwr:
        raise ConfigError("--superlink: the flwr CLI is not installed (it comes with flwr)")
    result = staging / "result"
    with tempfile.TemporaryDirectory() as tmp:
        run_config = Path(tmp) / "run-config.toml"
        run_config.write_text(_toml(flwr_run_config(candidate, config, rounds, result)), encoding="utf-8")
        cmd = [flwr, "run", str(root), *([connection] if connection else []), "--run-config", str(run_config),
               "--stream"]
        code = subprocess.run(cmd, check=False).returncode  # Flower streams the run's log to this terminal
    if code != 0:
        raise FederationError(f"flwr run exited with {code} (command: {' '.join(cmd[:4])} ...)")
    if not (result / "outcome.json").exists():
        return None
    doc, state = load_outcome(result)
    return _source(candidate, config, rounds, doc, state, origin)


def _source(candidate: Candidate, config: StudyConfig, rounds: int, doc: dict[str, Any], state: dict[str, Any],
            origin: dict[str, Any]) -> ModelSource:
    from fednas.cost import measure
    from fednas.fl import federated_data
    from fednas.pipeline import build

    federation = replace(config.federation, rounds=rounds)
    config = replace(config, federation=federation)
    data = federated_data(config.data, federation.num_clients, config.study.seed)
    built = build(candidate, data)
    last = doc["rounds"][-1]
    metrics: dict[str, Any] = {**built.static, "accuracy": float(last["accuracy"]),
                               "download_bytes": int(doc["download_bytes"]), "upload_bytes": int(doc["upload_bytes"]),
                               "comm_bytes": int(doc["download_bytes"]) + int(doc["upload_bytes"]),
                               "train_seconds": round(float(doc.get("seconds", 0.0)), 3)}
    masks = str(doc.get("prune_masks") or "")
    if masks:  # the server pruned: the final structure's cost, the planned one's kept beside it
        from fednas.compress import apply_prune_plan
        from fednas.models import example_input

        model = apply_prune_plan(built.model, masks, example_input(data.train.in_channels, data.train.resolution))
        cost = measure(model, in_channels=data.train.in_channels, resolution=data.train.resolution)
        metrics.update({f"{k}_before_pruning": v for k, v in built.static.items()},
                       macs=cost.macs, params=cost.params, bytes=cost.bytes)
    return ModelSource(arch=candidate.arch, state=state, config=config, metrics=metrics, labels=dict(candidate.labels),
                       rounds=list(doc["rounds"]), prune_masks=masks,
                       origin={"trained": True, "rounds": rounds, "runtime": "flower deployment", **origin},
                       privacy=dict(doc.get("privacy") or {}), secure=dict(doc.get("secure") or {}))
