"""Plain PyTorch local training and evaluation: no Flower, no Optuna.

Data are in-memory tensors (``ArrayDataset``), so batches are index slices rather than a
DataLoader: for the small images of federated edge workloads the loader, not the model,
would otherwise dominate a client's time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fednas._interrupt import checkpoint
from fednas.config import DEVICE_NAME

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "apply_batchnorm_moments",
    "batchnorm_moments",
    "evaluate",
    "on_device",
    "resolve_device",
    "taylor_channel_scores",
    "train",
]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    """``federation.device``: "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N".

    Raises:
        ValueError: an unknown name, or CUDA requested where there is none (or not that many).
    """
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise ValueError(f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{name!r} requested but this machine has no CUDA device (torch.cuda.is_available() is "
                             "False); expected 'auto' or 'cpu'")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"{name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device | str | None) -> Iterator[torch.device]:
    """Run ``model`` on ``device`` inside the block and put it back on the CPU after (None: where it is),
    so that whatever reads its state afterwards (messages, pruning, export) sees CPU tensors."""
    if device is None:
        p = next(iter(model.parameters()), None)
        yield p.device if p is not None else torch.device("cpu")
        return
    dev = torch.device(device)
    model.to(dev)
    try:
        yield dev
    finally:
        if dev.type != "cpu":
            model.to("cpu")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Local training hyper-parameters of one client round.

    Attributes:
        epochs: passes over the local data.
        batch_size: examples per step.
        lr: SGD learning rate.
        momentum: SGD momentum (fresh optimizer each round, as clients are stateless).
        weight_decay: L2 penalty.
        proximal_mu: FedProx proximal term weight (0: plain local SGD).
        max_steps: stop after this many steps (0: no limit).
        device: where the model and batches go ("cpu", "cuda", "cuda:N"); the model is back
            on the CPU when ``train`` returns.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    max_steps: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class TrainResult:
    loss: float
    steps: int
    examples: int


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    loss_fn: LossFn = _cross_entropy,
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)`` with SGD; returns the mean loss.

    Args:
        loss_fn: ``(logits, x_batch, y_batch) -> loss``; cross-entropy by default
            (``fednas.compress.train_with_teacher`` passes a distillation loss).

    Raises:
        TrainingDiverged: when a loss is NaN or infinite.
    """
    with on_device(model, config.device) as dev:
        return _train(model, x, y, config, seed, loss_fn, dev)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, seed: int, loss_fn: LossFn,
           dev: torch.device) -> TrainResult:
    model.train()
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    anchor = [p.detach().clone() for p in model.parameters()] if config.proximal_mu > 0 else None
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    total, steps, seen = 0.0, 0, 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, config.batch_size):
            checkpoint()  # Ctrl-C stops between batches, never inside one
            idx = order[start : start + config.batch_size]
            if len(idx) < 2:  # a batch of one breaks batch norm in training mode
                continue
            xb, yb = x[idx].to(dev, non_blocking=True), y[idx].to(dev, non_blocking=True)
            loss = loss_fn(model(xb), xb, yb)
            if anchor is not None:
                prox = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + 0.5 * config.proximal_mu * prox
            if not math.isfinite(loss.item()):
                raise TrainingDiverged(f"training loss became {loss.item()} at step {steps}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            steps += 1
            if config.max_steps and steps >= config.max_steps:
                return TrainResult(total / max(seen, 1), steps, seen)
    return TrainResult(total / max(seen, 1), steps, seen)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024,
             device: torch.device | str | None = None) -> tuple[float, float]:
    """Return ``(mean loss, accuracy)`` of ``model`` in eval mode (on ``device``; None: where it is)."""
    model.eval()
    loss, correct = 0.0, 0
    with on_device(model, device) as dev:
        for start in range(0, len(y), batch_size):
            checkpoint()
            out = model(x[start : start + batch_size].to(dev))
            target = y[start : start + batch_size].to(dev)
            loss += F.cross_entropy(out, target, reduction="sum").item()
            correct += (out.argmax(1) == target).sum().item()
    n = max(len(y), 1)
    return loss / n, correct / n


@torch.no_grad()
def batchnorm_moments(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256,
                      device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Per batch-norm layer, the sums needed to pool its input statistics across clients.

    The model runs in training mode (each layer normalizes with batch statistics, as in
    "precise BN"), and for every ``_BatchNorm`` the returned tensor stacks
    ``[sum(x), sum(x**2), count]`` per channel (float64, shape ``[3, C]``). Summed over
    clients these give the exact pooled mean and variance, which averaging the clients'
    running statistics does not: under label skew the between-client spread of the
    means is part of the global variance.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    sums = [torch.zeros(3, m.num_features, dtype=torch.float64) for m in bns]

    def hook(i: int) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            a = inputs[0].double().transpose(0, 1).reshape(module.num_features, -1)
            sums[i][0] += a.sum(1).cpu()
            sums[i][1] += (a * a).sum(1).cpu()
            sums[i][2] += a.shape[1]

        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(bns)]
    was_training = model.training
    model.train()
    try:
        with on_device(model, device) as dev:
            for start in range(0, len(x), batch_size):
                checkpoint()
                if len(x) - start >= 2 or start == 0:
                    model(x[start : start + batch_size].to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sums


def apply_batchnorm_moments(model: nn.Module, moments: list[torch.Tensor]) -> None:
    """Set running mean/variance of each batch-norm layer from pooled ``batchnorm_moments``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(bns) != len(moments):
        raise ValueError(f"expected moments for {len(bns)} batch-norm layers, got {len(moments)}")
    for m, s in zip(bns, moments):
        n = s[2].clamp(min=2)
        mean = s[0] / n
        var = (s[1] / n - mean * mean).clamp(min=0) * n / (n - 1)
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))


def taylor_channel_scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 64, max_batches: int = 8,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """First-order Taylor importance of each output channel of every conv and linear layer.

    For a weight ``w`` with gradient ``g`` of the cross-entropy on local data, a channel's
    score is ``sum((w * g) ** 2)`` over that channel's weights (Molchanov et al. 2019,
    NNI's Taylor pruner), accumulated over up to ``max_batches`` batches. The model is
    left unchanged (no optimizer step). Summed over clients, the scores rank channels by
    their estimated effect on the federation's loss without the data leaving the clients.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    scores = {n: torch.zeros(m.weight.shape[0], dtype=torch.float64) for n, m in layers.items()}
    was_training = model.training
    model.train()
    try:
        with on_device(model, device) as dev:
            for i, start in enumerate(range(0, len(y), batch_size)):
                if i >= max_batches:
                    break
                checkpoint()
                xb, yb = x[start : start + batch_size].to(dev), y[start : start + batch_size].to(dev)
                if len(yb) < 2:
                    break
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb), yb).backward()
                for n, m in layers.items():
                    if m.weight.grad is not None:
                        contrib = (m.weight.detach() * m.weight.grad).double().pow(2)
                        scores[n] += contrib.reshape(contrib.shape[0], -1).sum(1).cpu()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores
