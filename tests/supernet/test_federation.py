"""Federated supernet training: per-element averaging, tiers' budgets, resumed rounds, bytes per tier."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fednas.config import load_config
from fednas.cost import count_macs, count_params
from fednas.fl import RunSpec, SubnetEvaluator, run_supernet, supernet_section
from fednas.fl._grid import InProcessGrid
from fednas.supernet import SliceAverage, Supernet, assign_tiers
from fednas.config import Tier
from search_spaces import MobileNetArch, Stage, arch_from_json, build_model

TIERS = "federation.tiers=[{name='small', share=0.34, max_macs=45000}, {name='big', share=0.66}]"


def _arch(channels: int, depth: int, kernel: int, expansion: float = 2) -> MobileNetArch:
    return MobileNetArch(stem_channels=8, stages=(Stage(channels=channels, depth=depth, stride=2, expansion=expansion,
                                                        kernel=kernel, se=False, activation="relu6"),))


def test_aggregation_averages_each_element_over_the_subnets_that_held_it() -> None:
    sup = Supernet.initial(_arch(16, 2, 5), num_classes=4, in_channels=1, seed=0)
    before = {k: v.copy() for k, v in sup.state.items()}
    small, large = _arch(8, 1, 3), _arch(16, 2, 5)
    avg = SliceAverage(sup)
    avg.add(small, {k: np.full_like(v, 1) for k, v in sup.extract(small).items()}, weight=1)
    avg.add(large, {k: np.full_like(v, 3) for k, v in sup.extract(large).items()}, weight=3)
    avg.apply()
    w = sup.state["blocks.0.block.1.0.weight"]  # depthwise of block 0: [hidden, 1, 5, 5]
    hidden_small = 16  # make_divisible(8 * 2)
    # held by both: (1*1 + 3*3) / 4; held by the large one only (outer ring of the 5x5, wider channels): 3
    assert np.allclose(w[:hidden_small, :, 1:4, 1:4], 2.5)
    assert np.allclose(w[:hidden_small, :, 0, :], 3.0)
    assert np.allclose(w[hidden_small:], 3.0)
    # the second block belongs to the large subnet only
    assert np.allclose(sup.state["blocks.1.block.0.0.weight"], 3.0)
    # batch-norm counters take the largest value sent
    assert sup.state["stem.1.num_batches_tracked"] == 3
    # nothing else was touched: a third subnet that holds nothing new leaves the rest alone
    avg = SliceAverage(sup)
    avg.add(small, {k: np.full_like(v, 7) for k, v in sup.extract(small).items()}, weight=1)
    avg.apply()
    assert np.allclose(sup.state["blocks.1.block.0.0.weight"], 3.0)
    assert not np.allclose(before["blocks.1.block.0.0.weight"], 3.0)


def test_aggregation_refuses_a_reply_that_does_not_fit_its_subnet() -> None:
    sup = Supernet.initial(_arch(16, 2, 5), num_classes=4, in_channels=1, seed=0)
    small = _arch(8, 1, 3)
    arrays = sup.extract(small)
    avg = SliceAverage(sup)
    bad = dict(arrays, **{"stem.0.weight": np.zeros((3, 1, 3, 3), np.float32)})
    with pytest.raises(ValueError, match="stem.0.weight"):
        avg.add(small, bad, weight=1)
    with pytest.raises(ValueError, match="missing"):
        avg.add(small, {k: v for k, v in arrays.items() if k != "stem.0.weight"}, weight=1)


def test_tiers_split_nodes_by_share() -> None:
    tiers = (Tier("a", 0.25), Tier("b", 0.75))
    out = assign_tiers([1004, 1001, 1003, 1002], tiers)
    assert [out[n].name for n in (1001, 1002, 1003, 1004)] == ["a", "b", "b", "b"]


def _spec(tmp_path, *overrides: str) -> RunSpec:
    path = tmp_path / "tiny.toml"
    from tests.conftest import TINY_STUDY

    path.write_text(TINY_STUDY)
    cfg = load_config(path, ["study.mode='supernet'", "supernet.eval_every=2", *overrides])
    return RunSpec(cfg.data, cfg.federation, cfg.study.seed, {}, supernet=supernet_section(cfg))


def test_a_node_never_receives_a_subnet_over_its_tier_budget(tmp_path, monkeypatch) -> None:
    spec = _spec(tmp_path, "supernet.rounds=4", TIERS)
    seen: list[tuple[int, str, str]] = []
    deliver = InProcessGrid._deliver

    def spy(self, msg):
        seen.append((msg.metadata.dst_node_id, msg.metadata.message_type, str(msg.content["config"]["arch"])))
        return deliver(self, msg)

    monkeypatch.setattr(InProcessGrid, "_deliver", spy)
    out = run_supernet(spec)
    tiers = assign_tiers([1001, 1002, 1003], spec.federation.tier_list())
    assert [tiers[n].name for n in (1001, 1002, 1003)] == ["small", "big", "big"]
    small_macs = set()
    for node, kind, arch_json in seen:
        arch = arch_from_json(arch_json)
        model = build_model(arch, num_classes=10, in_channels=1)
        macs, params = count_macs(model, in_channels=1, resolution=28), count_params(model)
        assert tiers[node].admits(macs, params), (node, kind, macs)
        if tiers[node].name == "small":
            small_macs.add(macs)
    assert len([s for s in seen if s[1] == "train"]) == 4 * 3
    assert max(small_macs) <= 45000
    # the small tier's node moves fewer bytes than a big one, measured per message
    r = out.rounds[0].bytes_by_tier
    assert r["small"]["download_bytes"] < r["big"]["download_bytes"] / 2 * 1.0 + r["big"]["download_bytes"]
    per_node_small = r["small"]["download_bytes"]
    per_node_big = r["big"]["download_bytes"] / 2
    assert per_node_small < per_node_big
    # batch-norm pooling for a subnet too big for the small tier asks the big tier only
    with SubnetEvaluator(spec, out.supernet) as ev:
        assert ev.nodes(10**6, 10**6) == [1002, 1003]
        assert ev.nodes(1000, 10) == [1001, 1002, 1003]


def test_resumed_supernet_training_equals_the_uninterrupted_run(tmp_path) -> None:
    spec = _spec(tmp_path, "supernet.rounds=3")
    full = run_supernet(spec)
    checkpoints = []
    run_supernet(spec, on_round=lambda r, s: checkpoints.append((s.copy(), r)) if r.round == 1 else None)
    sup, first = checkpoints[0]
    resumed = run_supernet(spec, start=(sup, [first]))
    assert [r.round for r in resumed.rounds] == [1, 2, 3]
    for k, v in full.supernet.state.items():
        np.testing.assert_array_equal(v, resumed.supernet.state[k], err_msg=k)
    assert resumed.rounds[-1].accuracy_largest == full.rounds[-1].accuracy_largest
    assert json.dumps(resumed.rounds[-1].bytes_by_tier) == json.dumps(full.rounds[-1].bytes_by_tier)


def test_inplace_distillation_runs_on_the_nodes_and_changes_the_supernet(tmp_path, monkeypatch) -> None:
    plain = run_supernet(_spec(tmp_path, "supernet.rounds=2"))
    seen: list[str] = []
    deliver = InProcessGrid._deliver

    def spy(self, msg):
        if msg.metadata.message_type == "train":
            seen.append(str(msg.content["config"].get("inplace-kd-arch", "")))
        return deliver(self, msg)

    monkeypatch.setattr(InProcessGrid, "_deliver", spy)
    spec = _spec(tmp_path, "supernet.rounds=2", "supernet.distill=true")
    distilled = run_supernet(spec)
    assert len(seen) == 6 and sum(bool(s) for s in seen) == 4  # the node given the smallest subnet has no inner one
    assert len({s for s in seen if s}) == 1
    key = "stem.0.weight"
    assert not np.allclose(plain.supernet.state[key], distilled.supernet.state[key])
