"""Uplink/downlink mods and the compressing strategy on a real ClientApp, Messages and Contexts."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fednas.compress import (COMPRESSION_RECORD, CompressedFedAvg, Layout, Quantize, TopK, compressed,
                             make_downlink_mod, make_uplink_mod, to_numpy)
from fednas.fl import CountingGrid, InProcessGrid, serverapp_identity
from fednas.train import TrainConfig, train
from search_spaces import build_model, preset

ARCH = preset("mobilenet_micro")
UPLINK_RESIDUAL = "fednas-uplink-residual"


@pytest.fixture(autouse=True)
def _quiet_flower():
    log = logging.getLogger("flwr")
    level = log.level
    log.setLevel(logging.ERROR)
    yield
    log.setLevel(level)


def _global_arrays(seed: int = 0) -> ArrayRecord:
    torch.manual_seed(seed)
    return ArrayRecord(build_model(ARCH, num_classes=10, in_channels=1).state_dict())


class Recorder:
    """A ClientApp that trains the micro net one SGD step on its own random data."""

    def __init__(self, mods: list) -> None:
        self.received: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self.trained: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self.app = ClientApp(mods=mods)
        self.app.train()(self._train)

    def _train(self, msg: Message, context: Context) -> Message:
        rnd = int(msg.content["config"]["server-round"])
        model = build_model(ARCH, num_classes=10, in_channels=1)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        self.received[(context.node_id, rnd)] = to_numpy(msg.content["arrays"])
        gen = torch.Generator().manual_seed(context.node_id)
        x, y = torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        train(model, x, y, TrainConfig(batch_size=16, lr=0.1), seed=rnd)
        self.trained[(context.node_id, rnd)] = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        metrics = MetricRecord({"train_loss": 1.0, "num-examples": 10 + context.node_id % 3})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def _grid(app: ClientApp, nodes: int = 3) -> InProcessGrid:
    return InProcessGrid(app, nodes, {"seed": 0})


def _round(strategy: FedAvg, grid, rnd: int, arrays: ArrayRecord) -> tuple[list[Message], ArrayRecord]:
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages))
    new_arrays, _ = strategy.aggregate_train(rnd, replies)
    return replies, new_arrays


def test_uplink_mod_encodes_the_update_and_carries_the_residual() -> None:
    rec = Recorder([make_uplink_mod()])
    grid = _grid(rec.app, nodes=1)
    codec = TopK(0.05)
    strategy = CompressedFedAvg(min_train_nodes=1, min_available_nodes=1, fraction_evaluate=0.0, uplink=codec)
    arrays = _global_arrays()
    node = next(iter(grid.get_node_ids()))
    residuals = []
    with serverapp_identity(1):
        for rnd in (1, 2):
            replies, arrays = _round(strategy, grid, rnd, arrays)
            (reply,) = replies
            assert not reply.has_error()
            # after FedAvg the batch-norm counters are float64: raw either way
            assert set(reply.content["arrays"]) in ({"topk.values", "topk.gaps", "raw.int64"},
                                                    {"topk.values", "topk.gaps", "raw.float64"})
            assert reply.content[COMPRESSION_RECORD]["uplink-codec"] == "topk"
            full = ArrayRecord({k: torch.from_numpy(v) for k, v in rec.trained[(node, rnd)].items()})
            assert reply.content["arrays"].count_bytes() < full.count_bytes() / 10
            residual = to_numpy(grid.context(node).state[UPLINK_RESIDUAL])
            # error feedback: what was sent plus the new residual is the update plus the old residual
            base = rec.received[(node, rnd)]
            layout = Layout.of(base)
            sent = codec.decode(to_numpy(reply.content["arrays"]), layout)
            for s in layout.coded:
                meant = rec.trained[(node, rnd)][s.name].astype(np.float64) - base[s.name]
                if residuals:
                    meant += residuals[-1][s.name]
                np.testing.assert_allclose(sent[s.name] + residual[s.name], meant, atol=1e-6)
            residuals.append(residual)
    assert any(not np.array_equal(residuals[0][k], residuals[1][k]) for k in residuals[0])


def test_strategy_aggregate_is_fedavg_of_the_decoded_models() -> None:
    rec = Recorder([make_uplink_mod()])
    grid = _grid(rec.app)
    codec = Quantize(bits=4)
    strategy = CompressedFedAvg(fraction_evaluate=0.0, uplink=codec)
    arrays = _global_arrays()
    base = to_numpy(arrays)
    with serverapp_identity(1):
        replies, aggregate = _round(strategy, grid, 1, arrays)
        assert len(replies) == 3 and not any(r.has_error() for r in replies)
        layout = Layout.of(base)
        decoded, weights = [], []
        for r in replies:
            node = r.metadata.src_node_id
            assert r.content["arrays"].count_bytes() < 0.25 * ArrayRecord(
                {k: torch.from_numpy(v) for k, v in rec.trained[(node, 1)].items()}).count_bytes()
            update = codec.decode(to_numpy(r.content["arrays"]), layout)
            model = {k: base[k] + update[k] if k in {s.name for s in layout.coded} else update[k] for k in base}
            # the decoded model is the trained one up to rounding
            for s in layout.coded:
                assert np.abs(model[s.name] - rec.trained[(node, 1)][s.name]).max() < 0.1
            decoded.append(model)
            weights.append(r.content["metrics"]["num-examples"])
        # the same replies carrying the decoded full models, averaged by plain FedAvg
        full_replies = [
            Message(metadata=r.metadata, content=RecordDict({"arrays": ArrayRecord({k: torch.from_numpy(np.asarray(v))
                    for k, v in d.items()}), "metrics": r.content["metrics"]}))
            for r, d in zip(replies, decoded)
        ]
        expected, _ = FedAvg(fraction_evaluate=0.0).aggregate_train(1, full_replies)
    got = to_numpy(aggregate)
    total = sum(weights)
    for k, v in to_numpy(expected).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
        by_hand = sum(np.asarray(d[k], dtype=np.float64) * w / total for d, w in zip(decoded, weights))
        np.testing.assert_allclose(got[k], by_hand, rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("strategy_cls", [FedAvg, FedProx, FedAdam])
def test_downlink_deltas_keep_clients_in_sync_and_cost_less(strategy_cls) -> None:
    rec = Recorder([make_downlink_mod(), make_uplink_mod()])
    inner = _grid(rec.app)
    grid = CountingGrid(inner)
    strategy = compressed(strategy_cls)(fraction_evaluate=0.0, uplink=Quantize(bits=8), downlink=Quantize(bits=8))
    with serverapp_identity(1):
        result = strategy.start(grid=grid, initial_arrays=_global_arrays(), num_rounds=3)
    assert result.arrays is not None
    down = [e.download_bytes for e in grid.traffic.exchanges]
    assert len(down) == 3 and down[1] < down[0] / 3 and down[2] == down[1]  # deltas after the full first round
    reference = strategy.downlink.reference
    for node in inner.get_node_ids():
        held = to_numpy(inner.context(node).state["fednas-downlink-model"])
        assert all(np.array_equal(held[k].ravel(), reference[k].ravel()) for k in reference)
        seen = rec.received[(node, 3)]  # what the app trained from in the last round
        assert all(np.array_equal(seen[k].ravel(), reference[k].ravel()) for k in reference)


def test_a_node_out_of_sync_fails_once_then_gets_full_precision() -> None:
    rec = Recorder([make_downlink_mod(), make_uplink_mod()])
    grid = _grid(rec.app)
    strategy = CompressedFedAvg(fraction_evaluate=0.0, downlink=Quantize(bits=4))
    arrays = _global_arrays()
    lost = 1002
    with serverapp_identity(1):
        _, arrays = _round(strategy, grid, 1, arrays)
        del grid.context(lost).state["fednas-downlink"]  # e.g. the node restarted
        replies, arrays = _round(strategy, grid, 2, arrays)
        failed = [r for r in replies if r.has_error()]
        assert [r.metadata.src_node_id for r in failed] == [lost] and "DownlinkOutOfSync" in failed[0].error.reason
        assert arrays is not None  # the other two were aggregated
        messages = {m.metadata.dst_node_id: m for m in strategy.configure_train(3, arrays, ConfigRecord(), grid)}
        assert "downlink-base" not in messages[lost].content["config"]
        assert "downlink-base" in messages[1001].content["config"]
        replies = list(grid.send_and_receive(messages.values()))
        assert not any(r.has_error() for r in replies)


def test_messages_without_codec_keys_pass_through_untouched() -> None:
    rec = Recorder([make_downlink_mod(), make_uplink_mod()])
    grid = _grid(rec.app, nodes=1)
    arrays = _global_arrays()
    with serverapp_identity(1):
        (reply,) = _round(FedAvg(min_train_nodes=1, min_available_nodes=1, fraction_evaluate=0.0), grid, 1, arrays)[0]
    node = reply.metadata.src_node_id
    assert COMPRESSION_RECORD not in reply.content
    assert set(reply.content["arrays"]) == set(rec.trained[(node, 1)])
    assert not grid.context(node).state  # nothing stored
