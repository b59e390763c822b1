"""Search spaces for fednas: registries of spaces and named architectures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._base import Choice, Domain, Fixed, Range, SearchSpace, domain_from_config
from .compression import CompressionSettings, CompressionSpace, JointSpace, with_compression
from .mobilenet import PRESETS, MobileNetArch, MobileNetSpace, Stage, build_model, preset

__all__ = [
    "PRESETS",
    "SEARCH_SPACES",
    "Choice",
    "CompressionSettings",
    "CompressionSpace",
    "Domain",
    "Fixed",
    "JointSpace",
    "MobileNetArch",
    "MobileNetSpace",
    "Range",
    "SearchSpace",
    "Stage",
    "build_model",
    "domain_from_config",
    "get_search_space",
    "load_architecture",
    "preset",
    "with_compression",
]

SEARCH_SPACES: dict[str, Callable[[dict[str, Any]], SearchSpace]] = {
    "mobilenet": MobileNetSpace.from_options,
}


def get_search_space(name: str, options: dict[str, Any] | None = None) -> SearchSpace:
    """Look up a search space by name and configure it with ``options``.

    Raises:
        ValueError: unknown name (listing the valid ones) or bad options.
    """
    if name not in SEARCH_SPACES:
        raise ValueError(f"unknown search space {name!r}; valid: {', '.join(SEARCH_SPACES)}")
    return SEARCH_SPACES[name](dict(options or {}))


def load_architecture(ref: str | Path) -> MobileNetArch:
    """Return a preset by name, or the architecture stored in a JSON file.

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
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found; expected an architecture JSON file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON architecture ({exc})") from None
    try:
        return MobileNetArch.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
