from __future__ import annotations

import numpy as np
import pytest
import torch

from fednas.data import ArrayDataset, load_dataset


@pytest.fixture(scope="module")
def mnist() -> tuple[ArrayDataset, ArrayDataset]:
    return load_dataset("mnist5k", seed=0)


def test_shapes_dtypes_and_classes(mnist):
    train, test = mnist
    assert train.x.shape == (4000, 1, 28, 28) and test.x.shape == (1000, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.num_classes == test.num_classes == 10
    assert (train.in_channels, train.resolution) == (1, 28)
    assert train.groups is None and train.name == "mnist5k"
    assert torch.equal(torch.bincount(test.y), torch.full((10,), 100))  # stratified


def test_train_is_standardized_and_test_uses_train_stats(mnist):
    train, test = mnist
    assert abs(float(train.x.mean())) < 1e-4
    assert abs(float(train.x.std()) - 1.0) < 1e-3
    assert abs(float(test.x.mean())) < 0.1  # same distribution, but not exactly 0
    assert float(test.x.mean()) != pytest.approx(0.0, abs=1e-6)


def test_same_seed_same_split_different_seed_different_split(mnist):
    train, test = mnist
    train2, test2 = load_dataset("mnist5k", seed=0)
    assert torch.equal(train.x, train2.x) and torch.equal(test.y, test2.y)
    train3, _ = load_dataset("mnist5k", seed=1)
    assert not torch.equal(train.x, train3.x)


def test_train_and_test_are_disjoint(mnist):
    train, test = mnist
    flat_train = {bytes(row) for row in train.x.flatten(1).numpy()}
    flat_test = [bytes(row) for row in test.x.flatten(1).numpy()]
    assert sum(row in flat_train for row in flat_test) < 5  # MNIST has a few duplicate images


@pytest.mark.parametrize(("fraction", "n_test"), [(0.1, 500), (0.5, 2500)])
def test_test_fraction_respected(fraction, n_test):
    train, test = load_dataset("mnist5k", test_fraction=fraction)
    assert (len(train), len(test)) == (5000 - n_test, n_test)


def test_limit_respected_and_stratified():
    train, test = load_dataset("mnist5k", limit=100, test_fraction=0.2, seed=3)
    assert len(train) == 100 and len(test) == 25  # ceil(100 * 0.2 / 0.8), no float round-up to 26
    assert torch.equal(torch.bincount(train.y), torch.full((10,), 10))
    assert abs(float(train.x.mean())) < 1e-4  # standardized on the kept samples
    small, _ = load_dataset("mnist5k", limit=7, test_fraction=0.5)
    assert len(small) == 7 and train.num_classes == small.num_classes == 10


def test_resolution_resizes():
    train, test = load_dataset("mnist5k", limit=20, resolution=14)
    assert train.x.shape[1:] == test.x.shape[1:] == (1, 14, 14)
    assert np.isfinite(train.x.numpy()).all()
