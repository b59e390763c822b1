"""In-place distillation inside a node's subnet (Once-for-All's, done where the data is).

A node trains the subnet ``S`` it was sent with the usual cross-entropy; with in-place
distillation it also trains, on every batch, a smaller subnet ``T`` inside ``S`` (the
space's smallest) on ``S``'s soft targets. ``T``'s weights are views of ``S``'s (its
``weight_slices`` boxes inside ``S``), run through ``torch.func.functional_call``, so the
distillation gradient lands in the elements ``T`` shares with ``S`` and the node still
sends back exactly ``S``'s tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import Architecture, build_model

__all__ = ["inplace_distillation_loss", "shared_forward"]


def shared_forward(model: nn.Module, model_arch: Architecture, inner: Architecture, *, num_classes: int,
                   in_channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> inner(x)`` computed with views of ``model``'s parameters and buffers (gradients flow into them)."""
    slices = inner.weight_slices(model_arch, num_classes=num_classes, in_channels=in_channels)
    skeleton = build_model(inner, num_classes=num_classes, in_channels=in_channels)

    def forward(x: torch.Tensor) -> torch.Tensor:
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        skeleton.train(model.training)
        views = {s.key: tensors[s.source][s.index] for s in slices}
        return torch.func.functional_call(skeleton, views, (x,))

    return forward


def inplace_distillation_loss(model: nn.Module, model_arch: Architecture, inner: Architecture, *, num_classes: int,
                              in_channels: int, temperature: float = 1.0
                              ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``fednas.train.train`` loss: cross-entropy of ``model`` plus ``T**2 KL(p_model || p_inner)`` of ``inner``
    inside it, the teacher's logits detached (the inner subnet learns from the node's subnet, not the reverse)."""
    inner_forward = shared_forward(model, model_arch, inner, num_classes=num_classes, in_channels=in_channels)

    def loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        student = inner_forward(x)
        kl = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(logits.detach() / temperature, dim=1),
                      log_target=True, reduction="batchmean")
        return F.cross_entropy(logits, y) + temperature**2 * kl

    return loss
