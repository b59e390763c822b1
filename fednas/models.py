"""The model of a candidate, of any family: build it, rebuild its trained structure, load a bundle.

One structure path serves the server's initial model, every client's model, the trial's
cost measurement, the stored weights and the export: ``build_run_model`` (the
architecture, low-rank factorized when the compression says so), and, for a run the
server pruned, ``apply_channel_masks`` of the pruning's masks on ``example_input``.
No Flower, no Optuna here.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces import (MAX_RESOLUTION, Architecture, CompressionSettings, Preset, arch_from_dict, arch_from_json,
                           build_model)

__all__ = [
    "ARCH_FILE",
    "METRICS_FILE",
    "WEIGHTS_FILE",
    "build_run_model",
    "example_input",
    "load_model",
    "model_template",
    "pruned_template",
    "bundle_input",
    "read_bundle",
    "trained_structure",
]

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
MAX_BUNDLE_JSON_BYTES = 50_000_000  # metrics.json of a long run is a few hundred kB


def build_run_model(
    arch: Architecture | dict[str, Any], compression: CompressionSettings | None = None, *, num_classes: int,
    in_channels: int,
) -> nn.Module:
    """The model a run trains: the architecture, low-rank factorized when ``lowrank_ratio < 1``."""
    arch = arch_from_dict(arch)
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels)
    if compression is not None and compression.lowrank_on:
        from fednas.compress import low_rank

        model = low_rank(model, compression.lowrank_ratio)
    return model


def example_input(in_channels: int, resolution: int) -> torch.Tensor:
    """The (shape-only) input pruning traces and speeds up with: two zero images."""
    return torch.zeros(2, in_channels, resolution, resolution)


def trained_structure(
    arch: Architecture | dict[str, Any], compression: CompressionSettings | None, *, num_classes: int,
    in_channels: int, resolution: int, prune_masks: str = "",
) -> nn.Module:
    """The structure a finished run's weights fit: ``build_run_model``, then the server's pruning."""
    model = build_run_model(arch, compression, num_classes=num_classes, in_channels=in_channels)
    if prune_masks:
        from fednas.compress import apply_channel_masks, decode_channel_masks

        model = apply_channel_masks(model, decode_channel_masks(prune_masks), example_input(in_channels, resolution))
    return model


_lock = threading.Lock()


def model_template(arch_json: str, compression_json: str, num_classes: int, in_channels: int) -> nn.Module:
    """A fresh copy of ``build_run_model``'s structure (weights arbitrary: load the global ones).

    Built once per process and structure, deep-copied per call: a client rebuilding the
    global model every round spent more on kaiming initialization than on copying.
    Building does not draw from the caller's random stream.
    """
    with _lock:
        template = _plain_template(arch_json, compression_json, num_classes, in_channels)
    return copy.deepcopy(template)


@functools.lru_cache(maxsize=8)
def _plain_template(arch_json: str, compression_json: str, num_classes: int, in_channels: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_run_model(arch_from_json(arch_json), CompressionSettings.from_json(compression_json),
                               num_classes=num_classes, in_channels=in_channels)


def pruned_template(arch_json: str, compression_json: str, masks_text: str, num_classes: int, in_channels: int,
                    resolution: int) -> nn.Module:
    """A fresh copy of the pruned structure the masks describe (weights arbitrary: load the global ones).

    Built once per process and mask digest (an in-process run speeds the model up once
    for all its clients), deep-copied per call.
    """
    from fednas.compress import mask_digest

    with _lock:
        template = _template(arch_json, compression_json, mask_digest(masks_text), masks_text, num_classes,
                             in_channels, resolution)
    return copy.deepcopy(template)


@functools.lru_cache(maxsize=8)
def _template(arch_json: str, compression_json: str, digest: str, masks_text: str, num_classes: int,
              in_channels: int, resolution: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # building must not move the caller's random stream
        torch.manual_seed(0)
        return trained_structure(arch_from_json(arch_json), CompressionSettings.from_json(compression_json),
                                 num_classes=num_classes, in_channels=in_channels, resolution=resolution,
                                 prune_masks=masks_text)


def read_bundle(path: str | Path) -> tuple[Architecture, dict[str, Any]]:
    """The architecture and the ``metrics.json`` document of a bundle folder.

    Raises:
        ValueError: a missing, oversized or malformed bundle file (one line naming it).
    """
    folder = Path(path)
    arch_path, metrics_path = folder / ARCH_FILE, folder / METRICS_FILE
    for p in (arch_path, metrics_path, folder / WEIGHTS_FILE):
        if not p.is_file():
            raise ValueError(f"{p}: not found; expected a bundle folder written by `fednas export`")
    for p in (arch_path, metrics_path):
        if p.stat().st_size > MAX_BUNDLE_JSON_BYTES:
            raise ValueError(f"{p}: {p.stat().st_size:,} bytes; expected a bundle file under "
                             f"{MAX_BUNDLE_JSON_BYTES:,} bytes")
    try:
        arch = arch_from_json(arch_path.read_text(encoding="utf-8"))
        doc = json.loads(metrics_path.read_text(encoding="utf-8"))
        info = doc["input"]
        int(info["num_classes"]), int(info["in_channels"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder}: malformed bundle ({type(exc).__name__}: {exc})") from None
    return arch, doc


def bundle_input(path: str | Path) -> tuple[Architecture, Preset]:
    """A bundle folder's architecture and the input it was trained on (classes, channels, resolution).

    Raises:
        ValueError: a missing or malformed bundle file (one line naming it).
    """
    folder = Path(path)
    arch, doc = read_bundle(folder)
    try:
        info = doc["input"]
        ref = Preset(str(folder), lambda: arch, num_classes=int(info["num_classes"]),
                     in_channels=int(info["in_channels"]), resolution=int(info["resolution"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder / METRICS_FILE}: malformed bundle input ({type(exc).__name__}: {exc})") from None
    return arch, ref


def load_model(path: str | Path) -> nn.Module:
    """The PyTorch model of a bundle folder written by ``fednas export``/``fednas train``, in eval mode.

    Reads ``arch.json``, ``metrics.json`` (input channels, classes, compression labels and
    pruning masks) and ``model.safetensors``; nothing is unpickled.

    Raises:
        ValueError: a missing or malformed bundle file (one line naming it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    arch, doc = read_bundle(folder)
    weights_path = folder / WEIGHTS_FILE
    try:
        info, labels = doc["input"], dict(doc.get("labels") or {})
        classes, channels = int(info["num_classes"]), int(info["in_channels"])
        prune_masks, resolution = str(doc.get("prune_masks") or ""), int(info.get("resolution", 0))
        if not 0 <= resolution <= MAX_RESOLUTION:
            raise ValueError(f"input.resolution: expected an integer in [0, {MAX_RESOLUTION}], got {resolution}")
        compression = CompressionSettings.from_labels(labels)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder}: malformed bundle ({type(exc).__name__}: {exc})") from None
    try:  # sizes are checked before the weights are read
        model = trained_structure(arch, compression, num_classes=classes, in_channels=channels,
                                  resolution=resolution, prune_masks=prune_masks)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"{folder}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights_path}: not a safetensors file ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path}: weights do not fit {folder / ARCH_FILE} "
                         f"({str(exc).splitlines()[0]})") from None
    return model.eval()
