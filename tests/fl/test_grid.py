from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fednas.config import DataConfig, FederationConfig
from fednas.fl import InProcessGrid, RunSpec, federated_data, record_bytes, run_federation, serverapp_identity
from fednas.fl.client_app import derive_seed
from fednas.fl.server_app import initial_model
from fednas.train import TrainConfig, train
from search_spaces import MobileNetArch, preset

DATA = DataConfig(limit=120, alpha=0.5)


def _spec(**fed) -> RunSpec:
    federation = FederationConfig(**{"num_clients": 3, "rounds": 1, "bn_recalibration": "off", "min_train_nodes": 2, **fed})
    return RunSpec(DATA, federation, 7, preset("mobilenet_micro").to_dict())


def _by_hand_fedavg(spec: RunSpec) -> dict[str, torch.Tensor]:
    """One FedAvg round computed without Flower: same init, same seeds, same shards."""
    data = federated_data(spec.data, spec.federation.num_clients, spec.seed)
    global_model = initial_model(spec, data)
    fed = spec.federation
    local = TrainConfig(epochs=fed.local_epochs, batch_size=fed.batch_size, lr=fed.lr, momentum=fed.momentum)
    states, weights = [], []
    for pid in range(fed.num_clients):
        shard = data.client(pid)
        model = copy.deepcopy(global_model)
        res = train(model, shard.x, shard.y, local, seed=derive_seed(spec.seed, 1, pid))
        states.append(model.state_dict())
        weights.append(res.examples)
    total = sum(weights)
    return {k: sum(s[k].double() * (w / total) for s, w in zip(states, weights)) for k in states[0]}


def test_in_process_round_equals_fedavg_by_hand() -> None:
    spec = _spec()
    outcome = run_federation(spec)
    got = outcome.arrays.to_torch_state_dict()
    expected = _by_hand_fedavg(spec)
    assert set(got) == set(expected)
    for k, v in expected.items():
        if got[k].dtype.is_floating_point:
            torch.testing.assert_close(got[k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
    assert outcome.rounds[0].replies == 3 and outcome.rounds[0].failures == 0


def test_counted_bytes_are_the_records_sent() -> None:
    spec = _spec(rounds=2)
    data = federated_data(spec.data, spec.federation.num_clients, spec.seed)
    outcome = run_federation(spec)
    model = initial_model(spec, data)
    arch_json = MobileNetArch.from_dict(spec.arch).to_json()
    config = ConfigRecord({"arch": arch_json, "lr": spec.federation.lr, "server-round": 1})
    per_message = ArrayRecord(model.state_dict()).count_bytes() + config.count_bytes()
    # FedAvg averages int64 counters into float64: same size, so every round sends the same bytes.
    assert outcome.rounds[0].download_bytes == 3 * per_message
    up = ArrayRecord(model.state_dict()).count_bytes() + MetricRecord({"train_loss": 0.0, "num-examples": 1}).count_bytes()
    assert outcome.rounds[0].upload_bytes == 3 * up
    assert outcome.comm_bytes == sum(r.download_bytes + r.upload_bytes for r in outcome.rounds)


def test_same_seed_same_result_and_bn_pooling_changes_only_statistics() -> None:
    a = run_federation(_spec(rounds=2, bn_recalibration="final"))
    b = run_federation(_spec(rounds=2, bn_recalibration="final"))
    assert a.accuracy == b.accuracy
    sa, sb = a.arrays.to_torch_state_dict(), b.arrays.to_torch_state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = run_federation(_spec(rounds=2, bn_recalibration="off")).arrays.to_torch_state_dict()
    changed = {k for k in sa if not torch.equal(sa[k], c[k])}
    assert changed and all("running_" in k for k in changed)
    # pooling costs one extra download + upload per node in the last round
    assert a.rounds[-1].download_bytes > b.rounds[0].download_bytes


def test_a_run_does_not_depend_on_run_or_node_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's deployment runtime gives random run and node ids: every seed (training, stochastic rounding of a
    quantized uplink, attacks) comes from the run seed, the round and the partition, so the result is the same."""
    from functools import partial

    import fednas.fl._run as run_module
    from search_spaces import CompressionSettings

    spec = _spec(rounds=2)
    spec = RunSpec(spec.data, spec.federation, spec.seed, spec.arch,
                   CompressionSettings(uplink_codec="quantize", uplink_bits=2))
    a = run_federation(spec)
    monkeypatch.setattr(run_module, "InProcessGrid",
                        partial(InProcessGrid, node_ids=[8_424_019_127_110_033_191, 17, 5_551_234]))
    b = run_federation(spec, run_id=4_242_424)
    assert a.comm_bytes == b.comm_bytes
    sa, sb = a.arrays.to_torch_state_dict(), b.arrays.to_torch_state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "a quantized federation's result depends on the node ids"


def _echo_app(fail_nodes: set[int]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid in fail_nodes:
            raise RuntimeError(f"node {pid} broke")
        seen = int(context.state["seen"]["n"]) if "seen" in context.state else 0
        context.state["seen"] = MetricRecord({"n": seen + 1})
        return Message(RecordDict({"m": MetricRecord({"pid": pid, "seen": seen + 1})}), reply_to=msg)

    return app


def test_grid_routes_to_each_node_with_its_own_persistent_context() -> None:
    grid = InProcessGrid(_echo_app(fail_nodes={1}), 3, {"k": "v"})
    nodes = list(grid.get_node_ids())
    for expected_seen in (1, 2):
        with serverapp_identity(1):
            msgs = [Message(RecordDict({"c": ConfigRecord({"x": 1})}), n, "train") for n in nodes]
            replies = list(grid.send_and_receive(msgs))
        assert len(replies) == 3
        errors = [r for r in replies if r.has_error()]
        assert len(errors) == 1 and "node 1 broke" in errors[0].error.reason
        ok = sorted((int(r.content["m"]["pid"]), int(r.content["m"]["seen"])) for r in replies if not r.has_error())
        assert ok == [(0, expected_seen), (2, expected_seen)]
        assert {r.metadata.src_node_id for r in replies} == set(nodes)


def test_nodes_receive_copies_not_the_servers_objects() -> None:
    app = ClientApp()

    @app.train()
    def _mutate(msg: Message, context: Context) -> Message:
        msg.content["c"]["x"] = 99
        return Message(RecordDict({"m": MetricRecord({"ok": 1})}), reply_to=msg)

    grid = InProcessGrid(app, 2, {})
    content = RecordDict({"c": ConfigRecord({"x": 1})})
    with serverapp_identity(1):
        grid.send_and_receive([Message(content, n, "train") for n in grid.get_node_ids()])
    assert content["c"]["x"] == 1
    assert record_bytes(content) == 8 + len("x")


def test_all_clients_failing_fails_the_run() -> None:
    from fednas.fl import FederationError

    spec = RunSpec(DataConfig(limit=120), FederationConfig(num_clients=2, rounds=1, lr=1e30, bn_recalibration="off"), 0,
                   preset("mobilenet_micro").to_dict())
    with pytest.raises(FederationError, match="no client returned"):
        run_federation(spec)


def test_partition_ids_cover_all_shards() -> None:
    spec = _spec()
    data = federated_data(spec.data, 3, spec.seed)
    joined = np.sort(np.concatenate(data.shards))
    assert np.array_equal(joined, np.arange(len(data.train)))
