"""Datasets and client partitions for fednas.

``load_dataset`` turns a source (the offline ``mnist5k`` digits, idx files, an ``.npz``, an image
folder, LEAF JSON or a torchvision dataset) into standardized train/test ``ArrayDataset``s;
``partition`` splits a dataset's samples among federated clients.

Names are imported when first used: the registries ``LOADERS`` and ``PARTITIONERS`` need
only NumPy, so the config can check ``data.source`` without loading torch.
"""

from __future__ import annotations

from fednas._lazy import lazy_attributes

_API = {
    "ArrayDataset": "fednas.data._dataset",
    "DataError": "fednas.data._errors",
    "LOADERS": "fednas.data._sources",
    "Normalization": "fednas.data._dataset",
    "load_dataset": "fednas.data._load",
    "PARTITIONERS": "fednas.data._partition",
    "label_skew": "fednas.data._partition",
    "partition": "fednas.data._partition",
}

__all__ = sorted(_API)


__getattr__, __dir__ = lazy_attributes(__name__, _API)
