"""Compression policies: how many bits each layer gets under a byte budget, chosen from per-layer sensitivity.

A uniform policy gives every conv and linear weight the same width (``weight_bits``). Layers
differ in how much the loss minds their quantization and in how many bytes they hold, so a
budget is better spent unevenly. Both policies here take, per layer and per width of
``PRECISIONS``, a **cost** (the layer's packed bytes at that width, exactly as
``quantize_weights`` stores them) and a **sensitivity** (``layer_sensitivity``: the KL divergence
of the output distribution from the float model's on a calibration batch when that layer
alone is quantized to that width, the rest kept float; the additive model of mixed-precision
search, as in HAQ's and HAWQ's budgets), and return a width per layer whose total cost fits the budget:

* ``greedy_allocation`` (NetAdapt-style): start every layer at its widest option; while over
  budget, lower by one step the layer whose step costs the least added sensitivity per byte
  saved. Fast, not optimal.
* ``dp_allocation``: the multiple-choice knapsack solved by dynamic programming over the
  budget in units of ``resolution`` bytes (costs rounded *up* to units, so every answer
  fits the real budget): the least total sensitivity among all allocations that fit.
  Optimal for the additive model at unit resolution (tested against brute force).

``allocate_bits`` puts it together for a model: sensitivities, costs, the policy's
allocation, returned as a ``weight_plan``-style ``{weight name: bits}``. A coarse DP
resolution loses up to one unit per layer to rounding, so a budget that only just fits may be
refused at it (1 byte is exact).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fednas.compress._precision import PRECISIONS, _quantize, _weights, weight_plan
from search_spaces.compression import COMPRESSION_POLICIES

__all__ = ["POLICIES", "POLICY_SAMPLES", "POLICY_WIDTHS", "PolicyPlan", "allocate_bits", "check_plan",
           "dp_allocation", "greedy_allocation", "layer_costs", "layer_sensitivity", "policy_plan"]

POLICIES = COMPRESSION_POLICIES
POLICY_WIDTHS = (16, 8, 6, 4, 3, 2)  # the widths a greedy/DP policy may give a layer
POLICY_SAMPLES = 512  # training images the sensitivities are measured on (the first ones, as int8 calibrates)

Table = Mapping[str, Mapping[int, float]]  # layer -> {bits: value}


def _check(costs: Table, sensitivity: Table) -> None:
    if set(costs) != set(sensitivity):
        raise ValueError("costs and sensitivity must name the same layers")
    for name in costs:
        if not costs[name] or set(costs[name]) != set(sensitivity[name]):
            raise ValueError(f"layer {name!r}: costs and sensitivity must give the same non-empty options")


def _infeasible(costs: Table, budget: float) -> ValueError:
    least = sum(min(c.values()) for c in costs.values())
    return ValueError(f"budget {budget:,.0f} B is below the smallest allocation ({least:,.0f} B, every layer at its "
                      "narrowest width)")


def greedy_allocation(costs: Table, sensitivity: Table, budget: float) -> dict[str, int]:
    """Every layer at its widest option, then one step narrower at a time, least added sensitivity per byte first.

    Raises:
        ValueError: the budget is below every layer at its narrowest option, or mismatched tables.
    """
    _check(costs, sensitivity)
    order = {n: sorted(costs[n], key=lambda b: -costs[n][b]) for n in costs}  # widest (costliest) first
    pick = {n: 0 for n in costs}
    total = sum(costs[n][order[n][0]] for n in costs)
    while total > budget:
        best, best_rate = None, math.inf
        for n in sorted(costs):
            i = pick[n]
            if i + 1 >= len(order[n]):
                continue
            now, nxt = order[n][i], order[n][i + 1]
            saved = costs[n][now] - costs[n][nxt]
            added = max(sensitivity[n][nxt] - sensitivity[n][now], 0.0)
            rate = added / saved if saved > 0 else math.inf
            if rate < best_rate:
                best, best_rate = n, rate
        if best is None:
            raise _infeasible(costs, budget)
        i = pick[best]
        total -= costs[best][order[best][i]] - costs[best][order[best][i + 1]]
        pick[best] = i + 1
    return {n: order[n][pick[n]] for n in costs}


def dp_allocation(costs: Table, sensitivity: Table, budget: float, *, resolution: float = 1.0) -> dict[str, int]:
    """The allocation of least total sensitivity whose cost fits ``budget`` (multiple-choice knapsack, DP).

    ``resolution``: bytes per budget unit; each option's cost is rounded up to whole units, so
    the answer always fits and is optimal among allocations that fit after rounding (exactly
    optimal at 1 byte for integer costs). Time and memory: layers x options x budget/resolution (NumPy
    vectors over the budget, one per layer and option).

    Raises:
        ValueError: no allocation fits, mismatched tables, or a resolution that is not positive.
    """
    _check(costs, sensitivity)
    if not resolution > 0:
        raise ValueError(f"resolution: expected bytes > 0, got {resolution!r}")
    units = int(math.floor(budget / resolution + 1e-9))
    if units < 0:
        raise _infeasible(costs, budget)
    if max(len(c) for c in costs.values()) > 127:  # choices are stored as int8
        raise ValueError("dp_allocation: at most 127 options per layer")
    if units > 50_000_000 // max(len(costs), 1):
        raise ValueError(f"budget {budget:,.0f} B in units of {resolution:g} B is too fine for the DP table; "
                         "raise resolution")
    names = sorted(costs)
    best = np.zeros(units + 1)  # best[u]: least sensitivity of the layers so far within u units
    choices: list[np.ndarray] = []
    layer_opts: list[list[tuple[int, int, float]]] = []  # per layer: (bits, cost in units, sensitivity)
    for n in names:
        opts = [(b, int(math.ceil(costs[n][b] / resolution - 1e-9)), float(sensitivity[n][b])) for b in costs[n]]
        layer_opts.append(opts)
        new, arg = np.full(units + 1, np.inf), np.full(units + 1, -1, dtype=np.int8)
        for k, (_, c, s) in enumerate(opts):  # option k at every budget u >= c: best[u - c] + s
            if c > units:
                continue
            cand = np.full(units + 1, np.inf)
            cand[c:] = best[: units + 1 - c] + s
            better = cand < new  # strict: the first option wins ties, as a scan in option order would
            new[better], arg[better] = cand[better], k
        best = new
        choices.append(arg)
    if not np.isfinite(best[units]):
        raise _infeasible(costs, budget)
    out: dict[str, int] = {}
    u = units
    for idx in range(len(names) - 1, -1, -1):
        bits, cost, _ = layer_opts[idx][int(choices[idx][u])]
        out[names[idx]] = bits
        u -= cost
    return {n: out[n] for n in names}


def layer_costs(model: nn.Module, widths: Sequence[int] = PRECISIONS) -> dict[str, dict[int, float]]:
    """Per conv/linear weight and width, its packed bytes (codes + float16 scales), as ``quantize_weights`` stores."""
    out: dict[str, dict[int, float]] = {}
    params = dict(model.named_parameters())
    for name in _weights(model):
        w = params[name]
        out[name] = {}
        for b in widths:
            record = _quantize(w, int(b))[1]
            out[name][int(b)] = float(len(record["data"]) + len(record.get("scales", b"")))
    return out


@torch.no_grad()
def layer_sensitivity(model: nn.Module, x: torch.Tensor,
                      widths: Sequence[int] = PRECISIONS) -> dict[str, dict[int, float]]:
    """Per conv/linear weight and width: ``KL(p_float || p_quantized)`` of the model's output distribution on
    ``x`` (batch mean) with only that weight quantized (float32: 0).

    The divergence from the float model's own outputs, not the change of the loss on labels: a loss
    difference on a batch is often ~0 or negative for one layer, which made 2- and 3-bit layers look free
    (measured: with it, both policies lost to uniform widths; with this, they win at the 4-bit budget).
    """
    model = model.eval()
    params = dict(model.named_parameters())
    # the divergence in float64 from the float32 logits: at 8 bits it can be ~1e-13, far below the
    # ~1e-8 that float32 log-probabilities resolve (their rounding ranked 4 bits below 8 on one machine)
    ref = torch.log_softmax(model(x).double(), dim=1)
    out: dict[str, dict[int, float]] = {}
    for name in _weights(model):
        w = params[name]
        keep = w.detach().clone()
        out[name] = {}
        for b in widths:
            if int(b) == 32:
                out[name][32] = 0.0
                continue
            w.copy_(_quantize(keep, int(b))[0])
            logp = torch.log_softmax(model(x).double(), dim=1)
            out[name][int(b)] = max(float(nn.functional.kl_div(logp, ref, log_target=True, reduction="batchmean")), 0.0)
            w.copy_(keep)
    return out


def allocate_bits(model: nn.Module, policy: str, budget: float, x: torch.Tensor, *,
                  widths: Sequence[int] = PRECISIONS, resolution: float | None = None,
                  costs: Table | None = None) -> dict[str, int]:
    """A width per conv/linear weight of ``model`` whose packed weights take at most ``budget`` bytes.

    ``budget`` counts the planned weights only (codes and scales; biases and norms are the same
    under every plan). ``policy``: "greedy" or "dp" (``resolution`` default: 1 byte, exact, up to
    a 200 kB budget; budget / 200000 above). The sensitivities come from ``x``, a calibration batch
    of training images. ``costs``: ``layer_costs(model, ...)`` already measured for at least
    ``widths`` (measured here when None).

    Raises:
        ValueError: an unknown policy, or a budget nothing fits.
    """
    if policy not in ("greedy", "dp"):
        raise ValueError(f"policy: expected 'greedy' or 'dp', got {policy!r}")
    if costs is None:
        costs = layer_costs(model, widths)
    else:
        costs = {n: {int(b): c[int(b)] for b in widths} for n, c in costs.items()}
    sens = layer_sensitivity(model, x, widths)
    if policy == "greedy":
        return greedy_allocation(costs, sens, budget)
    return dp_allocation(costs, sens, budget, resolution=resolution or max(budget / 200_000, 1.0))


@dataclass(frozen=True)
class PolicyPlan:
    """A trial's per-layer weight widths and how they were chosen.

    Attributes:
        plan: weight name -> bits (``quantize_weights``'s plan).
        policy: "uniform", "greedy" or "dp".
        budget: packed bytes of the uniform plan of the same labels (the policy's budget).
        spent: packed bytes of ``plan``'s planned weights (<= ``budget``).
    """

    plan: dict[str, int]
    policy: str
    budget: float
    spent: float

    def to_dict(self) -> dict[str, object]:
        return {"policy": self.policy, "budget": self.budget, "spent": self.spent, "plan": dict(self.plan)}


def policy_plan(model: nn.Module, arch: object, weight_bits: int, stage_bits: tuple[int, ...], policy: str,
                x: torch.Tensor | None = None, *, widths: Sequence[int] = POLICY_WIDTHS) -> PolicyPlan:
    """The widths a trial's labels give ``model``'s weights.

    "uniform": ``weight_plan(model, arch, weight_bits, stage_bits)``. "greedy" / "dp": that plan's
    packed bytes are the budget and ``allocate_bits`` spends them by sensitivity on ``x`` (a
    calibration batch of training images), every layer choosing from ``widths``; weights that stay
    float32 under the labels (nothing below 32 bits) are left so, whatever the policy.

    Raises:
        ValueError: an unknown policy or width (the message names it), or no calibration batch.
    """
    if policy not in POLICIES:
        raise ValueError(f"compression_policy: expected one of {list(POLICIES)}, got {policy!r}")
    uniform = weight_plan(model, arch, weight_bits, stage_bits)
    costs = layer_costs(model, sorted({*uniform.values(), *widths}, reverse=True))
    budget = float(sum(costs[n][b] for n, b in uniform.items()))
    if policy == "uniform" or all(b == 32 for b in uniform.values()):
        return PolicyPlan(uniform, "uniform" if policy == "uniform" else policy, budget, budget)
    if x is None or len(x) == 0:
        raise ValueError(f"compression_policy {policy!r}: needs a calibration batch of training images")
    plan = allocate_bits(model, policy, budget, x, widths=widths, costs=costs)
    return PolicyPlan(plan, policy, budget, float(sum(costs[n][b] for n, b in plan.items())))


def check_plan(model: nn.Module, plan: object, where: str) -> dict[str, int]:
    """``plan`` (read from a file or a trial) as ``{weight name: bits}``, checked against ``model``'s weights.

    Raises:
        ValueError: not a mapping of exactly the model's conv/linear weights to widths in 2..32;
            the message starts with ``where``.
    """
    names = set(_weights(model))
    if not isinstance(plan, Mapping):
        raise ValueError(f"{where}: expected a mapping of weight names to bits, got {type(plan).__name__}")
    if set(plan) != names:
        extra, missing = sorted(set(plan) - names), sorted(names - set(plan))
        raise ValueError(f"{where}: the plan does not name the model's weights (unknown {extra[:3]}, missing "
                         f"{missing[:3]})")
    out: dict[str, int] = {}
    for name, bits in plan.items():
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (*PRECISIONS, *POLICY_WIDTHS):
            raise ValueError(f"{where}: {name}: expected bits in {sorted({*PRECISIONS, *POLICY_WIDTHS})}, got {bits!r}")
        out[str(name)] = int(bits)
    return out
