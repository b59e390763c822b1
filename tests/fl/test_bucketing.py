"""Bucketing before the aggregation rule (federation.bucket_size, fednas.fl._bucketing)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian

from fednas.config import ConfigError, DataConfig, FederationConfig, parse_config
from fednas.fl import RunSpec, run_federation, serverapp_identity
from fednas.fl._bucketing import bucket_replies, bucketed
from fednas.fl._strategies import make_strategy
from search_spaces import preset


def _reply(w: list[float], examples: int, step: int = 0, loss: float = 0.0) -> Message:
    arrays = ArrayRecord({"w": torch.tensor(w, dtype=torch.float32), "n": torch.tensor(step)})
    with serverapp_identity(1):
        msg = Message(RecordDict({"config": MetricRecord({})}), 1, "train")
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": examples,
                                                                           "train_loss": loss})}), reply_to=msg)


def _w(msg: Message) -> np.ndarray:
    return msg.content["arrays"]["w"].numpy()


def test_buckets_are_example_weighted_means_of_a_seeded_shuffle() -> None:
    replies = [_reply([float(i), 10.0 * i], 10 * (i + 1), step=i, loss=float(i)) for i in range(5)]
    assert bucket_replies(replies, 1, arrays_key="arrays", weight_key="num-examples", seed=0) is replies
    buckets = bucket_replies(replies, 2, arrays_key="arrays", weight_key="num-examples", seed=3)
    order = list(range(5))
    random.Random(3).shuffle(order)  # the documented shuffle
    groups = [order[0:2], order[2:4], order[4:]]  # 2 + 2 + the remainder
    assert len(buckets) == 3
    for bucket, group in zip(buckets, groups):
        weights = np.array([10.0 * (k + 1) for k in group])
        share = weights / weights.sum()
        assert int(bucket.content["metrics"]["num-examples"]) == weights.sum()
        np.testing.assert_allclose(_w(bucket), sum(s * np.array([k, 10.0 * k]) for s, k in zip(share, group)),
                                   rtol=1e-6)
        assert bucket.content["metrics"]["train_loss"] == pytest.approx(float(share @ np.array(group, float)))
        assert int(bucket.content["arrays"]["n"].numpy()) == group[0]  # counters: the first member's
    assert len(buckets[2].content["arrays"]["w"].numpy()) == 2 and buckets[2] is replies[groups[2][0]]
    orders = {tuple(tuple(_w(b).tolist()) for b in bucket_replies(replies, 2, arrays_key="arrays",
                                                                 weight_key="num-examples", seed=s))
              for s in range(8)}
    assert len(orders) > 1  # the shuffle depends on the seed


def test_bucketing_leaves_fedavg_unchanged_and_helps_the_median_of_spread_updates() -> None:
    rng = np.random.default_rng(0)
    honest = [rng.normal(1.0, 1.0, 50).tolist() for _ in range(6)]

    def replies() -> list[Message]:  # fresh each time: FedMedian pops the arrays it reads
        return [_reply(w, 10 + i) for i, w in enumerate(honest)]

    kwargs = {"fraction_evaluate": 0.0}
    plain, _ = FedAvg(**kwargs).aggregate_train(1, replies())
    buck, _ = bucketed(FedAvg)(bucket_size=2, bucket_seed=1, **kwargs).aggregate_train(1, replies())
    np.testing.assert_allclose(buck["w"].numpy(), plain["w"].numpy(), rtol=1e-5, atol=1e-6)
    mean = plain["w"].numpy()
    median, _ = FedMedian(**kwargs).aggregate_train(1, replies())
    bmedian, _ = bucketed(FedMedian)(bucket_size=3, bucket_seed=1, **kwargs).aggregate_train(1, replies())
    # two buckets of three: their median is the mean of the two bucket means, the mean of all six (equal-ish weights)
    assert np.abs(bmedian["w"].numpy() - mean).max() < np.abs(median["w"].numpy() - mean).max()
    assert bucketed(FedMedian) is bucketed(FedMedian)
    with pytest.raises(ValueError, match="bucket_size"):
        bucketed(FedAvg)(bucket_size=0)
    with pytest.raises(TypeError):
        bucketed(int)  # type: ignore[arg-type]


def test_a_bucketed_run_matches_fedavg_and_the_robust_rule_sees_buckets() -> None:
    base = {"num_clients": 4, "rounds": 1, "bn_recalibration": "off", "min_train_nodes": 4}
    data = DataConfig(limit=160, alpha=0.5)
    arch = preset("mobilenet_micro").to_dict()
    plain = run_federation(RunSpec(data, FederationConfig(**base), 5, arch)).arrays.to_torch_state_dict()
    buck = run_federation(RunSpec(data, FederationConfig(**base, bucket_size=2), 5, arch)).arrays.to_torch_state_dict()
    for k, v in plain.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(buck[k], v, rtol=1e-4, atol=1e-5, msg=k)
    strategy = make_strategy(FederationConfig(**base, strategy="fedmedian", bucket_size=2), seed=5)
    assert isinstance(strategy, FedMedian) and strategy.bucket_size == 2 and strategy.bucket_seed == 5


@pytest.mark.parametrize(("doc", "message"), [
    ({"federation": {"bucket_size": 0}}, "federation.bucket_size: expected an integer >= 1"),
    ({"federation": {"num_clients": 8, "min_train_nodes": 8, "bucket_size": 2, "strategy": "krum",
                     "krum": {"num_malicious_nodes": 1}}},
     "federation.krum.num_malicious_nodes: 1 needs at least 5 buckets of federation.bucket_size=2 per round; "
     "a round has 4"),
    ({"federation": {"num_clients": 6, "bucket_size": 2}, "privacy": {"secure_aggregation": "secagg+"}},
     "federation.bucket_size: expected 1 with privacy.secure_aggregation"),
    ({"federation": {"num_clients": 6, "bucket_size": 2, "bn_recalibration": "off"},
      "privacy": {"mode": "central"}}, "federation.bucket_size: expected 1 with privacy.mode"),
    ({"study": {"mode": "supernet"}, "federation": {"bucket_size": 2}},
     "federation.bucket_size: expected 1 with study.mode = 'supernet'"),
])
def test_impossible_bucketing_names_the_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert message in str(info.value), str(info.value)
