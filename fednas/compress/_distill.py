"""Knowledge distillation (Hinton et al., 2015): a student trained on a teacher's soft targets.

Plain PyTorch, the same loop as ``fednas.train.train`` with the loss replaced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fednas.train import TrainConfig, TrainResult, on_device, train

__all__ = ["distillation_loss", "train_with_teacher"]


def _check(temperature: float, weight: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ValueError(f"weight: expected a number in [0, 1], got {weight!r}")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 4.0,
    weight: float = 0.5,
) -> torch.Tensor:
    """``(1 - weight) * CE(student, targets) + weight * T**2 * KL(p_teacher || p_student)``.

    ``p = softmax(logits / T)``; the KL term is averaged over the batch and scaled by
    ``T**2`` so that its gradients keep their magnitude as ``T`` changes. The teacher's
    logits are detached.

    Raises:
        ValueError: ``temperature <= 0`` or ``weight`` outside [0, 1].
    """
    _check(temperature, weight)
    ce = F.cross_entropy(student_logits, targets)
    if weight == 0:
        return ce
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return (1 - weight) * ce + weight * temperature**2 * kl


def train_with_teacher(
    model: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    temperature: float = 4.0,
    weight: float = 0.5,
) -> TrainResult:
    """Train ``model`` in place like ``fednas.train.train``, on ``distillation_loss`` against ``teacher``.

    Same batches (seeded permutation, batches of one skipped), optimizer, proximal term and
    ``max_steps`` as ``train``; the teacher runs in eval mode without gradients and is not
    modified. Returns the mean training loss (distillation loss, plus the proximal term).

    Raises:
        TrainingDiverged: when a loss is NaN or infinite.
        ValueError: bad ``temperature`` or ``weight``.
    """
    _check(temperature, weight)

    def loss(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = teacher(xb)
        return distillation_loss(logits, soft, yb, temperature, weight)

    was_training = teacher.training
    teacher.eval()
    try:
        with on_device(teacher, config.device):
            return train(model, x, y, config, seed=seed, loss_fn=loss)
    finally:
        teacher.train(was_training)
