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
    "Preprocess",
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
    """The model a run trains: the architecture, SVD-factorized when ``lowrank_ratio < 1`` and Tucker-2 factorized
    when ``tucker_ratio < 1``."""
    arch = arch_from_dict(arch)
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels)
    if compression is not None and compression.lowrank_on:
        from fednas.compress import low_rank

        model = low_rank(model, compression.lowrank_ratio)
    if compression is not None and compression.tucker_on:
        from fednas.compress import tucker

        model = tucker(model, compression.tucker_ratio)
    return model


def example_input(in_channels: int, resolution: int) -> torch.Tensor:
    """The (shape-only) input pruning traces and speeds up with: two zero images."""
    return torch.zeros(2, in_channels, resolution, resolution)


def trained_structure(
    arch: Architecture | dict[str, Any], compression: CompressionSettings | None, *, num_classes: int,
    in_channels: int, resolution: int, prune_masks: str = "",
) -> nn.Module:
    """The structure a finished run's weights fit: ``build_run_model``, then the server's pruning (channel masks
    or a block plan, ``fednas.compress.apply_prune_plan``)."""
    model = build_run_model(arch, compression, num_classes=num_classes, in_channels=in_channels)
    if prune_masks:
        from fednas.compress import apply_prune_plan

        model = apply_prune_plan(model, prune_masks, example_input(in_channels, resolution))
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
        for key, kind in (("labels", dict), ("prune_masks", str), ("input", dict)):
            if doc.get(key) is not None and not isinstance(doc[key], kind):
                raise TypeError(f"{key}: expected a JSON {'object' if kind is dict else 'string'}, got "
                                f"{type(doc[key]).__name__}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder}: malformed bundle ({type(exc).__name__}: {exc})") from None
    except RecursionError:
        raise ValueError(f"{folder}: malformed bundle (JSON nested too deeply)") from None
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


class Preprocess(nn.Module):
    """A bundle's input pipeline as a module: raw pixels ``[N, C, H, W]`` (any size, the source's
    value range, e.g. 0-255) to the standardized square images the model was trained on.

    ``x = (pixel - offset) * scale``, resized to ``resolution`` (bilinear, antialiased, as
    ``fednas.data.load_dataset`` does), then ``(x - mean[c]) / std[c]``.
    """

    def __init__(self, *, offset: float, scale: float, mean: list[float], std: list[float], resolution: int) -> None:
        super().__init__()
        self.offset, self.scale, self.resolution = float(offset), float(scale), int(resolution)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != self.mean.shape[1]:
            raise ValueError(f"expected images [N, {self.mean.shape[1]}, H, W], got {tuple(pixels.shape)}")
        x = (pixels.float() - self.offset) * self.scale
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = torch.nn.functional.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                                                align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @classmethod
    def from_input(cls, info: dict[str, Any], where: str = "metrics.json") -> Preprocess:
        """From a bundle's ``input`` record.

        Raises:
            ValueError: the record has no normalization (a bundle written before fednas kept it).
        """
        norm = info.get("normalization") if isinstance(info, dict) else None
        channels = int(info["in_channels"]) if isinstance(info, dict) and "in_channels" in info else 0
        try:
            mean, std = [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
            if len(mean) != channels or len(std) != channels or min(std) <= 0:
                raise ValueError(f"mean/std: expected {channels} values each, std > 0")
            return cls(offset=float(norm["pixel_offset"]), scale=float(norm["pixel_scale"]), mean=mean, std=std,
                       resolution=int(info["resolution"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: input.normalization: expected pixel_offset, pixel_scale, mean and std "
                             f"(bundles from before fednas recorded them have none) ({exc})") from None


def load_model(path: str | Path, *, preprocess: bool = False) -> nn.Module:
    """The PyTorch model of a bundle folder written by ``fednas export``/``fednas train``, in eval mode.

    Reads ``arch.json``, ``metrics.json`` (input channels, classes, compression labels and
    pruning masks) and ``model.safetensors``; nothing is unpickled.

    Args:
        path: the bundle folder.
        preprocess: return ``nn.Sequential(Preprocess, model)``, which takes raw pixels of any
            size in the data source's range (e.g. 0-255) instead of standardized images.

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
    if preprocess:
        return nn.Sequential(Preprocess.from_input(info, str(folder / METRICS_FILE)), model).eval()
    return model.eval()
