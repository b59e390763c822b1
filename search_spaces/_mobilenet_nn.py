"""The PyTorch modules of the MobileNet family (imported only when a network is built).

``MobileNetArch.build`` calls ``MobileNet(arch, ...)``; the records, presets and search
space live in ``search_spaces.mobilenet`` and need no torch. The records are read by their
fields here (``MobileNetArch``, ``Stage``), not imported: the records module imports this one
when it builds, never the other way round.
"""

from __future__ import annotations

import math

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._arch import Architecture, WeightSlice, make_divisible


__all__ = ["ACTIVATIONS", "GATES", "InvertedResidual", "MobileNet", "SqueezeExcite", "block_layout", "weight_slices"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
}
GATES: dict[str, Callable[[], nn.Module]] = {"hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid}


def norm_groups(channels: int) -> int:
    """Groups of a group norm over ``channels``: 8 where they divide, else the largest divisor of 8 that does."""
    return math.gcd(channels, 8)


def norm_layer(channels: int, norm: str) -> nn.Module:
    """The normalization after a conv: batch norm, or group norm over ``norm_groups(channels)`` groups."""
    return nn.GroupNorm(norm_groups(channels), channels) if norm == "group" else nn.BatchNorm2d(channels)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int, act: str | None,
             norm: str = "batch") -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        norm_layer(cout, norm),
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


def block_layout(cin: int, stage: Any, se_ratio: float) -> dict[str, Any]:
    """The layers of one inverted residual: widths, and the index of each part in ``block``.

    ``expand`` (absent when the expanded width equals the input's), ``depthwise``, ``se``
    (absent without squeeze-excitation) and ``project`` map to their position in
    ``InvertedResidual.block``; ``hidden`` and ``squeeze`` are the expanded and squeeze widths.
    """
    hidden = make_divisible(cin * stage.expansion)
    parts = (["expand"] if hidden != cin else []) + ["depthwise"] + (["se"] if stage.se else []) + ["project"]
    return {"hidden": hidden, "squeeze": make_divisible(hidden * se_ratio) if stage.se else 0,
            **{name: i for i, name in enumerate(parts)}}


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> [SE] -> project 1x1, residual when shapes match."""

    def __init__(self, cin: int, stage: Any, stride: int, se_ratio: float, se_gate: str, norm: str = "batch") -> None:
        super().__init__()
        layout = block_layout(cin, stage, se_ratio)
        hidden = layout["hidden"]
        layers: list[nn.Module] = []
        if "expand" in layout:
            layers.append(_conv_bn(cin, hidden, 1, 1, 1, stage.activation, norm))
        layers.append(_conv_bn(hidden, hidden, stage.kernel, stride, hidden, stage.activation, norm))
        if "se" in layout:
            layers.append(SqueezeExcite(hidden, layout["squeeze"], se_gate))
        layers.append(_conv_bn(hidden, stage.channels, 1, 1, 1, None, norm))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == stage.channels

    def extra_repr(self) -> str:  # the forward pass's one flag, so that repr (latency-table keys) tells blocks apart
        return f"residual={self.use_residual}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNet(nn.Module):
    """Stem, inverted-residual stages, optional 1x1 head, pooled classifier."""

    def __init__(self, arch: Architecture, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, arch.stem_channels, 3, arch.stem_stride, 1, arch.stem_activation, arch.norm)
        blocks: list[nn.Module] = []
        cin = arch.stem_channels
        for stage in arch.stages:
            for i in range(stage.depth):
                blocks.append(InvertedResidual(cin, stage, stage.stride if i == 0 else 1, arch.se_ratio, arch.se_gate,
                                               arch.norm))
                cin = stage.channels
        self.blocks = nn.Sequential(*blocks)
        if arch.head_channels:
            self.head = _conv_bn(cin, arch.head_channels, 1, 1, 1, arch.head_activation, arch.norm)
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


# --------------------------------------------------------------------------- weight sharing

_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def weight_slices(sub: Architecture, sup: Architecture, *, num_classes: int, in_channels: int) -> list[WeightSlice]:
    """Where each tensor of ``MobileNet(sub)`` lies in ``MobileNet(sup)`` (see ``Architecture.weight_slices``).

    Stage ``i`` of ``sub`` takes the first ``depth`` blocks of stage ``i`` of ``sup``; each
    block the first input, expanded, squeeze and output channels, and the centre of the
    depthwise kernel. A block whose expanded width equals its input width has no expand conv:
    its depthwise conv then takes the first channels of the supernet's.

    Raises:
        ValueError: ``sub`` does not fit inside ``sup``, naming the part.
    """
    _check_fits(sub, sup)
    out: list[WeightSlice] = []

    def conv_bn(key: str, src: str, cout: int, cin: int, kernel: int, src_kernel: int) -> None:
        # conv weight [cout, cin (1 for depthwise), k, k] and its batch norm, both named by Sequential index
        off = (src_kernel - kernel) // 2
        box = ((0, cout), (0, cin), (off, off + kernel), (off, off + kernel))
        out.append(WeightSlice(f"{key}.0.weight", f"{src}.0.weight", box))
        for name in _BN_TENSORS:
            out.append(WeightSlice(f"{key}.1.{name}", f"{src}.1.{name}", ((0, cout),)))
        out.append(WeightSlice(f"{key}.1.num_batches_tracked", f"{src}.1.num_batches_tracked", ()))

    conv_bn("stem", "stem", sub.stem_channels, in_channels, 3, 3)
    cin, sup_cin, block, sup_first = sub.stem_channels, sup.stem_channels, 0, 0
    for i, (st, sst) in enumerate(zip(sub.stages, sup.stages)):
        for j in range(st.depth):
            mine = block_layout(cin, st, sub.se_ratio)
            theirs = block_layout(sup_cin if j == 0 else sst.channels, sst, sup.se_ratio)
            key, src, where = f"blocks.{block}.block", f"blocks.{sup_first + j}.block", f"stages[{i}] block {j}"
            hidden = mine["hidden"]
            if hidden > theirs["hidden"]:
                raise ValueError(f"{where}: expanded width {hidden} is wider than the supernet's {theirs['hidden']}")
            if "expand" in mine:
                if "expand" not in theirs:
                    raise ValueError(f"{where}: expands {cin} -> {hidden} channels but the supernet's block has no "
                                     "expand conv")
                conv_bn(f"{key}.{mine['expand']}", f"{src}.{theirs['expand']}", hidden, cin, 1, 1)
            conv_bn(f"{key}.{mine['depthwise']}", f"{src}.{theirs['depthwise']}", hidden, 1, st.kernel, sst.kernel)
            if "se" in mine:
                sq, se, sse = mine["squeeze"], f"{key}.{mine['se']}", f"{src}.{theirs['se']}"
                if sq > theirs["squeeze"]:
                    raise ValueError(f"{where}: squeeze width {sq} is wider than the supernet's {theirs['squeeze']}")
                out += [WeightSlice(f"{se}.fc1.weight", f"{sse}.fc1.weight", ((0, sq), (0, hidden), (0, 1), (0, 1))),
                        WeightSlice(f"{se}.fc1.bias", f"{sse}.fc1.bias", ((0, sq),)),
                        WeightSlice(f"{se}.fc2.weight", f"{sse}.fc2.weight", ((0, hidden), (0, sq), (0, 1), (0, 1))),
                        WeightSlice(f"{se}.fc2.bias", f"{sse}.fc2.bias", ((0, hidden),))]
            conv_bn(f"{key}.{mine['project']}", f"{src}.{theirs['project']}", st.channels, hidden, 1, 1)
            cin, block = st.channels, block + 1
        sup_cin, sup_first = sst.channels, sup_first + sst.depth
    if sub.head_channels:
        conv_bn("head", "head", sub.head_channels, cin, 1, 1)
        cin = sub.head_channels
    linear = 0
    if sub.classifier_hidden:
        out += [WeightSlice("classifier.0.weight", "classifier.0.weight", ((0, sub.classifier_hidden), (0, cin))),
                WeightSlice("classifier.0.bias", "classifier.0.bias", ((0, sub.classifier_hidden),))]
        cin, linear = sub.classifier_hidden, 2
    last = f"classifier.{linear + 1}"  # after the dropout
    out += [WeightSlice(f"{last}.weight", f"{last}.weight", ((0, num_classes), (0, cin))),
            WeightSlice(f"{last}.bias", f"{last}.bias", ((0, num_classes),))]
    return out


def _check_fits(sub: Architecture, sup: Architecture) -> None:
    """The parts a subnet shares with its supernet unchanged, and the sizes it may only shrink."""
    for name in ("stem_stride", "head_channels", "classifier_hidden", "se_ratio", "se_gate"):
        if getattr(sub, name) != getattr(sup, name):
            raise ValueError(f"{name}: {getattr(sub, name)!r} differs from the supernet's {getattr(sup, name)!r}")
    if len(sub.stages) != len(sup.stages):
        raise ValueError(f"stages: {len(sub.stages)} stages, the supernet has {len(sup.stages)}")
    if sub.stem_channels > sup.stem_channels:
        raise ValueError(f"stem_channels: {sub.stem_channels} is above the supernet's {sup.stem_channels}")
    for i, (st, sst) in enumerate(zip(sub.stages, sup.stages)):
        if st.stride != sst.stride:
            raise ValueError(f"stages[{i}].stride: {st.stride} differs from the supernet's {sst.stride}")
        for name in ("channels", "depth", "expansion", "kernel"):
            if getattr(st, name) > getattr(sst, name):
                raise ValueError(f"stages[{i}].{name}: {getattr(st, name)} is above the supernet's "
                                 f"{getattr(sst, name)}")
        if st.se and not sst.se:
            raise ValueError(f"stages[{i}].se: the supernet's stage has no squeeze-excitation")
