"""Datasets and client partitions for fednas.

``load_dataset`` turns a source (the offline ``mnist5k`` digits, idx files, an ``.npz``, an image
folder, LEAF JSON or a torchvision dataset) into standardized train/test ``ArrayDataset``s;
``partition`` splits a dataset's samples among federated clients.
"""

from __future__ import annotations

from fednas.data._dataset import ArrayDataset
from fednas.data._errors import DataError
from fednas.data._load import LOADERS, load_dataset
from fednas.data._partition import PARTITIONERS, label_skew, partition

__all__ = [
    "LOADERS",
    "PARTITIONERS",
    "ArrayDataset",
    "DataError",
    "label_skew",
    "load_dataset",
    "partition",
]
