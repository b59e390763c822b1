"""In-place distillation: the inner subnet runs on views of the node's subnet, and only its elements get the KD gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fednas.supernet import Supernet, inplace_distillation_loss, shared_forward
from search_spaces import MobileNetArch, Stage, build_model


def _arch(channels: int, depth: int, kernel: int, expansion: float) -> MobileNetArch:
    return MobileNetArch(stem_channels=16, stages=(Stage(channels=channels, depth=depth, stride=2, expansion=expansion,
                                                         kernel=kernel, se=False, activation="relu6"),))


OUTER, INNER = _arch(24, 2, 5, 3), _arch(16, 1, 3, 2)


def _outer() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(OUTER, num_classes=10, in_channels=1)


def test_shared_forward_equals_the_extracted_inner_subnet() -> None:
    outer = _outer().eval()
    sup = Supernet(OUTER, 10, 1, {k: v.detach().numpy().copy() for k, v in outer.state_dict().items()})
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(shared_forward(outer, OUTER, INNER, num_classes=10, in_channels=1)(x),
                                   sup.subnet(INNER).eval()(x))


def test_distillation_gradient_lands_only_in_the_inner_subnets_elements() -> None:
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    plain, distilled = _outer().train(), _outer().train()
    F.cross_entropy(plain(x), y).backward()
    loss = inplace_distillation_loss(distilled, OUTER, INNER, num_classes=10, in_channels=1)
    loss(distilled(x), x, y).backward()
    inside = {s.source: s.box for s in INNER.weight_slices(OUTER, num_classes=10, in_channels=1)}
    grads_p, grads_d = dict(plain.named_parameters()), dict(distilled.named_parameters())
    changed_inside = 0
    for name, p in grads_p.items():
        diff = (grads_d[name].grad - p.grad).abs()
        mask = torch.zeros_like(diff, dtype=torch.bool)
        if name in inside:
            mask[tuple(slice(a, b) for a, b in inside[name])] = True
        outside = diff[~mask]
        assert outside.numel() == 0 or float(outside.max()) < 1e-6, name  # outside the inner subnet: cross-entropy only
        changed_inside += int((diff[mask] > 1e-7).any())
    assert changed_inside > len([n for n in inside if n in grads_p]) // 2
