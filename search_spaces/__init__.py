"""Search spaces for fednas: architecture families, their presets and label domains.

A family is registered once, below, with its record class (an ``Architecture``), its
search space and its presets; ``arch_from_dict``, ``build_model``, ``preset``,
``load_architecture`` and ``get_search_space`` serve every family. Importing this package
does not import PyTorch (a family's modules load when a network is built).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import mobilenet, resnet
from ._arch import (FAMILIES, MAX_CHANNELS, MAX_CLASSES, MAX_PARAMS, MAX_RESOLUTION, PRESETS, Architecture, Family, Preset, WeightSlice,
                    arch_from_dict, arch_from_json, build_model, describe_arch, get_family, preset, register_family)
from ._base import Choice, Domain, Fixed, RandomTrial, Range, SearchSpace, TrialLike, domain_from_config, extreme
from .compression import CompressionSettings, CompressionSpace, JointSpace, with_compression
from .mobilenet import MobileNetArch, MobileNetSpace, Stage
from .resnet import ResNetArch, ResNetSpace, ResStage

# One line per family: adding a family is its own module(s) plus a line here.
register_family(mobilenet.FAMILY)
register_family(resnet.FAMILY)

__all__ = [
    "FAMILIES",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_PARAMS",
    "MAX_RESOLUTION",
    "PRESETS",
    "Architecture",
    "Choice",
    "CompressionSettings",
    "CompressionSpace",
    "Domain",
    "Family",
    "Fixed",
    "JointSpace",
    "MobileNetArch",
    "MobileNetSpace",
    "Preset",
    "RandomTrial",
    "Range",
    "ResNetArch",
    "ResNetSpace",
    "ResStage",
    "SearchSpace",
    "Stage",
    "TrialLike",
    "WeightSlice",
    "arch_from_dict",
    "arch_from_json",
    "build_model",
    "describe_arch",
    "domain_from_config",
    "extreme",
    "get_family",
    "get_search_space",
    "load_architecture",
    "preset",
    "register_family",
    "search_space_names",
    "with_compression",
]


def search_space_names() -> list[str]:
    """Names valid for ``[space] name``: one search space per family."""
    return list(FAMILIES)


def get_search_space(name: str, options: dict[str, Any] | None = None) -> SearchSpace:
    """Look up a family's search space by name and configure it with ``options``.

    Raises:
        ValueError: unknown name (listing the valid ones) or bad options.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown search space {name!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[name].space(dict(options or {}))


MAX_ARCH_FILE_BYTES = 1_000_000  # an architecture JSON is a few kB; refuse anything this big before reading


def load_architecture(ref: str | Path) -> Architecture:
    """Return a preset by name, or the architecture stored in a JSON file (any family).

    Raises:
        ValueError: neither a preset name nor a readable architecture file.
    """
    text = str(ref)
    if text in PRESETS:
        return preset(text)
    path = Path(text)
    if not path.suffix == ".json" and not path.exists():
        raise ValueError(f"unknown architecture {text!r}; expected a JSON file or one of: {', '.join(PRESETS)}")
    try:
        if path.stat().st_size > MAX_ARCH_FILE_BYTES:
            raise ValueError(f"{path}: {path.stat().st_size:,} bytes; an architecture JSON file is expected to be "
                             f"under {MAX_ARCH_FILE_BYTES:,}")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found; expected an architecture JSON file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON architecture ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply; expected an architecture object") from None
    try:
        return arch_from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
