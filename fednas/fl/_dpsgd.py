"""Local differential privacy of each client's records: DP-SGD on the client with Opacus.

``[privacy] mode = "local"``: every client trains with DP-SGD (Abadi et al., 2016) through
Opacus's own ``GradSampleModule`` (per-example gradients) and ``DPOptimizer`` (each
example's gradient clipped to ``privacy.clipping_norm``, Gaussian noise of std
``noise_multiplier * clipping_norm`` added to their sum): each step samples its batch by
Poisson sampling at rate ``q = batch_size / shard size`` (what the accountant assumes), and
the noise is drawn from a generator seeded by the run seed, round and partition.

The guarantee is example-level (epsilon, delta)-DP of everything a client sends, against
the server and anyone after it, for each client's own records; it composes over every step
the client took in every round it was sampled. Each client keeps its history (noise, rate,
steps) in its node state and reports its epsilon (Opacus's RDP accountant) with every reply;
the run's epsilon is the largest any client reported. Opacus rejects batch norm, so the
family must use ``norm = "group"``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, Context

from fednas.train import TrainConfig, TrainingDiverged, TrainResult, on_device

__all__ = ["EPSILON_KEY", "local_epsilon", "train_dpsgd"]

EPSILON_KEY = "dp-epsilon"  # a local-DP reply's epsilon so far (its client's whole history)
STATE_KEY = "fednas-dpsgd"  # a node's DP-SGD history: noise multipliers, sample rates, steps


def local_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of DP-SGD steps ``[(noise multiplier, sample rate, steps), ...]`` (Opacus RDP)."""
    from opacus.accountants import RDPAccountant

    if not history or sum(s for _, _, s in history) == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(float(z), float(q), int(s)) for z, q, s in history if s]
    return float(accountant.get_epsilon(delta))


def train_dpsgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, *, seed: int,
                noise_multiplier: float, max_grad_norm: float) -> tuple[TrainResult, float]:
    """Train ``model`` in place by DP-SGD with Poisson-sampled batches; returns the result and the sample rate.

    ``config.epochs`` epochs are ``ceil(n / batch_size)`` steps each (``max_steps`` caps them);
    every step counts, also one whose Poisson batch came out empty (it is skipped, so its
    noise is not drawn: the count is then a bound from above).

    Raises:
        TrainingDiverged: when a loss is NaN or infinite.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    n = len(y)
    rate = min(1.0, config.batch_size / max(n, 1))
    steps_per_epoch = math.ceil(1 / rate)
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in inplace:  # Opacus's backward hooks forbid in-place activations on their outputs
        m.inplace = False
    with on_device(model, config.device) as dev:
        model.train()
        wrapped = GradSampleModule(model)
        try:
            noise = torch.Generator(device=dev).manual_seed(seed ^ 0x5DEECE66D)
            opt = DPOptimizer(torch.optim.SGD(wrapped.parameters(), lr=config.lr, momentum=config.momentum,
                                              weight_decay=config.weight_decay),
                              noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                              expected_batch_size=config.batch_size, generator=noise)
            sampling = torch.Generator().manual_seed(seed)
            total, steps, seen = 0.0, 0, 0
            for _ in range(config.epochs * steps_per_epoch):
                if config.max_steps and steps >= config.max_steps:
                    break
                steps += 1
                idx = (torch.rand(n, generator=sampling) < rate).nonzero().flatten()
                if len(idx) == 0:
                    continue
                xb, yb = x[idx].to(dev), y[idx].to(dev)
                loss = F.cross_entropy(wrapped(xb), yb)
                if not math.isfinite(loss.item()):
                    raise TrainingDiverged(f"training loss became {loss.item()} at DP-SGD step {steps}")
                opt.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # the first layer's input needs no gradient: expected here
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                seen += len(idx)
        finally:
            wrapped._close()  # remove Opacus's hooks: the model is a plain module again
            for m in inplace:
                m.inplace = True
    return TrainResult(total / max(seen, 1), steps, seen), rate


def record_steps(context: Context, noise_multiplier: float, rate: float, steps: int, delta: float) -> float:
    """Add this round's steps to the node's DP-SGD history and return its epsilon so far."""
    state: Any = context.state.config_records.get(STATE_KEY)
    history = list(zip(state["z"], state["q"], state["steps"], strict=True)) if state is not None else []
    history.append((float(noise_multiplier), float(rate), int(steps)))
    context.state.config_records[STATE_KEY] = ConfigRecord(
        {"z": [h[0] for h in history], "q": [h[1] for h in history], "steps": [h[2] for h in history]})
    return local_epsilon(history, delta)
