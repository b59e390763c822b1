"""``load_dataset``: look a source up in ``LOADERS``, split, subsample, scale, standardize."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from fednas.data._arrays import (as_nchw, check_labels, limit_test_size, standardize, stratified_split,
                                 stratified_take, to_unit)
from fednas.data._dataset import ArrayDataset, Normalization
from fednas.data._errors import DataError
from fednas.data._source import LoadRequest, RawData
from fednas.data._sources import LOADERS
from search_spaces import MAX_CLASSES  # the classifier a label set implies is built from it

__all__ = ["LOADERS", "load_dataset", "shared_dataset"]

_SPLIT_STREAM, _LIMIT_STREAM = 0, 1  # independent random streams derived from ``seed``


class _Part(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None

    def take(self, idx: np.ndarray) -> _Part:
        return _Part(self.x[idx], self.y[idx], None if self.groups is None else self.groups[idx])


def _check_args(source: str, test_fraction: float, seed: int, limit: int | None,
                resolution: int | None) -> None:
    if source not in LOADERS:
        raise DataError(f"unknown data source {source!r}; expected one of: {', '.join(sorted(LOADERS))}")
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise DataError(f"test_fraction={test_fraction!r}; expected a number strictly between 0 and 1")
    for key, value, low in (("seed", seed, 0), ("limit", limit, 1), ("resolution", resolution, 1)):
        if value is None and key != "seed":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DataError(f"{key}={value!r}; expected an integer >= {low}")


def _parts(raw: RawData, req: LoadRequest) -> tuple[_Part, _Part]:
    """Train/test parts: the source's own split, else a stratified one."""
    where = f"source '{req.source}'"
    x = as_nchw(np.asarray(raw.x_train), f"{where}: train images")
    train = _Part(x, check_labels(raw.y_train, len(x), f"{where}: train labels"), raw.groups_train)
    if raw.x_test is None or raw.y_test is None:
        rng = np.random.default_rng([req.seed, _SPLIT_STREAM])
        train_idx, test_idx = stratified_split(train.y, req.test_fraction, rng, where)
        return train.take(train_idx), train.take(test_idx)
    x = as_nchw(np.asarray(raw.x_test), f"{where}: test images")
    test = _Part(x, check_labels(raw.y_test, len(x), f"{where}: test labels"), raw.groups_test)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"{where}: test images are {test.x.shape[1:]}; expected {train.x.shape[1:]} like train")
    return train, test


def _limit(train: _Part, test: _Part, limit: int | None, req: LoadRequest) -> tuple[_Part, _Part]:
    if limit is None:
        return train, test
    rng = np.random.default_rng([req.seed, _LIMIT_STREAM])
    train = train.take(stratified_take(train.y, limit, rng))
    return train, test.take(stratified_take(test.y, limit_test_size(limit, req.test_fraction), rng))


def _resize(x: np.ndarray, resolution: int | None) -> np.ndarray:
    if resolution is None or x.shape[2] == resolution or len(x) == 0:
        return x
    t = F.interpolate(torch.from_numpy(x), size=(resolution, resolution), mode="bilinear",
                      align_corners=False, antialias=True)
    return t.numpy()


def load_dataset(source: str = "mnist5k", *, path: str | None = None, test_fraction: float = 0.2,
                 seed: int = 0, limit: int | None = None, resolution: int | None = None,
                 name: str | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """Loads a data source as standardized (train, test) datasets.

    Sources without a predefined split are split stratified by class (``leaf``: per user).
    Images are mapped to [0, 1], optionally resized, then standardized per channel with the
    train split's mean and std. The same arguments always give the same datasets.

    Args:
        source: A key of ``LOADERS``: "mnist5k", "idx", "npz", "imagefolder", "leaf", "torchvision".
        path: File or folder to read (unused by "mnist5k"; the root folder for "torchvision").
        test_fraction: Fraction held out for test when the source has no split, in (0, 1); also
            bounds the test size under ``limit``.
        seed: Seed of every random choice (split, ``limit`` subsample).
        limit: Keep at most this many train samples (stratified) and at most
            ``ceil(limit * test_fraction / (1 - test_fraction))`` test samples.
        resolution: Square side to resize images to (``imagefolder`` defaults to 32; the other
            sources keep their native size).
        name: Dataset name; for "torchvision", the ``torchvision.datasets`` class name.

    Returns:
        ``(train, test)``, sharing ``num_classes`` (max label over both splits + 1).

    Raises:
        DataError: Unknown source, bad parameter, or a missing or malformed file.
    """
    _check_args(source, test_fraction, seed, limit, resolution)
    req = LoadRequest(source, None if path is None else str(path), float(test_fraction), int(seed),
                      resolution, name)
    raw = LOADERS[source](req)
    train, test = _parts(raw, req)
    if len(train.y) == 0:
        raise DataError(f"source '{source}': train split is empty; expected at least one sample")
    num_classes = int(max(train.y.max(), test.y.max(initial=0))) + 1
    if num_classes > MAX_CLASSES:
        raise DataError(f"source '{source}': labels reach {num_classes - 1:,}; expected class ids in "
                        f"[0, {MAX_CLASSES:,}) (labels are class indices 0, 1, ...)")
    train, test = _limit(train, test, limit, req)
    x_train, x_test, (offset, scale) = to_unit(train.x, test.x)
    x_train, x_test = _resize(x_train, resolution), _resize(x_test, resolution)
    norm = Normalization(offset, scale, *standardize(x_train, x_test))
    names = tuple(raw.class_names) if len(raw.class_names) == num_classes else ()
    label = raw.name or source
    return (_dataset(x_train, train, num_classes, label, norm, names),
            _dataset(x_test, test, num_classes, label, norm, names))


def _dataset(x: np.ndarray, part: _Part, num_classes: int, name: str, norm: Normalization,
             class_names: tuple[str, ...]) -> ArrayDataset:
    groups = None if part.groups is None else np.asarray(part.groups, dtype=np.int64)
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(part.y.copy()),
                        num_classes, groups, name, norm, class_names)


@functools.lru_cache(maxsize=2)
def shared_dataset(source: str = "mnist5k", *, path: str | None = None, test_fraction: float = 0.2, seed: int = 0,
                   limit: int | None = None, resolution: int | None = None,
                   name: str | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """``load_dataset``, read once per process for the same arguments: every caller gets the same
    datasets (the config counting a source's users, then the nodes and the server), so none
    may modify them."""
    return load_dataset(source, path=path, test_fraction=test_fraction, seed=seed, limit=limit,
                        resolution=resolution, name=name)
