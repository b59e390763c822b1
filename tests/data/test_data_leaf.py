from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fednas.data import DataError, load_dataset, partition


def leaf_doc(users: dict[str, int], *, offset: int = 0, side: int = 4, nested: bool = False) -> dict:
    """A LEAF document; user k's samples all have label k % 3 and pixel value (k + 1) / 10."""
    data = {}
    for k, (user, n) in enumerate(users.items()):
        k += offset
        image = np.full((side, side), (k + 1) / 10)
        row = image.tolist() if nested else image.reshape(-1).tolist()
        data[user] = {"x": [row] * n, "y": [k % 3] * n}
    return {"users": list(users), "num_samples": list(users.values()), "user_data": data}


def write(path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_train_test_folders_merge_files_and_share_user_ids(tmp_path):
    write(tmp_path / "train" / "a.json", leaf_doc({"u0": 5, "u1": 6}))
    write(tmp_path / "train" / "b.json", leaf_doc({"u2": 4}, offset=2))
    write(tmp_path / "test" / "a.json", leaf_doc({"u1": 2, "u0": 1, "u2": 3}))
    train, test = load_dataset("leaf", path=str(tmp_path))
    assert (len(train), len(test)) == (15, 6)
    assert train.x.shape[1:] == (1, 4, 4)
    assert train.groups.tolist() == [0] * 5 + [1] * 6 + [2] * 4
    assert test.groups.tolist() == [1, 1, 0, 2, 2, 2]  # same ids as train, by user name
    assert train.y.tolist() == [0] * 5 + [1] * 6 + [2] * 4
    parts = partition("natural", train.y.numpy(), 3, seed=0, groups=train.groups)
    assert [p.tolist() for p in parts] == [list(range(5)), list(range(5, 11)), list(range(11, 15))]


def test_single_file_is_split_within_each_user(tmp_path):
    users = {"f0": 10, "f1": 20, "f2": 1}
    write(tmp_path / "all.json", leaf_doc(users))
    train, test = load_dataset("leaf", path=str(tmp_path / "all.json"), test_fraction=0.2, seed=1)
    assert np.bincount(train.groups).tolist() == [8, 16, 1]  # the lone sample stays in train
    assert np.bincount(test.groups).tolist() == [2, 4]
    assert train.name == "all" and train.num_classes == 3
    again, _ = load_dataset("leaf", path=str(tmp_path / "all.json"), test_fraction=0.2, seed=1)
    assert torch.equal(train.x, again.x)
    parts = partition("natural", train.y.numpy(), 3, seed=0, groups=train.groups)
    assert [len(p) for p in parts] == [8, 16, 1]
    # every natural client holds exactly one user's samples
    assert all(len(np.unique(train.groups[p])) == 1 for p in parts)


def test_folder_without_split_merges_all_json_and_nested_rows(tmp_path):
    write(tmp_path / "p1.json", leaf_doc({"a": 5}, nested=True))
    write(tmp_path / "p2.json", leaf_doc({"b": 5}, offset=1, nested=True))
    train, test = load_dataset("leaf", path=str(tmp_path), test_fraction=0.4)
    assert train.x.shape == (6, 1, 4, 4) and len(test) == 4
    assert sorted(set(train.groups.tolist())) == [0, 1]


def test_limit_keeps_groups_aligned(tmp_path):
    write(tmp_path / "all.json", leaf_doc({f"u{k}": 10 for k in range(6)}))
    train, _ = load_dataset("leaf", path=str(tmp_path / "all.json"), limit=12)
    assert len(train) == 12
    # label is user index % 3 by construction, so groups must still match labels
    assert (train.groups % 3 == train.y.numpy()).all()


@pytest.mark.parametrize(("doc", "match"), [
    ({"users": ["a"]}, "no 'user_data' object"),
    ({"users": ["a"], "user_data": {}}, "user 'a' is listed in 'users' but has no 'user_data'"),
    ({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 4]}}}, r"user_data\['a'\]: expected an object"),
    ({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 4, [0.0]], "y": [0, 1]}}}, "not a rectangular"),
    ({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 5], "y": [0]}}}, "perfect square"),
    ({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 4], "y": [-2]}}}, r"\['y'\]: has negative label"),
])
def test_malformed_json_names_file_and_key(tmp_path, doc, match):
    write(tmp_path / "bad.json", doc)
    with pytest.raises(DataError, match=match) as err:
        load_dataset("leaf", path=str(tmp_path / "bad.json"))
    assert "bad.json" in str(err.value)


def test_not_json_and_empty_folder(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match=r"x\.json: cannot be read as JSON"):
        load_dataset("leaf", path=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no \*\.json files"):
        load_dataset("leaf", path=str(tmp_path / "empty"))


def test_natural_partition_takes_the_number_of_clients_from_the_data(tmp_path, tiny_config) -> None:
    from fednas.cli import main
    from fednas.config import ConfigError, load_config
    from fednas.fl import federated_data

    text = tiny_config.read_text()
    tiny_config.write_text(text.replace("num_clients = 3\n", ""))
    assert "num_clients" not in tiny_config.read_text()
    users = {f"user{k}": 6 + k for k in range(5)}
    write(tmp_path / "leaf" / "all.json", leaf_doc(users, side=8))
    sets = ["data.source='leaf'", f"data.path='{tmp_path / 'leaf'}'", "data.partition='natural'"]
    config = load_config(tiny_config, [*sets, "federation.min_train_nodes=5"])
    assert config.federation.num_clients == 5  # no num_clients given: one client per user
    data = federated_data(config.data, config.federation.num_clients, config.study.seed)
    owners = [set(data.train.groups[shard].tolist()) for shard in data.shards]
    assert len(owners) == 5 and all(len(o) == 1 for o in owners) and set().union(*owners) == set(range(5))
    with pytest.raises(ConfigError, match=r"federation.min_train_nodes: expected an integer in \[1, num_clients=5\].*"
                                          r"the data's users"):
        load_config(tiny_config, [*sets, "federation.min_train_nodes=6"])
    explicit = load_config(tiny_config, [*sets, "federation.num_clients=2"])  # fewer clients: users dealt out
    assert explicit.federation.num_clients == 2
    with pytest.raises(ConfigError, match="needs data.partition = 'natural'"):
        load_config(tiny_config, ["federation.num_clients=0"])
    assert main(["search", str(tiny_config), "--check", *[a for s in sets for a in ("--set", s)]]) == 0
