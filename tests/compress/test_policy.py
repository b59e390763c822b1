"""Compression policies: greedy and dynamic-programming bit allocation under a byte budget."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from fednas.compress import (allocate_bits, dp_allocation, greedy_allocation, layer_costs, layer_sensitivity,
                             quantize_weights, weight_plan)
from search_spaces import build_model, preset


def _instance(seed: int, layers: int = 4, widths=(32, 8, 6, 4)):
    rng = random.Random(seed)
    costs, sens = {}, {}
    for i in range(layers):
        n = rng.randint(10, 60)
        costs[f"l{i}"] = {b: n * b // 8 + rng.randint(0, 3) for b in widths}
        s = sorted(rng.random() * rng.choice([0.1, 1, 10]) for _ in widths)  # narrower: more sensitive
        sens[f"l{i}"] = {b: (0.0 if b == 32 else s[k]) for k, b in enumerate(sorted(widths, reverse=True))}
    return costs, sens


def _brute(costs, sens, budget):
    names = sorted(costs)
    best = None
    for pick in itertools.product(*[sorted(costs[n]) for n in names]):
        cost = sum(costs[n][b] for n, b in zip(names, pick))
        if cost <= budget:
            s = sum(sens[n][b] for n, b in zip(names, pick))
            best = s if best is None or s < best else best
    return best


@pytest.mark.parametrize("seed", range(8))
def test_dp_is_optimal_on_tiny_instances_and_greedy_fits(seed: int) -> None:
    costs, sens = _instance(seed)
    widest = sum(max(c.values()) for c in costs.values())
    narrowest = sum(min(c.values()) for c in costs.values())
    for budget in (narrowest, (narrowest + widest) // 2, widest - 1, widest):
        plan = dp_allocation(costs, sens, budget)
        assert sum(costs[n][b] for n, b in plan.items()) <= budget
        assert sum(sens[n][b] for n, b in plan.items()) == pytest.approx(_brute(costs, sens, budget))
        g = greedy_allocation(costs, sens, budget)
        assert sum(costs[n][b] for n, b in g.items()) <= budget
        assert sum(sens[n][b] for n, b in g.items()) >= sum(sens[n][b] for n, b in plan.items()) - 1e-12


def test_coarse_resolution_still_fits_and_infeasible_budgets_are_named() -> None:
    costs, sens = _instance(3, layers=6)
    budget = sum(max(c.values()) for c in costs.values()) * 0.6
    plan = dp_allocation(costs, sens, budget, resolution=7)
    assert sum(costs[n][b] for n, b in plan.items()) <= budget
    narrowest = sum(min(c.values()) for c in costs.values())
    for fn in (dp_allocation, greedy_allocation):
        with pytest.raises(ValueError, match="below the smallest allocation"):
            fn(costs, sens, narrowest - 1)
    with pytest.raises(ValueError, match="same layers"):
        dp_allocation(costs, {"x": {8: 0.0}}, budget)


def test_costs_are_the_packed_bytes_and_sensitivity_grows_as_widths_narrow() -> None:
    torch.manual_seed(0)
    model = build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1).eval()
    costs = layer_costs(model)
    for bits in (32, 16, 8, 4):
        plan = weight_plan(model, None, bits)
        packed = quantize_weights(model, plan)[1]
        assert sum(costs[n][bits] for n in plan) == sum(len(t["data"]) + len(t.get("scales", b""))
                                                         for t in packed.tensors.values())
    x = torch.randn(64, 1, 28, 28)
    sens = layer_sensitivity(model, x, widths=(32, 8, 4))
    assert all(s[32] == 0.0 for s in sens.values())
    assert sum(s[4] for s in sens.values()) > sum(s[8] for s in sens.values()) > 0


def test_allocate_bits_meets_the_budget_on_a_model() -> None:
    torch.manual_seed(0)
    model = build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1).eval()
    x = torch.randn(64, 1, 28, 28)
    costs = layer_costs(model)
    budget = 0.2 * sum(c[32] for c in costs.values())
    for policy in ("greedy", "dp"):
        plan = allocate_bits(model, policy, budget, x)
        assert set(plan) == set(costs) and sum(costs[n][b] for n, b in plan.items()) <= budget
    narrowest = sum(min(c.values()) for c in costs.values())  # just fits: found at the exact 1-byte resolution
    assert set(allocate_bits(model, "dp", narrowest, x).values()) == {4}
    with pytest.raises(ValueError, match="policy"):
        allocate_bits(model, "uniform", budget, x)


def _tiny() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    arch = preset("mobilenet_tiny")
    return build_model(arch, num_classes=10, in_channels=1).eval(), arch


def test_policy_plan_spends_the_uniform_budget_with_no_more_total_sensitivity() -> None:
    from fednas.compress import POLICY_WIDTHS, policy_plan

    model, arch = _tiny()
    x = torch.randn(64, 1, 28, 28)
    uniform = policy_plan(model, arch, 4, (), "uniform")
    assert uniform.plan == weight_plan(model, arch, 4) and uniform.spent == uniform.budget
    costs = layer_costs(model, (4, *POLICY_WIDTHS))
    assert uniform.budget == sum(costs[n][4] for n in uniform.plan)
    sens = layer_sensitivity(model, x, (4, *POLICY_WIDTHS))
    plans = {"uniform": uniform, **{name: policy_plan(model, arch, 4, (), name, x) for name in ("greedy", "dp")}}
    total = {name: sum(sens[k][b] for k, b in p.plan.items()) for name, p in plans.items()}
    for name in ("greedy", "dp"):
        chosen = plans[name]
        assert chosen.policy == name and set(chosen.plan) == set(uniform.plan)
        assert set(chosen.plan.values()) <= set(POLICY_WIDTHS)
        assert chosen.spent == sum(costs[n][b] for n, b in chosen.plan.items()) <= chosen.budget == uniform.budget
    # the uniform plan fits the same budget, so the knapsack's optimum is at most its sensitivity
    assert total["dp"] <= total["uniform"] + 1e-12 and total["dp"] <= total["greedy"] + 1e-12
    assert total["dp"] < total["uniform"]  # and here strictly: layers are not equally sensitive per byte


def test_policy_plan_leaves_float32_weights_and_needs_a_batch_otherwise() -> None:
    from fednas.compress import policy_plan

    model, arch = _tiny()
    assert set(policy_plan(model, arch, 32, (), "dp").plan.values()) == {32}
    with pytest.raises(ValueError, match="calibration batch"):
        policy_plan(model, arch, 8, (), "greedy")
    with pytest.raises(ValueError, match="compression_policy: expected one of"):
        policy_plan(model, arch, 8, (), "knapsack")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: p.pop(next(iter(p))), "missing"),
    (lambda p: p.update({"nope.weight": 8}), "unknown"),
    (lambda p: p.update({next(iter(p)): 5}), "expected bits"),
    (lambda p: p.update({next(iter(p)): True}), "expected bits"),
])
def test_a_stored_plan_is_checked_against_the_model(edit, message: str) -> None:
    from fednas.compress import check_plan

    model, arch = _tiny()
    plan = weight_plan(model, arch, 8)
    assert check_plan(model, dict(plan), "here") == plan
    edit(plan)
    with pytest.raises(ValueError, match=f"^here: .*{message}"):
        check_plan(model, plan, "here")
    with pytest.raises(ValueError, match="^here: expected a mapping"):
        check_plan(model, [1, 2], "here")
