from __future__ import annotations

import numpy as np
import pytest
import torch

from fednas.data import PARTITIONERS, DataError, label_skew, partition

LABELS = np.repeat(np.arange(10), 100)  # balanced, sorted: the hardest case for iid
RNG_LABELS = np.random.default_rng(7).integers(0, 5, size=333)


def assert_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert all(p.dtype == np.int64 for p in parts)
    assert len(joined) == n and len(np.unique(joined)) == n  # disjoint and covering


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
@pytest.mark.parametrize("labels", [LABELS, RNG_LABELS])
def test_disjoint_cover_and_deterministic(name, labels):
    parts = partition(name, labels, 7, seed=3)
    assert len(parts) == 7
    assert_exact_cover(parts, len(labels))
    again = partition(name, labels, 7, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(name, labels, 7, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_registry_and_unknown_name():
    assert set(PARTITIONERS) == {"iid", "dirichlet", "shards", "natural"}
    with pytest.raises(DataError, match="unknown partitioner 'pathological'; expected one of: dirichlet, iid"):
        partition("pathological", LABELS, 2, seed=0)


def test_iid_sizes_are_near_equal_and_labels_mixed():
    parts = partition("iid", LABELS, 6, seed=0)
    assert sorted({len(p) for p in parts}) == [166, 167]
    assert label_skew(LABELS, parts, 10) < 0.1


def test_accepts_tensor_labels():
    parts = partition("iid", torch.as_tensor(LABELS), 4, seed=0)
    assert_exact_cover(parts, len(LABELS))


def test_label_skew_grows_as_alpha_shrinks():
    def mean_skew(alpha):
        return np.mean([label_skew(LABELS, partition("dirichlet", LABELS, 10, seed=s, alpha=alpha), 10)
                        for s in range(5)])

    skews = [mean_skew(a) for a in (100.0, 1.0, 0.1)]
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.1 and skews[2] > 0.5


def test_dirichlet_min_size_is_enforced_even_for_extreme_alpha():
    parts = partition("dirichlet", LABELS, 50, seed=0, alpha=0.01, min_size=5)
    assert min(len(p) for p in parts) >= 5
    assert_exact_cover(parts, len(LABELS))


def test_shards_give_few_labels_per_client():
    parts = partition("shards", LABELS, 10, seed=0, shards_per_client=2)  # 20 shards of 50
    assert [len(p) for p in parts] == [100] * 10
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert label_skew(LABELS, parts, 10) > 0.75
    # unbalanced labels: a shard may straddle a class boundary, still at most 2 labels per shard
    parts = partition("shards", RNG_LABELS, 5, seed=0, shards_per_client=3)
    assert_exact_cover(parts, len(RNG_LABELS))
    assert all(len(np.unique(RNG_LABELS[p])) <= 2 * 3 for p in parts)


def test_natural_one_client_per_group_or_round_robin():
    groups = np.repeat([5, 9, 2, 7], [3, 1, 4, 2])
    labels = np.zeros(10, dtype=np.int64)
    parts = partition("natural", labels, 4, seed=0, groups=groups)
    assert [sorted(set(groups[p])) for p in parts] == [[2], [5], [7], [9]]
    assert_exact_cover(parts, 10)
    two = partition("natural", labels, 2, seed=1, groups=groups)
    assert_exact_cover(two, 10)
    assert sorted(len(set(groups[p])) for p in two) == [2, 2]  # groups never split across clients
    assert all(len(np.intersect1d(groups[a], groups[b])) == 0 for a, b in [two])


def test_natural_errors():
    labels = np.zeros(6, dtype=np.int64)
    with pytest.raises(DataError, match="groups is required"):
        partition("natural", labels, 2, seed=0)
    with pytest.raises(DataError, match="num_clients=4 exceeds the 3 groups"):
        partition("natural", labels, 4, seed=0, groups=np.array([0, 0, 1, 1, 2, 2]))
    with pytest.raises(DataError, match=r"groups has shape \(2,\)"):
        partition("natural", labels, 1, seed=0, groups=np.array([0, 1]))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_clients": 0}, "num_clients=0"),
    ({"num_clients": 1001}, "num_clients=1001; expected an integer between 1 and 1000"),
    ({"alpha": 0.0}, "alpha=0.0"),
    ({"alpha": -1.0}, "alpha=-1.0"),
    ({"shards_per_client": 0}, "shards_per_client=0"),
    ({"name": "shards", "num_clients": 600}, "shards_per_client=2: 600 clients"),
    ({"min_size": 20, "num_clients": 100}, "min_size=20"),
    ({"seed": -3}, "seed=-3"),
])
def test_invalid_parameters_name_the_parameter(kwargs, match):
    args = {"name": "dirichlet", "num_clients": 4, "seed": 0} | kwargs
    name, num_clients = args.pop("name"), args.pop("num_clients")
    with pytest.raises(DataError, match=match):
        partition(name, LABELS, num_clients, **args)


def test_labels_must_be_1d_integers():
    with pytest.raises(DataError, match="labels"):
        partition("iid", LABELS.astype(float), 2, seed=0)


def test_label_skew_extremes():
    labels = np.array([0, 0, 1, 1])
    assert label_skew(labels, [np.array([0, 2]), np.array([1, 3])], 2) == 0.0
    assert label_skew(labels, [np.array([0, 1]), np.array([2, 3])], 2) == pytest.approx(0.5)
    assert label_skew(labels, [np.array([], dtype=np.int64)], 2) == 0.0
    with pytest.raises(DataError, match="labels span"):
        label_skew(labels, [np.arange(4)], 1)


@pytest.mark.parametrize("case", range(30))
def test_random_configurations_always_cover_exactly_once(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(1, 200))
    labels = rng.integers(0, int(rng.integers(1, 12)), size=n)
    groups = rng.integers(0, max(1, n // 5), size=n)
    name = ["iid", "dirichlet", "shards", "natural"][case % 4]
    limit = len(np.unique(groups)) if name == "natural" else n // 2 if name == "shards" else n
    k = int(rng.integers(1, max(1, limit) + 1))
    parts = partition(name, labels, k, seed=case, alpha=float(rng.choice([0.05, 0.5, 5.0])),
                      shards_per_client=1 if name != "shards" else max(1, min(2, n // (2 * k))),
                      groups=groups)
    assert len(parts) == k
    assert_exact_cover(parts, n)
    if name == "dirichlet":
        assert min(len(p) for p in parts) >= 1
