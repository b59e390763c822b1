"""The PyTorch modules of the MobileNet family (imported only when a network is built).

``MobileNetArch.build`` calls ``MobileNet(arch, ...)``; the records, presets and search
space live in ``search_spaces.mobilenet`` and need no torch. The records are read by their
fields here (``MobileNetArch``, ``Stage``), not imported: the records module imports this one
when it builds, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._arch import Architecture, make_divisible


__all__ = ["ACTIVATIONS", "GATES", "InvertedResidual", "MobileNet", "SqueezeExcite"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
}
GATES: dict[str, Callable[[], nn.Module]] = {"hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid}


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int, act: str | None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, 1x1 reduce + ReLU, 1x1 expand + gate, rescale."""

    def __init__(self, channels: int, squeeze: int, gate: str) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = GATES[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> [SE] -> project 1x1, residual when shapes match."""

    def __init__(self, cin: int, stage: Any, stride: int, se_ratio: float, se_gate: str) -> None:
        super().__init__()
        hidden = make_divisible(cin * stage.expansion)
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(_conv_bn(cin, hidden, 1, 1, 1, stage.activation))
        layers.append(_conv_bn(hidden, hidden, stage.kernel, stride, hidden, stage.activation))
        if stage.se:
            layers.append(SqueezeExcite(hidden, make_divisible(hidden * se_ratio), se_gate))
        layers.append(_conv_bn(hidden, stage.channels, 1, 1, 1, None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == stage.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNet(nn.Module):
    """Stem, inverted-residual stages, optional 1x1 head, pooled classifier."""

    def __init__(self, arch: Architecture, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, arch.stem_channels, 3, arch.stem_stride, 1, arch.stem_activation)
        blocks: list[nn.Module] = []
        cin = arch.stem_channels
        for stage in arch.stages:
            for i in range(stage.depth):
                blocks.append(InvertedResidual(cin, stage, stage.stride if i == 0 else 1, arch.se_ratio, arch.se_gate))
                cin = stage.channels
        self.blocks = nn.Sequential(*blocks)
        if arch.head_channels:
            self.head = _conv_bn(cin, arch.head_channels, 1, 1, 1, arch.head_activation)
            cin = arch.head_channels
        else:
            self.head = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        classifier: list[nn.Module] = []
        if arch.classifier_hidden:
            classifier += [nn.Linear(cin, arch.classifier_hidden), ACTIVATIONS[arch.head_activation]()]
            cin = arch.classifier_hidden
        classifier += [nn.Dropout(arch.dropout), nn.Linear(cin, num_classes)]
        self.classifier = nn.Sequential(*classifier)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))
