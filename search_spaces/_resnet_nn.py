"""The PyTorch modules of the ResNet family (imported only when a network is built).

Post-activation blocks follow torchvision's ``BasicBlock``/``Bottleneck`` layer for layer
(so the torchvision presets have exactly its parameter counts); pre-activation blocks
follow HeteroFL's ``Block``/``Bottleneck`` (batch norm and ReLU before each convolution,
a bias-free 1x1 projection shortcut taken after the first activation). The records
(``ResNetArch``, ``ResStage``) are read by their fields, not imported: ``search_spaces.resnet``
imports this module when it builds, never the other way round.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._arch import Architecture
from ._mobilenet_nn import norm_layer


__all__ = ["BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck", "ResNet"]


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False)


def _projection(cin: int, cout: int, stride: int, with_bn: bool, norm: str = "batch") -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    conv = _conv(cin, cout, 1, stride)
    return nn.Sequential(conv, norm_layer(cout, norm)) if with_bn else conv


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, add the (projected) input, ReLU."""

    def __init__(self, cin: int, width: int, stride: int, cout: int, norm: str = "batch") -> None:
        super().__init__()
        assert cout == width, "a basic block's output width is its width"
        self.conv1, self.bn1 = _conv(cin, width, 3, stride), norm_layer(width, norm)
        self.conv2, self.bn2 = _conv(width, width, 3), norm_layer(width, norm)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, width, stride, with_bn=True, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``cout`` (4 * width), each with BN; add, ReLU."""

    def __init__(self, cin: int, width: int, stride: int, cout: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, width, 1), norm_layer(width, norm)
        self.conv2, self.bn2 = _conv(width, width, 3, stride), norm_layer(width, norm)
        self.conv3, self.bn3 = _conv(width, cout, 1), norm_layer(cout, norm)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, cout, stride, with_bn=True, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class PreActBasicBlock(nn.Module):
    """BN-ReLU, 3x3 conv (strided), BN-ReLU, 3x3 conv; add the input or its 1x1 projection."""

    def __init__(self, cin: int, width: int, stride: int, cout: int, norm: str = "batch") -> None:
        super().__init__()
        assert cout == width, "a basic block's output width is its width"
        self.bn1, self.conv1 = norm_layer(cin, norm), _conv(cin, width, 3, stride)
        self.bn2, self.conv2 = norm_layer(width, norm), _conv(width, width, 3)
        self.relu = nn.ReLU()
        self.shortcut = _projection(cin, width, stride, with_bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreActBottleneck(nn.Module):
    """BN-ReLU-1x1, BN-ReLU-3x3 (strided), BN-ReLU-1x1 to ``cout`` (4 * width); add the input or its projection."""

    def __init__(self, cin: int, width: int, stride: int, cout: int, norm: str = "batch") -> None:
        super().__init__()
        self.bn1, self.conv1 = norm_layer(cin, norm), _conv(cin, width, 1)
        self.bn2, self.conv2 = norm_layer(width, norm), _conv(width, width, 3, stride)
        self.bn3, self.conv3 = norm_layer(width, norm), _conv(width, cout, 1)
        self.relu = nn.ReLU()
        self.shortcut = _projection(cin, cout, stride, with_bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


_BLOCKS: dict[tuple[str, bool], type[nn.Module]] = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}


class ResNet(nn.Module):
    """Stem, residual stages, (pre-activation: a final BN-ReLU), global pool, dropout, linear."""

    def __init__(self, arch: Architecture, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = self._stem(arch, in_channels)
        blocks: list[nn.Module] = []
        cin = arch.stem_channels
        for stage in arch.stages:
            blocks += self._stage(stage, cin, arch.preact, arch.norm)
            cin = stage.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.post = nn.Sequential(norm_layer(cin, arch.norm), nn.ReLU()) if arch.preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(arch.dropout), nn.Linear(cin, num_classes))
        self._init_weights()

    @staticmethod
    def _stem(arch: Architecture, in_channels: int) -> nn.Sequential:
        c = arch.stem_channels
        if arch.stem == "imagenet":
            conv = nn.Conv2d(in_channels, c, 7, 2, 3, bias=False)
            return nn.Sequential(conv, norm_layer(c, arch.norm), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        conv = _conv(in_channels, c, 3)
        return (nn.Sequential(conv) if arch.preact
                else nn.Sequential(conv, norm_layer(c, arch.norm), nn.ReLU(inplace=True)))

    @staticmethod
    def _stage(stage: Any, cin: int, preact: bool, norm: str) -> list[nn.Module]:
        block = _BLOCKS[(stage.block, preact)]
        out = []
        for i in range(stage.depth):
            out.append(block(cin, stage.channels, stage.stride if i == 0 else 1, stage.out_channels, norm))
            cin = stage.out_channels
        return out

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.post(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))
