"""Datasets and client partitions for fednas.

``load_dataset`` turns a source (the offline ``mnist5k`` digits, idx files, an ``.npz``, an image
folder, LEAF JSON or a torchvision dataset) into standardized train/test ``ArrayDataset``s;
``partition`` splits a dataset's samples among federated clients.

Names are imported when first used: the registries ``LOADERS`` and ``PARTITIONERS`` need
only NumPy, so the config can check ``data.source`` without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "ArrayDataset": "fednas.data._dataset",
    "DataError": "fednas.data._errors",
    "LOADERS": "fednas.data._sources",
    "load_dataset": "fednas.data._load",
    "PARTITIONERS": "fednas.data._partition",
    "label_skew": "fednas.data._partition",
    "partition": "fednas.data._partition",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fednas.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
