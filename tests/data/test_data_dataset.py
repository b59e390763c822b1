from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from fednas import data
from fednas.data import LOADERS, ArrayDataset, DataError, load_dataset


def _dataset(n: int = 6) -> ArrayDataset:
    x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)
    return ArrayDataset(x, torch.arange(n) % 3, 3, np.arange(n) * 10, "toy")


def test_public_interface():
    assert set(data.__all__) == {"ArrayDataset", "DataError", "LOADERS", "Normalization", "PARTITIONERS", "label_skew",
                                 "load_dataset", "partition"}
    assert set(LOADERS) == {"mnist5k", "idx", "npz", "imagefolder", "leaf", "torchvision"}
    assert issubclass(DataError, ValueError)


def test_subset_keeps_groups_aligned():
    ds = _dataset()
    sub = ds.subset(np.array([4, 1]))
    assert torch.equal(sub.y, torch.tensor([1, 1]))
    assert sub.groups.tolist() == [40, 10]
    assert torch.equal(sub.x[0], ds.x[4])
    assert len(sub) == 2 and sub.num_classes == 3 and sub.name == "toy"
    assert len(ds.subset(np.array([], dtype=np.int64))) == 0


def test_subset_rejects_bad_indices():
    with pytest.raises(DataError, match="indices"):
        _dataset().subset(np.array([0, 6]))
    with pytest.raises(DataError, match="indices"):
        _dataset().subset(np.array([0.5]))


def test_dataset_is_frozen_and_validated():
    ds = _dataset()
    with pytest.raises(AttributeError):
        ds.name = "other"
    with pytest.raises(DataError, match="square"):
        ArrayDataset(torch.zeros(2, 1, 2, 3), torch.zeros(2, dtype=torch.int64), 1)
    with pytest.raises(DataError, match=r"labels span \[0, 5\]; expected \[0, 3\)"):
        ArrayDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 5]), 3)
    with pytest.raises(DataError, match="groups"):
        ArrayDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), 3, np.zeros(3))
    assert "n=6" in repr(ds)


def test_unknown_source_lists_valid_names():
    with pytest.raises(DataError, match="unknown data source 'cifar'.*imagefolder.*mnist5k"):
        load_dataset("cifar")


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"test_fraction": 0.0}, "test_fraction"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"limit": 0}, "limit"),
    ({"seed": -1}, "seed"),
    ({"resolution": 0}, "resolution"),
    ({"limit": 2.5}, "limit"),
])
def test_bad_arguments_name_the_parameter(kwargs, key):
    with pytest.raises(DataError, match=key):
        load_dataset("mnist5k", **kwargs)


@pytest.mark.parametrize("source", ["idx", "npz", "imagefolder", "leaf"])
def test_path_required(source):
    with pytest.raises(DataError, match=f"source '{source}': path is required"):
        load_dataset(source)
    with pytest.raises(DataError, match=f"source '{source}': path is required"):
        load_dataset(source, path="")  # not the working directory


def test_torchvision_missing_says_which_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails even if installed
    with pytest.raises(DataError, match=r"pip install fednas\[torchvision\]"):
        load_dataset("torchvision", path=str(tmp_path), name="MNIST")


def test_custom_loader_can_be_registered(monkeypatch):
    from fednas.data._source import RawData

    x = np.tile(np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1), (1, 1, 2, 2))
    monkeypatch.setitem(LOADERS, "toy", lambda req: RawData(x, np.arange(20) % 2, name="toy"))
    train, test = load_dataset("toy", test_fraction=0.5)
    assert (len(train), len(test), train.num_classes) == (10, 10, 2)
