"""Pruning granularities beyond channels: single weights, hidden neurons, whole blocks; unit and federated."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from fednas import compress as C
from fednas.config import DataConfig, FederationConfig
from fednas.fl import RunSpec, run_federation
from search_spaces import CompressionSettings, build_model, preset

X = torch.zeros(2, 1, 28, 28)


def _arch(depths: tuple[int, ...] = (1, 3, 2), hidden: int = 0):
    base = preset("mobilenet_tiny")
    stages = tuple(dataclasses.replace(s, depth=d) for s, d in zip(base.stages, depths))
    return dataclasses.replace(base, stages=stages, classifier_hidden=hidden)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _conv_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(c.weight.shape) for c in model.modules() if isinstance(c, nn.Conv2d)]


def _model(arch, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, num_classes=10, in_channels=1).eval()


# --------------------------------------------------------------------------- weights


def test_weight_masks_remove_the_smallest_share_of_each_layer_but_the_classifier() -> None:
    model = _model(_arch())
    masks = C.weight_masks(model, 0.6)
    classifier = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert f"{classifier}.weight" not in masks and masks
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        w = params[name].detach().abs()
        assert int((~keep).sum()) == round(0.6 * w.numel())
        if (~keep).any() and keep.any():
            assert w[~keep].max() <= w[keep].min()  # by magnitude
    C.apply_weight_masks(model, masks)
    assert all(int((params[n] == 0).sum()) >= int((~k).sum()) for n, k in masks.items())
    with pytest.raises(ValueError, match="magnitude"):
        C.weight_masks(model, 0.5, method="fpgm")
    with pytest.raises(ValueError, match="does not fit"):
        C.apply_weight_masks(model, {next(iter(masks)): torch.ones(3, dtype=torch.bool)})


def test_keep_zeros_holds_zeros_through_momentum_and_weight_decay() -> None:
    model = _model(_arch()).train()
    C.apply_weight_masks(model, C.weight_masks(model, 0.5))
    zeros = {n: (p == 0).clone() for n, p in model.named_parameters() if p.dim() > 1}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with C.keep_zeros(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 10, (8,))).backward()
            opt.step()
    assert set(model.state_dict()) == set(_model(_arch()).state_dict())  # plain keys again
    params = dict(model.named_parameters())
    for n, z in zeros.items():
        assert torch.all(params[n][z] == 0), n
    assert any(not torch.equal(params[n], before[n]) for n in zeros)  # the rest did train


def test_sparse_saving_is_the_bitmap_encoding_where_smaller() -> None:
    w = torch.zeros(64)
    w[:16] = 1.0  # 48 of 64 zero
    assert C.sparse_saving({"w": w}, 8) == 64 - (8 + 16)
    assert C.sparse_saving({"w": w}, 32) == 256 - (8 + 64)
    assert C.sparse_saving({"w": torch.ones(64)}, 8) == 0  # dense: no saving, never a cost
    assert C.sparse_saving({"a": w, "b": torch.ones(64)}, {"a": 4, "b": 4}) == 32 - (8 + 8)
    model = _model(_arch())
    C.apply_weight_masks(model, C.weight_masks(model, 0.5))
    assert 0.4 < C.sparsity_of(model) < 0.6


# --------------------------------------------------------------------------- neurons


def test_neuron_pruning_shrinks_only_the_hidden_linear() -> None:
    model = _model(_arch(hidden=32))
    pruned, masks = C.prune_channels_with_masks(model, 0.5, example_input=X, kinds=(nn.Linear,))
    assert list(masks) == ["classifier.0"] and int(masks["classifier.0"].sum()) == 16
    assert _conv_shapes(pruned) == _conv_shapes(model)
    assert pruned.classifier[0].out_features == 16 and pruned(X).shape == (2, 10)
    assert C.prune_channels_with_masks(_model(_arch()), 0.5, example_input=X, kinds=(nn.Linear,))[1] == {}


# --------------------------------------------------------------------------- blocks


def test_removable_blocks_and_the_architecture_they_leave() -> None:
    arch = _arch((1, 3, 2))
    assert C.removable_blocks(arch) == [2, 3, 5]
    assert [s.depth for s in C.reduced_arch(arch, [2, 5]).stages] == [1, 2, 1]
    with pytest.raises(ValueError, match="first blocks"):
        C.reduced_arch(arch, [1])  # stage 2's first block strides


def test_dropping_blocks_gives_the_smaller_member_of_the_family() -> None:
    arch = _arch((1, 3, 2))
    model = _model(arch)
    smaller = C.drop_blocks(model, [3])
    reduced = _model(C.reduced_arch(arch, [3]), seed=1)
    assert _shapes(smaller) == _shapes(reduced)
    reduced.load_state_dict(smaller.state_dict())
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(reduced(x), smaller(x))
    plan = C.block_plan([3])
    assert C.is_block_plan(plan) and not C.is_block_plan(C.encode_channel_masks({}))
    assert _shapes(C.apply_prune_plan(model, plan, X)) == _shapes(reduced)
    assert [s.depth for s in C.plan_arch(arch, plan).stages] == [1, 2, 2]
    assert C.plan_arch(arch, "") is arch


def test_a_block_whose_branch_is_silent_is_removed_first_and_removing_it_changes_nothing() -> None:
    arch = _arch((1, 3, 2))
    model = _model(arch)
    last_bn = [m for m in model.blocks[3].modules() if isinstance(m, nn.BatchNorm2d)][-1]
    with torch.no_grad():
        last_bn.weight.zero_()
        last_bn.bias.zero_()  # the residual branch outputs 0: block 3 is an identity
    for method in ("l1", "l2"):
        scores = C.block_scores(model, arch, method)
        assert set(scores) == {2, 3, 5} and scores[3] == 0.0 < min(scores[2], scores[5])
        assert C.choose_blocks(scores, 0.3) == [3]
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(C.drop_blocks(model, [3])(x), model(x), atol=1e-6)
    taylor = {"blocks.2.block.0.0": torch.tensor([1.0, 2.0]), "blocks.3.block.2.0": torch.tensor([0.5]),
              "blocks.5.block.1.0": torch.tensor([4.0])}
    assert C.block_scores(model, arch, "taylor", taylor) == {2: 3.0, 3: 0.5, 5: 4.0}


def test_choose_blocks_rounds_the_share_and_may_choose_none() -> None:
    scores = {2: 0.3, 3: 0.1, 5: 0.2}
    assert C.choose_blocks(scores, 0.1) == []  # 0.3 blocks rounds to 0
    assert C.choose_blocks(scores, 0.5) == [3, 5]  # 1.5 -> 2
    assert C.choose_blocks(scores, 0.9) == [2, 3, 5]
    assert C.choose_blocks({}, 0.5) == []


# --------------------------------------------------------------------------- in the federation


def _run(comp: CompressionSettings, arch, rounds: int = 3):
    spec = RunSpec(DataConfig(limit=240), FederationConfig(num_clients=3, rounds=rounds, batch_size=16), 0,
                   arch.to_dict(), comp)
    return run_federation(spec)


@pytest.mark.parametrize("uplink", ["none", "quantize"])
def test_a_federation_keeps_unstructured_sparsity_through_later_rounds(uplink: str) -> None:
    arch = _arch((1, 2, 1))
    comp = CompressionSettings(prune_method="l1", prune_granularity="weight", prune_sparsity=0.7, prune_round=1,
                               uplink_codec=uplink, uplink_bits=4)
    outcome = _run(comp, arch)
    assert outcome.pruned_round == 1 and outcome.prune_masks == ""  # no structure to rebuild
    model = _model(arch)
    model.load_state_dict(outcome.arrays.to_torch_state_dict())  # the shape is unchanged
    prunable = C.prunable_layers(model)
    for name, layer in prunable.items():
        zero = float((layer.weight == 0).float().mean())
        assert zero >= 0.69, (name, zero)  # two rounds after pruning, still 70 % zero
    assert all(float((m.weight == 0).float().mean()) < 0.01 for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n not in prunable)  # the classifier is not pruned
    assert 0.0 <= outcome.accuracy <= 1.0


def test_a_federation_removes_blocks_and_trains_the_smaller_network() -> None:
    arch = _arch((1, 3, 2))
    comp = CompressionSettings(prune_method="l1", prune_granularity="block", prune_sparsity=0.5, prune_round=1)
    outcome = _run(comp, arch)
    removed = json.loads(outcome.prune_masks)["#blocks"]
    assert len(removed) == 2 and set(removed) <= {2, 3, 5}  # 1.5 of 3 rounds to 2
    structure = C.apply_prune_plan(_model(arch), outcome.prune_masks, X)
    structure.load_state_dict(outcome.arrays.to_torch_state_dict())  # the clients trained this structure
    reduced = C.reduced_arch(arch, removed)
    assert sum(s.depth for s in reduced.stages) == 4
    assert outcome.rounds[1].upload_bytes < outcome.rounds[0].upload_bytes


def test_a_federation_prunes_neurons_of_the_hidden_linear() -> None:
    arch = _arch((1, 1, 1), hidden=32)
    comp = CompressionSettings(prune_method="l2", prune_granularity="neuron", prune_sparsity=0.5, prune_round=1)
    outcome = _run(comp, arch, rounds=2)
    state = outcome.arrays.to_torch_state_dict()
    assert state["classifier.0.weight"].shape[0] == 16
    full = _model(arch).state_dict()
    assert all(state[k].shape == full[k].shape for k in full if not k.startswith("classifier"))


def test_taylor_ranks_blocks_from_the_clients_scores() -> None:
    arch = _arch((1, 2, 1))
    comp = CompressionSettings(prune_method="taylor", prune_granularity="block", prune_sparsity=0.5, prune_round=1)
    outcome = _run(comp, arch, rounds=2)
    assert json.loads(outcome.prune_masks)["#blocks"] == [2]
    assert outcome.bytes_by_type["query.taylor_scores"]["upload_bytes"] > 0
