"""Malicious clients (federation.attack) and the Byzantine-robust rules that are meant to withstand them."""

from __future__ import annotations

import copy

import pytest
import torch

from fednas.config import ConfigError, DataConfig, FederationConfig, parse_config
from fednas.fl import RunSpec, federated_data, run_federation
from fednas.fl._attacks import attack_update, flip_labels, malicious_partitions
from fednas.fl.client_app import derive_seed
from fednas.fl.server_app import initial_model
from fednas.train import TrainConfig, train
from search_spaces import preset

DATA = DataConfig(limit=180, alpha=0.5)


def _spec(**fed) -> RunSpec:
    federation = FederationConfig(**{"num_clients": 3, "rounds": 1, "bn_recalibration": "off", "min_train_nodes": 2,
                                     **fed})
    return RunSpec(DATA, federation, 7, preset("mobilenet_micro").to_dict())


def test_the_malicious_clients_are_a_seeded_share() -> None:
    fed = FederationConfig(num_clients=10, attack="sign_flip", attack_fraction=0.3)
    chosen = malicious_partitions(fed, seed=1)
    assert len(chosen) == 3 and chosen <= set(range(10)) and chosen == malicious_partitions(fed, seed=1)
    assert any(malicious_partitions(fed, seed=s) != chosen for s in range(2, 6))
    assert len(malicious_partitions(FederationConfig(num_clients=10, attack="gaussian", attack_fraction=0.01), 0)) == 1
    assert malicious_partitions(FederationConfig(num_clients=10), 0) == frozenset()


def test_each_attack_changes_the_float_weights_as_documented_and_nothing_else() -> None:
    received = {"w": torch.zeros(4), "n": torch.tensor(3)}
    trained = {"w": torch.tensor([1.0, -1.0, 2.0, 0.0]), "n": torch.tensor(4)}
    assert torch.equal(attack_update("sign_flip", 2.0, received, trained, 0)["w"], torch.tensor([-2.0, 2.0, -4.0, 0.0]))
    assert torch.equal(attack_update("scaling", 10.0, received, trained, 0)["w"], 10 * trained["w"])
    noisy = attack_update("gaussian", 0.5, {"w": torch.zeros(20_000)}, {"w": torch.ones(20_000)}, 3)["w"]
    assert abs(float(noisy.mean())) < 0.02 and abs(float(noisy.std()) - 0.5) < 0.02  # noise, not the update
    for attack in ("sign_flip", "scaling", "gaussian", "label_flip", "none"):
        assert torch.equal(attack_update(attack, 2.0, received, trained, 0)["n"], trained["n"])  # counters honest
    assert attack_update("label_flip", 1.0, received, trained, 0) is trained
    y = torch.arange(10) % 5
    flipped = flip_labels(y, 5, 0.4, seed=0)
    assert int((flipped != y).sum()) <= 4 and torch.equal(flipped[flipped != y], 4 - y[flipped != y])
    assert torch.equal(flip_labels(y, 5, 1.0, 0), 4 - y)


def _by_hand(spec: RunSpec) -> dict[str, torch.Tensor]:
    """One FedAvg round without Flower, the malicious clients sending what fednas.fl._attacks says."""
    data = federated_data(spec.data, spec.federation.num_clients, spec.seed)
    global_model = initial_model(spec, data)
    fed = spec.federation
    bad = malicious_partitions(fed, spec.seed)
    local = TrainConfig(epochs=fed.local_epochs, batch_size=fed.batch_size, lr=fed.lr, momentum=fed.momentum)
    states, weights = [], []
    for pid in range(fed.num_clients):
        shard, seed = data.client(pid), derive_seed(spec.seed, 1, pid)
        model = copy.deepcopy(global_model)
        y = flip_labels(shard.y, data.train.num_classes, fed.strength(), seed) if (
            pid in bad and fed.attack == "label_flip") else shard.y
        res = train(model, shard.x, y, local, seed=seed)
        state = model.state_dict()
        if pid in bad:
            state = attack_update(fed.attack, fed.strength(), global_model.state_dict(), state, seed)
        states.append(state)
        weights.append(res.examples)
    total = sum(weights)
    return {k: sum(s[k].double() * (w / total) for s, w in zip(states, weights)) for k in states[0]}


@pytest.mark.parametrize("attack", ["label_flip", "sign_flip", "gaussian", "scaling"])
def test_a_federation_under_attack_aggregates_what_the_attackers_send(attack: str) -> None:
    spec = _spec(attack=attack, attack_fraction=0.34)
    outcome = run_federation(spec)
    got, expected = outcome.arrays.to_torch_state_dict(), _by_hand(spec)
    for k, v in expected.items():
        if got[k].dtype.is_floating_point:
            torch.testing.assert_close(got[k].double(), v, rtol=1e-5, atol=1e-5, msg=k)
    assert [r.attackers for r in outcome.rounds] == [1]
    clean = run_federation(_spec()).arrays.to_torch_state_dict()
    assert any(not torch.allclose(clean[k], got[k]) for k in clean if clean[k].dtype.is_floating_point)


def _deviation(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].dtype.is_floating_point)


def test_each_robust_rule_discards_an_obvious_outlier() -> None:
    base = {"num_clients": 7, "min_train_nodes": 7}
    clean = run_federation(_spec(**base)).arrays.to_torch_state_dict()
    attacked = {"attack": "scaling", "attack_strength": 1000.0, "attack_fraction": 0.14}
    plain = _deviation(run_federation(_spec(**base, **attacked)).arrays.to_torch_state_dict(), clean)
    assert plain > 5.0  # FedAvg follows the boosted update
    for rule in ("krum", "multikrum", "bulyan", "fedmedian", "fedtrimmedavg", "dnc", "fltrust_median"):
        spec = _spec(**base, **attacked, strategy=rule)
        robust = _deviation(run_federation(spec).arrays.to_torch_state_dict(), clean)
        assert robust < plain / 20, (rule, robust, plain)


def test_dnc_drops_the_replies_that_push_together_along_one_direction() -> None:
    import numpy as np

    from fednas.fl._dnc import dnc_keep

    rng = np.random.default_rng(0)
    honest = rng.normal(0.0, 1.0, (6, 5_000)) + 0.5  # a shared direction plus each client's own spread
    flipped = -4 * honest[:2].mean(axis=0, keepdims=True) + rng.normal(0.0, 0.1, (2, 5_000))
    updates = np.concatenate([honest, flipped])
    assert dnc_keep(updates, 2, num_iters=3, subsample_dim=1_000, seed=1) == [0, 1, 2, 3, 4, 5]
    assert dnc_keep(updates, 2, seed=1) == dnc_keep(updates, 2, seed=1)  # seeded
    assert dnc_keep(updates, 0) == list(range(8)) and len(dnc_keep(updates, 99)) >= 1
    assert dnc_keep(np.ones((4, 10)), 1) == [0, 1, 2, 3]  # identical replies: nothing to tell apart, all kept


def test_dnc_keeps_the_honest_clients_of_a_sign_flipped_federation_and_is_reproducible() -> None:
    from fednas.fl._strategies import make_strategy

    base = {"num_clients": 7, "min_train_nodes": 7, "attack": "sign_flip", "attack_strength": 4.0,
            "attack_fraction": 0.29, "strategy": "dnc", "strategy_options": {"num_malicious_nodes": 2}}
    spec = _spec(**base)
    a, b = run_federation(spec), run_federation(spec)
    assert _deviation(a.arrays.to_torch_state_dict(), b.arrays.to_torch_state_dict()) == 0.0
    fed = FederationConfig(num_clients=7, strategy="dnc", strategy_options={"num_iters": 2})
    rule = make_strategy(fed, seed=5)
    assert rule.num_iters == 2 and rule.rule_seed == 5 and rule.num_malicious_nodes == 1


def test_fltrust_median_weights_by_agreement_with_the_median_and_equalises_norms() -> None:
    import numpy as np

    from fednas.fl._trust import trust_weights

    rng = np.random.default_rng(0)
    honest = rng.normal(0.0, 1.0, (6, 2_000)) + 0.3  # nearly orthogonal clients sharing a small direction
    updates = np.concatenate([honest, -honest[:1], 50 * honest[1:2]])  # a sign flip and a boosted update
    trust, scale = trust_weights(updates)
    norms = np.linalg.norm(updates, axis=1)
    assert trust[6] == 0.0 and trust[:6].min() > 0 and abs(trust.sum() - 1) < 1e-12
    assert np.allclose(norms * scale, np.minimum(norms, np.median(norms)))  # clipped to the median norm, no more
    assert scale[7] < 0.05 and scale.max() == 1.0
    step = (trust * scale) @ updates
    assert np.linalg.norm(step) <= np.median(norms) + 1e-9  # the boosted update cannot stretch the step
    by_hand = np.median(updates, axis=0)
    cos = updates @ by_hand / (norms * np.linalg.norm(by_hand))
    assert np.allclose(trust, np.maximum(cos, 0) / np.maximum(cos, 0).sum())
    assert not trust_weights(np.eye(3))[0].any()  # no shared direction (the median is 0): nobody trusted
    assert not trust_weights(updates, min_trust=0.99)[0].any()  # nobody agrees that much
    zero_row = trust_weights(np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.1]]))
    assert zero_row[0][1] == 0.0 and zero_row[1][1] == 1.0  # a zero update: no trust, left alone


def test_fltrust_median_aggregates_updates_from_the_model_it_sent() -> None:
    import numpy as np
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from fednas.fl import serverapp_identity
    from fednas.fl._trust import FLTrustMedian, trust_weights

    sent = {"w": np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), "bn.running_var": np.ones(2, dtype=np.float32),
            "bn.num_batches_tracked": np.array(5)}
    steps = np.array([[1.0, 1.0, 0.0, 0.5], [1.0, 2.0, 0.5, 0.0], [2.0, 1.0, 0.0, 0.0], [-30.0, -30.0, 0.0, 0.0]])
    variances, counts = [0.5, 1.5, 1.0, 0.01], [6, 7, 8, 9]  # the last reply: a big sign flip

    def reply(step: np.ndarray, var: float, count: int) -> Message:
        arrays = {"w": sent["w"] + step.astype(np.float32), "bn.running_var": np.full(2, var, np.float32),
                  "bn.num_batches_tracked": np.array(count)}
        with serverapp_identity(1):
            msg = Message(RecordDict({"config": MetricRecord({})}), 1, "train")
        return Message(RecordDict({"arrays": ArrayRecord({k: torch.from_numpy(v) for k, v in arrays.items()}),
                                   "metrics": MetricRecord({"num-examples": 10 * count, "train_loss": 1.0})}),
                       reply_to=msg)

    rule = FLTrustMedian()
    replies = [reply(*args) for args in zip(steps, variances, counts)]
    with pytest.raises(RuntimeError, match="configure_train"):
        rule.aggregate_train(1, replies)  # no model sent yet: nothing to measure updates from
    rule._global = {k: v.copy() for k, v in sent.items()}  # what configure_train keeps
    arrays, metrics = rule.aggregate_train(1, replies)
    got = {k: a.numpy() for k, a in arrays.items()}
    trust, scale = trust_weights(steps)  # running statistics are not scored
    trust = trust * [10 * c for c in counts] / (trust * [10 * c for c in counts]).sum()  # times the example counts
    assert trust[3] == 0.0 and rule.trust[1] == [round(float(t), 6) for t in trust]
    assert np.allclose(got["w"], sent["w"] + (trust * scale) @ steps, atol=1e-6)
    var_steps = np.array(variances) - 1.0
    assert np.allclose(got["bn.running_var"], 1.0 + (trust * scale) @ var_steps, atol=1e-6)
    assert got["bn.running_var"].min() > 0 and int(got["bn.num_batches_tracked"]) == counts[int(np.argmax(trust))]
    assert metrics["train_loss"] == pytest.approx(1.0)
    rule._global["w"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(RuntimeError, match="do not match"):
        rule.aggregate_train(2, replies)


def _config(**federation) -> dict:
    return {"federation": {"num_clients": 6, **federation}}


@pytest.mark.parametrize(("federation", "message"), [
    ({"attack": "poison", "attack_fraction": 0.2}, "federation.attack: expected one of"),
    ({"attack": "sign_flip"}, "federation.attack_fraction: expected a fraction in (0, 1) with federation.attack"),
    ({"attack_fraction": 0.2}, "federation.attack_fraction: expected 0 without federation.attack"),
    ({"attack": "label_flip", "attack_fraction": 0.2, "attack_strength": 2.0}, "federation.attack_strength"),
    ({"attack": "gaussian", "attack_fraction": 0.99}, "leaves at least one honest client"),
    ({"strategy": "bulyan"}, "federation.bulyan.num_malicious_nodes: 1 needs at least 7 replies per round"),
    ({"strategy": "krum", "krum": {"num_malicious_nodes": 2}}, "needs at least 7 replies"),
    ({"strategy": "krum", "krum": {"num_malicious_nodes": 1.5}}, "federation.krum.num_malicious_nodes: expected an integer"),
    ({"strategy": "multikrum", "multikrum": {"num_nodes_to_select": 6}}, "federation.multikrum.num_nodes_to_select"),
    ({"strategy": "fedtrimmedavg", "fedtrimmedavg": {"beta": 0.5}}, "federation.fedtrimmedavg.beta"),
    ({"strategy": "dnc", "dnc": {"num_malicious_nodes": 6}}, "federation.dnc.num_malicious_nodes: 6 needs at least 7"),
    ({"strategy": "dnc", "dnc": {"filter_frac": 0}}, "federation.dnc.filter_frac"),
    ({"strategy": "fltrust_median", "fltrust_median": {"min_trust": 1.0}}, "federation.fltrust_median.min_trust"),
])
def test_impossible_combinations_name_the_keys(federation: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(**federation))
    assert message in str(info.value), str(info.value)


def test_the_aggregation_rule_is_a_label_with_its_options_from_its_sub_table() -> None:
    from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg

    from fednas.fl._strategies import make_strategy
    from search_spaces import CompressionSettings

    doc = {"federation": {"num_clients": 6, "fedtrimmedavg": {"beta": 0.3}},
           "space": {"labels": {"aggregation": ["fedavg", "fedmedian", "fedtrimmedavg"]}}}
    config = parse_config(doc)
    assert config.federation.strategy == "fedavg"
    trimmed = make_strategy(config.federation, CompressionSettings(aggregation="fedtrimmedavg"))
    assert isinstance(trimmed, FedTrimmedAvg) and trimmed.beta == 0.3
    assert isinstance(make_strategy(config.federation, CompressionSettings(aggregation="fedmedian")), FedMedian)
    from fednas.study import config_from_stored

    assert config_from_stored(config.to_dict()).federation.rule_options == config.federation.rule_options  # stored
    assert CompressionSettings(aggregation="fedmedian").describe() == "agg fedmedian"
    for labels, message in ((["nope"], "space.labels.aggregation: expected strategy names"),
                            (["bulyan"], "space.labels.aggregation = 'bulyan': federation.bulyan.num_malicious_nodes")):
        with pytest.raises(ConfigError, match=message):
            parse_config({"federation": {"num_clients": 6}, "space": {"labels": {"aggregation": labels}}})
    with pytest.raises(ConfigError, match="space.labels.aggregation"):
        parse_config({"study": {"mode": "supernet"}, "space": {"labels": {"aggregation": ["fedmedian"]}}})
