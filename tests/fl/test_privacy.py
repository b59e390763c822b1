"""Central differential privacy ([privacy]): clipping, calibrated seeded noise, the accountant, config errors."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from fednas.config import ConfigError, DataConfig, FederationConfig, PrivacyConfig, parse_config
from fednas.fl import InProcessGrid, RunSpec, run_federation, serverapp_identity
from fednas.fl._privacy import (DP_WEIGHT_KEY, adaptive_effective_multiplier, make_accountant, privacy_mod, private,
                                repair_batchnorm)
from search_spaces import preset

pytest.importorskip("dp_accounting")


def _train_message(arrays: dict[str, np.ndarray], clipping: str, norm: float) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: torch.from_numpy(v) for k, v in arrays.items()}),
                          "config": ConfigRecord({"clipping_norm": norm, "dp-clipping": clipping, "lr": 0.1})})
    with serverapp_identity(1):
        return Message(content, 1, "train")


def _reply_with(update: dict[str, np.ndarray]):
    def call_next(msg: Message, context: Context) -> Message:
        got = {k: msg.content["arrays"][k].numpy() for k in msg.content["arrays"].keys()}
        out = {k: torch.from_numpy(np.asarray(got[k] + update[k])) for k in got}
        return Message(RecordDict({"arrays": ArrayRecord(out), "metrics": MetricRecord({"num-examples": 10})}),
                       reply_to=msg)
    return call_next


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_clipping_bounds_the_update_norm_and_leaves_counters_and_weights_honest(clipping: str) -> None:
    rng = np.random.default_rng(0)
    sent = {"w": rng.normal(size=(50,)).astype(np.float32), "b": rng.normal(size=(5,)).astype(np.float32),
            "num_batches_tracked": np.array(7, dtype=np.int64)}
    big = {"w": np.full(50, 3.0, np.float32), "b": np.full(5, -2.0, np.float32),
           "num_batches_tracked": np.array(40, dtype=np.int64)}
    reply = privacy_mod(_train_message(sent, clipping, 0.5), _context(), _reply_with(big))
    assert not reply.has_error(), reply.error
    got = {k: reply.content["arrays"][k].numpy() for k in sent}
    update = np.concatenate([(got[k] - sent[k]).ravel() for k in ("w", "b")])
    assert np.linalg.norm(update) == pytest.approx(0.5, rel=1e-5)  # clipped to the norm ...
    assert np.allclose(update[:50] / update[0], 1.0)  # ... by scaling, the direction kept
    assert float(got["num_batches_tracked"]) == 7.0  # a counter carries no update
    metrics = reply.content["metrics"]
    assert metrics[DP_WEIGHT_KEY] == 1.0 and metrics["num-examples"] == 10
    if clipping == "adaptive":
        assert bool(metrics["norm_bit"]) is True  # it told the server it clipped
    small = {"w": np.full(50, 1e-3, np.float32), "b": np.zeros(5, np.float32),
             "num_batches_tracked": np.array(1, dtype=np.int64)}
    reply = privacy_mod(_train_message(sent, clipping, 0.5), _context(), _reply_with(small))
    assert np.allclose(reply.content["arrays"]["w"].numpy() - sent["w"], 1e-3, atol=1e-7)  # within the norm: as is


def test_messages_without_a_clipping_norm_pass_through() -> None:
    with serverapp_identity(1):
        msg = Message(RecordDict({"arrays": ArrayRecord({"w": torch.zeros(3)}),
                                  "config": ConfigRecord({"lr": 0.1})}), 1, "train")
    reply = privacy_mod(msg, _context(), _reply_with({"w": np.full(3, 9.0, np.float32)}))
    assert np.allclose(reply.content["arrays"]["w"].numpy(), 9.0)
    assert DP_WEIGHT_KEY not in reply.content["metrics"]


def _hand_epsilon(noise: float, releases: int, delta: float) -> float:
    """(epsilon, delta) of ``releases`` Gaussian mechanisms by hand: RDP eps(a) = k a / (2 z^2), converted by
    eps = min_a RDP(a) + log((a - 1) / a) - (log delta + log a) / (a - 1) (Balle et al. 2020), on a fine grid."""
    a = np.linspace(1.01, 400, 400_000)
    rdp = releases * a / (2 * noise**2)
    return float(np.min(rdp + np.log((a - 1) / a) - (np.log(delta) + np.log(a)) / (a - 1)))


@pytest.mark.parametrize(("noise", "releases"), [(1.0, 3), (0.5, 10), (4.0, 100)])
def test_the_accountant_matches_a_hand_computed_rdp_epsilon(noise: float, releases: int) -> None:
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    accountant = make_accountant(PrivacyConfig(mode="central", delta=1e-5), population=8)
    accountant.compose(GaussianPrivacyEvent(noise_multiplier=noise, sample_size=8, population_size=8), releases)
    eps = accountant.get_privacy_spent().epsilon
    hand = _hand_epsilon(noise, releases, 1e-5)
    assert hand - 1e-6 <= eps <= hand * 1.01  # the library's order grid is coarser than the hand minimum's
    if (noise, releases) == (1.0, 3):
        assert eps == pytest.approx(9.00996, abs=1e-4)  # Flower's RdpAccountant, flwr 1.42 / dp-accounting 0.6


def test_adaptive_clipping_accounts_update_and_count_noise_together() -> None:
    assert adaptive_effective_multiplier(1.0, 1e9) == pytest.approx(1.0)
    assert adaptive_effective_multiplier(2.0, 2.0) == pytest.approx(2 / math.sqrt(2))
    assert adaptive_effective_multiplier(1.06, 3.0) < 1.06


def _echo_clients(updates: dict[int, np.ndarray]) -> ClientApp:
    """Clients that add a fixed update to what they receive (clipped by privacy_mod)."""
    app = ClientApp(mods=[privacy_mod])

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        w = msg.content["arrays"]["w"].numpy() + updates[pid]
        return Message(RecordDict({"arrays": ArrayRecord({"w": torch.from_numpy(w)}),
                                   "metrics": MetricRecord({"num-examples": 10 * (pid + 1)})}), reply_to=msg)

    return app


def _one_round(privacy: PrivacyConfig, seed: int, updates: dict[int, np.ndarray], n: int = 4) -> tuple[np.ndarray, object]:
    fed = FederationConfig(num_clients=n, min_train_nodes=n)
    strategy = private(FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n,
                              weighted_by_key=DP_WEIGHT_KEY), privacy, fed, noise_multiplier=privacy.noise_multiplier,
                       seed=seed)
    grid = InProcessGrid(_echo_clients(updates), n, {})
    random.seed(0)  # Flower samples nodes with Python's random: the same order, the same float sums
    arrays = ArrayRecord({"w": torch.zeros(len(updates[0]))})
    with serverapp_identity(1):
        messages = strategy.configure_train(1, arrays, ConfigRecord({}), grid)
        aggregated, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    return (None if aggregated is None else aggregated["w"].numpy()), strategy


def test_the_server_adds_seeded_noise_of_std_z_c_over_n_to_an_equal_weight_mean() -> None:
    d, n, z, clip = 200_000, 4, 0.8, 2.0
    rng = np.random.default_rng(1)
    updates = {i: rng.normal(size=d).astype(np.float32) * (0.001 if i % 2 else 0.01) for i in range(n)}
    privacy = PrivacyConfig(mode="central", noise_multiplier=z, clipping_norm=clip)
    noisy, strategy = _one_round(privacy, 3, updates)
    clipped = [u * min(1.0, clip / float(np.linalg.norm(u))) for u in updates.values()]
    mean = np.mean(clipped, axis=0)  # equal weights although num-examples differ
    noise = noisy - mean
    assert abs(float(noise.mean())) < 0.01 * z * clip / n
    assert float(noise.std()) == pytest.approx(z * clip / n, rel=0.01)
    again, _ = _one_round(privacy, 3, updates)
    other, _ = _one_round(privacy, 4, updates)
    assert np.array_equal(noisy, again) and not np.allclose(noisy, other)  # seeded by the run seed and round
    report = strategy.report(privacy, n)
    assert report.releases == 1 and report.epsilon > 0 and report.clients_per_round == n


def test_a_round_with_a_missing_reply_is_not_released() -> None:
    privacy = PrivacyConfig(mode="central", noise_multiplier=1.0, clipping="adaptive")
    fed = FederationConfig(num_clients=3, min_train_nodes=3)
    strategy = private(FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3,
                              weighted_by_key=DP_WEIGHT_KEY), privacy, fed, noise_multiplier=1.0, seed=0)
    updates = {0: np.ones(4, np.float32), 1: np.ones(4, np.float32), 2: np.ones(4, np.float32)}
    grid = InProcessGrid(_echo_clients(updates), 3, {})
    with serverapp_identity(1):
        messages = list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(4)}), ConfigRecord({}), grid))
        replies = list(grid.send_and_receive(messages))[:2]
        aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is None and strategy.report(privacy, 3).releases == 0


def test_repair_batchnorm_clamps_negative_running_variances() -> None:
    bn = torch.nn.BatchNorm2d(3)
    bn.running_var.copy_(torch.tensor([-0.5, 0.0, 2.0]))
    repair_batchnorm(torch.nn.Sequential(bn))
    assert bn.running_var.tolist() == pytest.approx([1e-5, 1e-5, 2.0])


def test_a_private_run_records_epsilon_per_round_and_is_reproducible() -> None:
    arch = dataclasses.replace(preset("mobilenet_micro"), norm="group")
    fed = FederationConfig(num_clients=3, rounds=2, bn_recalibration="off", min_train_nodes=3)
    spec = RunSpec(DataConfig(limit=180), fed, 5, arch.to_dict(),
                   privacy=PrivacyConfig(mode="central", noise_multiplier=1.0))
    a, b = run_federation(spec), run_federation(spec)
    eps = [r.epsilon for r in a.rounds]
    assert eps[0] < eps[1] == pytest.approx(a.privacy["epsilon"]) and a.privacy["releases"] == 2
    state_a, state_b = a.arrays.to_torch_state_dict(), b.arrays.to_torch_state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    plain = run_federation(dataclasses.replace(spec, privacy=PrivacyConfig()))
    assert plain.privacy == {} and plain.rounds[0].epsilon is None


def _config(**sections) -> dict:
    doc = {"privacy": {"mode": "central"}, "federation": {"bn_recalibration": "off"}}
    for k, v in sections.items():
        doc[k] = {**doc.get(k, {}), **v}
    return doc


@pytest.mark.parametrize(("doc", "key"), [
    (_config(federation={"strategy": "krum"}), "federation.strategy"),
    (_config(federation={"strategy": "fedadam"}), "federation.strategy"),
    (_config(space={"labels": {"aggregation": ["fedavg", "fedmedian"]}}), "space.labels.aggregation"),
    (_config(space={"labels": {"uplink_codec": ["none", "quantize"]}}), "space.labels.uplink_codec"),
    (_config(space={"labels": {"downlink_codec": "quantize"}}), "space.labels.downlink_codec"),
    (_config(space={"labels": {"prune_method": "l1"}}), "space.labels.prune_method"),
    (_config(federation={"bn_recalibration": "final"}), "federation.bn_recalibration"),
    (_config(study={"fidelity": "halving"}), "study.fidelity"),
    (_config(study={"mode": "supernet"}), "privacy.mode"),
    (_config(privacy={"noise_multiplier": 0}), "privacy.noise_multiplier"),
    (_config(privacy={"delta": 1.0}), "privacy.delta"),
    (_config(privacy={"mode": "everywhere"}), "privacy.mode"),
    (_config(privacy={"clipping": "adaptive", "clipped_count_stddev": 0.4}), "privacy.clipped_count_stddev"),
    (_config(space={"labels": {"dp_noise_multiplier": [0.5, -1]}}), "space.labels"),
    ({"objectives": {"accuracy": "maximize", "epsilon": "minimize"}}, "objectives.epsilon"),
    ({"constraints": {"max_epsilon": 8.0}}, "constraints.max_epsilon"),
    ({"space": {"labels": {"dp_noise_multiplier": [0.5, 1.0]}}}, "space.labels.dp_noise_multiplier"),
])
def test_impossible_combinations_name_the_key(doc: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert str(err.value).startswith(key), str(err.value)


def test_a_private_study_config_is_accepted() -> None:
    config = parse_config(_config(objectives={"accuracy": "maximize", "epsilon": "minimize"},
                                  constraints={"max_epsilon": 20.0},
                                  space={"labels": {"dp_noise_multiplier": [0.3, 1.0], "norm": "group"}},
                                  federation={"strategy": "fedprox"}))
    assert config.privacy.on and config.constraints.active() == {"epsilon": 20.0}
