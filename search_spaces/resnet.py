"""ResNets: stages of basic or bottleneck residual blocks, plain or pre-activation.

Read top to bottom: the records (``ResStage``, ``ResNetArch``), the presets (torchvision's
ResNet-18/34/50 and HeteroFL's pre-activation ResNet-18 for CIFAR-10), the search space
(per stage depth, width and block type; ``stem_width``) and the family's registration.
The PyTorch modules are in ``_resnet_nn``, imported only when a network is built.

A stage is a run of ``depth`` blocks of one type; only the first block strides. A basic
block's output has ``channels`` channels, a bottleneck's ``4 * channels`` (its inner width
is ``channels``), as in torchvision. The ``imagenet`` stem is a 7x7/2 convolution and a
3x3/2 max pool; the ``cifar`` stem a 3x3/1 convolution, for 32x32 inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ._arch import (MAX_BLOCKS, MAX_CHANNELS, NORMS, Architecture, Family, Preset, check_int, check_skeleton, make_divisible,
                    space_from_options, stages_record_from_dict, stages_record_to_dict)
from ._base import Choice, Domain, Fixed, Range, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["BLOCKS", "BOTTLENECK_EXPANSION", "FAMILY", "STEMS", "ResNetArch", "ResNetSpace", "ResStage"]

BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "cifar")
BOTTLENECK_EXPANSION = 4


@dataclass(frozen=True, kw_only=True)
class ResStage:
    """A run of ``depth`` residual blocks of one type; only the first one strides.

    Attributes:
        channels: width of the blocks (a bottleneck outputs ``4 * channels``).
        depth: number of blocks.
        stride: stride of the first block (1 or 2).
        block: "basic" (two 3x3 convs) or "bottleneck" (1x1, 3x3, 1x1).
    """

    channels: int
    depth: int
    stride: int
    block: str = "basic"

    def __post_init__(self) -> None:
        check_int("channels", self.channels, 1, MAX_CHANNELS)
        check_int("depth", self.depth, 1, MAX_BLOCKS)
        if self.stride not in (1, 2) or isinstance(self.stride, bool):
            raise ValueError(f"stride: expected 1 or 2, got {self.stride!r}")
        if self.block not in BLOCKS:
            raise ValueError(f"block: expected one of {list(BLOCKS)}, got {self.block!r}")

    @property
    def out_channels(self) -> int:
        return self.channels * (BOTTLENECK_EXPANSION if self.block == "bottleneck" else 1)


@dataclass(frozen=True, kw_only=True)
class ResNetArch(Architecture):
    """A whole ResNet: stem, residual stages, pooled linear classifier. Round-trips exactly through JSON.

    Attributes:
        stem: "imagenet" (7x7/2 conv + 3x3/2 max pool) or "cifar" (3x3/1 conv).
        stem_channels: output channels of the stem convolution.
        stages: the residual stages, in order.
        preact: pre-activation blocks (He et al. 2016, "Identity mappings"): batch norm and
            ReLU before each convolution, projection shortcuts without batch norm, and one
            batch norm + ReLU after the last stage (HeteroFL's ResNet).
        dropout: dropout probability before the classifier.
        norm: "batch" (batch norm) or "group" (group norm, ``norm_groups`` groups: no running
            statistics, what DP-SGD needs) at every normalization of the network.
    """

    family: ClassVar[str] = "resnet"
    title: ClassVar[str] = "A ResNet"

    stem: str = "imagenet"
    stem_channels: int = 64
    stages: tuple[ResStage, ...]
    preact: bool = False
    dropout: float = 0.0
    norm: str = "batch"

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"stem: expected one of {list(STEMS)}, got {self.stem!r}")
        check_int("stem_channels", self.stem_channels, 1, MAX_CHANNELS)
        if not self.stages or not all(isinstance(s, ResStage) for s in self.stages):
            raise ValueError("stages: expected a non-empty list of stages")
        if self.num_blocks > MAX_BLOCKS:
            raise ValueError(f"stages: expected at most {MAX_BLOCKS} blocks in all, got {self.num_blocks}")
        if not isinstance(self.preact, bool):
            raise ValueError(f"preact: expected true or false, got {self.preact!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {list(NORMS)}, got {self.norm!r}")

    @property
    def num_blocks(self) -> int:
        return sum(s.depth for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``norm`` only when it is not batch norm (records from before the label read
        and weigh as before)."""
        d = stages_record_to_dict(self)
        if d["norm"] == "batch":
            del d["norm"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResNetArch:
        """Inverse of ``to_dict``. Unknown or missing keys raise ``ValueError``."""
        return stages_record_from_dict(cls, ResStage, data)

    def build(self, *, num_classes: int, in_channels: int) -> nn.Module:
        from ._resnet_nn import ResNet

        return ResNet(self, num_classes=num_classes, in_channels=in_channels)

    def describe(self) -> str:
        """Compact form: ``resnet cifar 64 | 64x2 basic | 128x2/s2 basic`` (``pre`` for pre-activation)."""
        parts = [f"resnet{' pre' if self.preact else ''} {self.stem} {self.stem_channels}"]
        for s in self.stages:
            stride = f"/s{s.stride}" if s.stride != 1 else ""
            parts.append(f"{s.channels}x{s.depth}{stride} {s.block}")
        return " | ".join(parts) + (" | group norm" if self.norm == "group" else "")

    def table(self, num_classes: int) -> tuple[list[str], list[list[Any]], str]:
        head = ["part", "channels", "blocks", "stride", "block", "output channels"]
        stem = "stem (7x7 conv, 3x3 max pool)" if self.stem == "imagenet" else "stem (3x3 conv)"
        rows: list[list[Any]] = [[stem, self.stem_channels, 1, 4 if self.stem == "imagenet" else 1, "-",
                                  self.stem_channels]]
        for k, s in enumerate(self.stages, start=1):
            rows.append([f"stage {k}", s.channels, s.depth, s.stride, s.block, s.out_channels])
        rows.append(["classifier (linear)", num_classes, 1, "-", "-", num_classes])
        kind = "pre-activation (BN-ReLU before each conv)" if self.preact else "post-activation (conv-BN-ReLU)"
        note = (f"Residual blocks, {kind}; basic = two 3x3 convs, bottleneck = 1x1, 3x3, 1x1 with "
                f"{BOTTLENECK_EXPANSION}x output channels; dropout {self.dropout} before the classifier."
                + (" Every batch norm is a group norm (8 groups where they divide the channels)."
                   if self.norm == "group" else ""))
        return head, rows, note


# --------------------------------------------------------------------------- presets


def _torchvision(block: str, depths: tuple[int, ...]) -> ResNetArch:
    # He et al. 2016, Table 1, as torchvision builds it (stride on the 3x3 conv of a bottleneck).
    widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
    stages = tuple(ResStage(channels=w, depth=d, stride=s, block=block) for w, d, s in zip(widths, depths, strides))
    return ResNetArch(stem="imagenet", stem_channels=64, stages=stages)


def _preact_resnet18_cifar() -> ResNetArch:
    # Diao et al. 2021 (HeteroFL), src/models/resnet.py at model rate 1: pre-activation basic blocks,
    # a 3x3 stem, widths 64-512.
    base = _torchvision("basic", (2, 2, 2, 2))
    return ResNetArch(stem="cifar", stem_channels=64, stages=base.stages, preact=True)


def _resnet_micro() -> ResNetArch:
    # The smallest useful member: unit tests on 28x28 or 32x32 inputs.
    return ResNetArch(stem="cifar", stem_channels=8,
                      stages=(ResStage(channels=8, depth=1, stride=1), ResStage(channels=16, depth=1, stride=2)))


_IMAGENET = {"num_classes": 1000, "in_channels": 3, "resolution": 224}
PRESETS: tuple[Preset, ...] = (
    Preset("resnet18", lambda: _torchvision("basic", (2, 2, 2, 2)), **_IMAGENET,
           note="torchvision resnet18: 11,689,512 parameters, 1.82 G MACs at 224x224"),
    Preset("resnet34", lambda: _torchvision("basic", (3, 4, 6, 3)), **_IMAGENET,
           note="torchvision resnet34: 21,797,672 parameters"),
    Preset("resnet50", lambda: _torchvision("bottleneck", (3, 4, 6, 3)), **_IMAGENET,
           note="torchvision resnet50: 25,557,032 parameters, 4.09 G MACs at 224x224"),
    Preset("preact_resnet18_cifar", _preact_resnet18_cifar, num_classes=10, in_channels=3, resolution=32,
           note="HeteroFL's pre-activation ResNet-18 for CIFAR-10 (rate 1): 11,172,170 parameters"),
    Preset("resnet_micro", _resnet_micro, note="the smallest useful member: unit tests"),
)


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True, kw_only=True)
class ResNetSpace(SearchSpace):
    """Searchable ResNet: per stage depth, width multiplier and block type; the stem's width.

    The skeleton (number of stages, base widths, strides, stem type, pre-activation) is
    fixed per study; the labels are ``stem_width`` and ``s{i}_{depth,width,block}``.
    """

    name: str = "resnet"
    base_channels: tuple[int, ...] = (64, 128, 256, 512)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem: str = "cifar"
    stem_base: int = 64
    preact: bool = False
    max_depth: int = 4
    widths: tuple[float, ...] = field(default=(0.25, 0.5, 0.75, 1.0))

    def __post_init__(self) -> None:
        check_skeleton(self.base_channels, self.strides, self.stem_base, self.max_depth)
        if self.stem not in STEMS:
            raise ValueError(f"stem: expected one of {list(STEMS)}, got {self.stem!r}")
        if not isinstance(self.preact, bool):
            raise ValueError(f"preact: expected true or false, got {self.preact!r}")
        for w in self.widths:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 4:
                raise ValueError(f"widths: expected multipliers in (0, 4], got {w!r}")

    def domains(self) -> dict[str, Domain]:
        widths = Choice(tuple(self.widths))
        d: dict[str, Domain] = {"stem_width": widths}
        for i in range(1, len(self.base_channels) + 1):
            d[f"s{i}_depth"] = Range(1, self.max_depth)
            d[f"s{i}_width"] = widths
            d[f"s{i}_block"] = Choice(BLOCKS)
        d["norm"] = Fixed("batch")
        return d

    def allowed_domains(self) -> dict[str, Domain]:
        return {**self.domains(), "norm": Choice(NORMS)}

    def decode(self, values: dict[str, Any]) -> ResNetArch:
        missing = [k for k in self.domains() if k not in values]
        if missing:
            raise ValueError(f"missing label(s) {missing} for search space {self.name!r}")
        stages = tuple(
            ResStage(channels=make_divisible(base * values[f"s{i}_width"]), depth=int(values[f"s{i}_depth"]),
                     stride=stride, block=str(values[f"s{i}_block"]))
            for i, (base, stride) in enumerate(zip(self.base_channels, self.strides), start=1)
        )
        return ResNetArch(stem=self.stem, stem_channels=make_divisible(self.stem_base * values["stem_width"]),
                          stages=stages, preact=self.preact, norm=str(values["norm"]))

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ResNetSpace:
        """Build from a config table (lists become tuples); unknown keys raise ``ValueError``."""
        return space_from_options(cls, options)


FAMILY = Family("resnet", ResNetArch, ResNetSpace.from_options, PRESETS)
