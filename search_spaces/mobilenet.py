"""MobileNet-style networks of inverted-residual blocks.

Read top to bottom: the architecture records (``Stage``, ``MobileNetArch``), the named
presets (MobileNetV2, V3-Large, V3-Small and small ones for tests), the search space that
maps flat labels (``s1_kernel`` ...) to an architecture, and the family's registration.
The PyTorch modules (``InvertedResidual``, ``MobileNet``) are in ``_mobilenet_nn``,
imported only when a network is built.

The canonical networks are presets of the same representation: one stage is a run of
identical blocks, so MobileNetV3's blocks that differ only in expansion sit in
consecutive stages with the same width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ._arch import (MAX_BLOCKS, NORMS, MAX_CHANNELS, MAX_EXPANSION, MAX_KERNEL, Architecture, Family, Preset, WeightSlice,
                    check_int, check_skeleton, make_divisible, space_from_options, stages_record_from_dict,
                    stages_record_to_dict)
from ._base import Choice, Domain, Fixed, Range, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["ACTIVATION_NAMES", "FAMILY", "GATE_NAMES", "MobileNetArch", "MobileNetSpace", "Stage", "make_divisible"]

ACTIVATION_NAMES = ("relu", "relu6", "hardswish")  # modules: ``_mobilenet_nn.ACTIVATIONS``
GATE_NAMES = ("hardsigmoid", "sigmoid")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A run of ``depth`` identical inverted-residual blocks; only the first one strides.

    Attributes:
        channels: output channels of every block.
        depth: number of blocks.
        stride: stride of the first block (1 or 2).
        expansion: expanded width of each block as a ratio of its input channels.
        kernel: depthwise kernel size (odd).
        se: squeeze-and-excitation after the depthwise conv.
        activation: one of ``ACTIVATION_NAMES``.
    """

    channels: int
    depth: int
    stride: int
    expansion: float
    kernel: int
    se: bool
    activation: str

    def __post_init__(self) -> None:
        check_int("channels", self.channels, 1, MAX_CHANNELS)
        check_int("depth", self.depth, 1, MAX_BLOCKS)
        if self.stride not in (1, 2):
            raise ValueError(f"stride: expected 1 or 2, got {self.stride!r}")
        if (isinstance(self.expansion, bool) or not isinstance(self.expansion, (int, float))
                or not 1 <= self.expansion <= MAX_EXPANSION):
            raise ValueError(f"expansion: expected a number in [1, {MAX_EXPANSION}], got {self.expansion!r}")
        if (isinstance(self.kernel, bool) or not isinstance(self.kernel, int) or not 1 <= self.kernel <= MAX_KERNEL
                or self.kernel % 2 == 0):
            raise ValueError(f"kernel: expected an odd integer in [1, {MAX_KERNEL}], got {self.kernel!r}")
        if not isinstance(self.se, bool):
            raise ValueError(f"se: expected true or false, got {self.se!r}")
        _check_activation("activation", self.activation)


@dataclass(frozen=True, kw_only=True)
class MobileNetArch(Architecture):
    """A whole network: stem, stages, head. Round-trips exactly through JSON.

    Attributes:
        stem_channels: output channels of the stem 3x3 convolution.
        stem_stride: stride of the stem (1 keeps small inputs large).
        stem_activation: activation after the stem.
        stages: the inverted-residual stages, in order.
        head_channels: 1x1 conv width after the last stage (0: none).
        head_activation: activation of the head conv and of the hidden classifier layer.
        classifier_hidden: width of a hidden linear layer before the classifier (0: none).
        dropout: dropout probability before the final linear layer.
        se_ratio: squeeze width as a fraction of the expanded width.
        se_gate: "hardsigmoid" (MobileNetV3) or "sigmoid".
        norm: "batch" (batch norm after every conv) or "group" (group norm, ``norm_groups``:
            no running statistics, so nothing of a client's data sits in buffers; what
            differential privacy needs, central or per example).
    """

    family: ClassVar[str] = "mobilenet"
    title: ClassVar[str] = "A MobileNet-style network"
    elastic: ClassVar[bool] = True

    stem_channels: int
    stem_stride: int = 2
    stem_activation: str = "relu6"
    stages: tuple[Stage, ...]
    head_channels: int = 0
    head_activation: str = "relu6"
    classifier_hidden: int = 0
    dropout: float = 0.0
    se_ratio: float = 0.25
    se_gate: str = "hardsigmoid"
    norm: str = "batch"

    def __post_init__(self) -> None:
        check_int("stem_channels", self.stem_channels, 1, MAX_CHANNELS)
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride: expected 1 or 2, got {self.stem_stride!r}")
        _check_activation("stem_activation", self.stem_activation)
        _check_activation("head_activation", self.head_activation)
        if not self.stages or not all(isinstance(s, Stage) for s in self.stages):
            raise ValueError("stages: expected a non-empty list of stages")
        check_int("head_channels", self.head_channels, 0, MAX_CHANNELS)
        check_int("classifier_hidden", self.classifier_hidden, 0, MAX_CHANNELS)
        if self.num_blocks > MAX_BLOCKS:
            raise ValueError(f"stages: expected at most {MAX_BLOCKS} blocks in all, got {self.num_blocks}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if isinstance(self.se_ratio, bool) or not isinstance(self.se_ratio, (int, float)) or not 0.0 < self.se_ratio <= 1.0:
            raise ValueError(f"se_ratio: expected a number in (0, 1], got {self.se_ratio!r}")
        if self.se_gate not in GATE_NAMES:
            raise ValueError(f"se_gate: expected one of {sorted(GATE_NAMES)}, got {self.se_gate!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {list(NORMS)}, got {self.norm!r}")

    @property
    def num_blocks(self) -> int:
        return sum(s.depth for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (stages as a list of dicts); ``norm`` only when it is not batch norm, so the
        records of batch-norm networks (all of them before the label existed) read and weigh as before."""
        d = stages_record_to_dict(self)
        if d["norm"] == "batch":
            del d["norm"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MobileNetArch:
        """Inverse of ``to_dict``; a dict without ``family`` is a MobileNet. Unknown or missing keys raise ValueError."""
        return stages_record_from_dict(cls, Stage, data, default_family="mobilenet")

    def build(self, *, num_classes: int, in_channels: int) -> nn.Module:
        from ._mobilenet_nn import MobileNet

        return MobileNet(self, num_classes=num_classes, in_channels=in_channels)

    def weight_slices(self, supernet: Architecture, *, num_classes: int, in_channels: int) -> list[WeightSlice]:
        from ._mobilenet_nn import weight_slices

        if not isinstance(supernet, MobileNetArch):
            raise ValueError(f"supernet: expected a mobilenet record, got the {supernet.family!r} family")
        if "group" in (self.norm, supernet.norm):
            raise ValueError("norm: 'group' cannot share weights in a supernet (its groups change with the width); "
                             "expected 'batch'")
        return weight_slices(self, supernet, num_classes=num_classes, in_channels=in_channels)

    def describe(self) -> str:
        """Compact form: ``stem 16/s2 | 16x1 k3 e2 relu6 | 24x2 k5 e4 se hardswish``."""
        parts = [f"stem {self.stem_channels}/s{self.stem_stride}"]
        for st in self.stages:
            se = " se" if st.se else ""
            parts.append(f"{st.channels}x{st.depth} k{st.kernel} e{st.expansion:g}{se} {st.activation}")
        return " | ".join(parts) + (" | group norm" if self.norm == "group" else "")

    def table(self, num_classes: int) -> tuple[list[str], list[list[Any]], str]:
        head = ["part", "channels", "blocks", "stride", "expansion", "kernel", "SE", "activation"]
        rows: list[list[Any]] = [["stem (3x3 conv)", self.stem_channels, 1, self.stem_stride, "-", 3, "-",
                                  self.stem_activation]]
        for k, s in enumerate(self.stages, start=1):
            rows.append([f"stage {k}", s.channels, s.depth, s.stride, f"{s.expansion:.4g}", s.kernel,
                         "yes" if s.se else "no", s.activation])
        if self.head_channels:
            rows.append(["head (1x1 conv)", self.head_channels, 1, 1, "-", 1, "-", self.head_activation])
        if self.classifier_hidden:
            rows.append(["hidden linear", self.classifier_hidden, 1, "-", "-", "-", "-", self.head_activation])
        rows.append(["classifier (linear)", num_classes, 1, "-", "-", "-", "-", "-"])
        note = (f"Blocks are inverted residuals (expand 1x1, depthwise kxk, optional squeeze-excitation with a "
                f"{self.se_gate} gate at ratio {self.se_ratio}, project 1x1); dropout {self.dropout} before the "
                "classifier." + (" Every conv is followed by a group norm (8 groups where they divide the channels)."
                                 if self.norm == "group" else ""))
        return head, rows, note


def _check_activation(name: str, value: Any) -> None:
    if value not in ACTIVATION_NAMES:
        raise ValueError(f"{name}: expected one of {sorted(ACTIVATION_NAMES)}, got {value!r}")



# --------------------------------------------------------------------------- presets


def _s(channels: int, depth: int, stride: int, expansion: float, kernel: int, se: bool, act: str) -> Stage:
    return Stage(channels=channels, depth=depth, stride=stride, expansion=expansion, kernel=kernel, se=se, activation=act)


def _mobilenet_v2() -> MobileNetArch:
    # Sandler et al. 2018, Table 2: (t, c, n, s) per stage.
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    return MobileNetArch(
        stem_channels=32,
        stem_activation="relu6",
        stages=tuple(_s(c, n, s, t, 3, False, "relu6") for t, c, n, s in table),
        head_channels=1280,
        head_activation="relu6",
        dropout=0.2,
    )


def _mobilenet_v3_large() -> MobileNetArch:
    # Howard et al. 2019, Table 1; blocks differing only in expansion split into stages.
    re, hs = "relu", "hardswish"
    stages = (
        _s(16, 1, 1, 1, 3, False, re),
        _s(24, 1, 2, 4, 3, False, re),
        _s(24, 1, 1, 3, 3, False, re),
        _s(40, 3, 2, 3, 5, True, re),
        _s(80, 1, 2, 6, 3, False, hs),
        _s(80, 1, 1, 2.5, 3, False, hs),
        _s(80, 2, 1, 2.3, 3, False, hs),
        _s(112, 2, 1, 6, 3, True, hs),
        _s(160, 3, 2, 6, 5, True, hs),
    )
    return MobileNetArch(
        stem_channels=16, stem_activation=hs, stages=stages, head_channels=960,
        head_activation=hs, classifier_hidden=1280, dropout=0.2,
    )


def _mobilenet_v3_small() -> MobileNetArch:
    re, hs = "relu", "hardswish"
    stages = (
        _s(16, 1, 2, 1, 3, True, re),
        _s(24, 1, 2, 4.5, 3, False, re),
        _s(24, 1, 1, 88 / 24, 3, False, re),
        _s(40, 1, 2, 4, 5, True, hs),
        _s(40, 2, 1, 6, 5, True, hs),
        _s(48, 2, 1, 3, 5, True, hs),
        _s(96, 3, 2, 6, 5, True, hs),
    )
    return MobileNetArch(
        stem_channels=16, stem_activation=hs, stages=stages, head_channels=576,
        head_activation=hs, classifier_hidden=1024, dropout=0.2,
    )


def _mobilenet_tiny() -> MobileNetArch:
    # A ~1.5 M-MAC net for 28x28 inputs: tests, examples and `flwr run`.
    return MobileNetArch(
        stem_channels=16,
        stem_stride=2,
        stages=(_s(16, 1, 1, 2, 3, False, "relu6"), _s(24, 1, 2, 3, 3, False, "relu6"), _s(40, 1, 2, 3, 3, True, "hardswish")),
        head_channels=0,
    )


def _mobilenet_micro() -> MobileNetArch:
    # The smallest useful member: unit tests.
    return MobileNetArch(stem_channels=8, stem_stride=2, stages=(_s(8, 1, 2, 2, 3, False, "relu6"),))


_IMAGENET = {"num_classes": 1000, "in_channels": 3, "resolution": 224}
PRESETS: tuple[Preset, ...] = (
    Preset("mobilenet_v2", _mobilenet_v2, **_IMAGENET, note="torchvision mobilenet_v2: 3,504,872 parameters"),
    Preset("mobilenet_v3_large", _mobilenet_v3_large, **_IMAGENET, note="torchvision: 5,483,032 parameters"),
    Preset("mobilenet_v3_small", _mobilenet_v3_small, **_IMAGENET, note="torchvision: 2,542,856 parameters"),
    Preset("mobilenet_tiny", _mobilenet_tiny, note="~1.5 M MACs at 1x28x28: tests, examples, `flwr run`"),
    Preset("mobilenet_micro", _mobilenet_micro, note="the smallest useful member: unit tests"),
)


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True, kw_only=True)
class MobileNetSpace(SearchSpace):
    """Searchable MobileNet: per stage depth, width, expansion, kernel, SE and activation.

    The skeleton (number of stages, their base widths and strides, stem and head) is fixed
    per study; the labels are ``stem_width`` and ``s{i}_{depth,width,expansion,kernel,se,act}``
    for stages ``i = 1..len(base_channels)``. Widths are multipliers on the base channels.
    """

    name: str = "mobilenet"
    base_channels: tuple[int, ...] = (16, 24, 40, 80)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem_base: int = 16
    stem_stride: int = 2
    head_channels: int = 0
    max_depth: int = 4
    widths: tuple[float, ...] = field(default=(0.5, 0.75, 1.0, 1.25, 1.5))

    def __post_init__(self) -> None:
        check_skeleton(self.base_channels, self.strides, self.stem_base, self.max_depth)
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride: expected 1 or 2, got {self.stem_stride!r}")
        check_int("head_channels", self.head_channels, 0, MAX_CHANNELS)

    def domains(self) -> dict[str, Domain]:
        widths = Choice(tuple(self.widths))
        d: dict[str, Domain] = {"stem_width": widths}
        for i in range(1, len(self.base_channels) + 1):
            d[f"s{i}_depth"] = Range(1, self.max_depth)
            d[f"s{i}_width"] = widths
            d[f"s{i}_expansion"] = Choice((1, 2, 3, 4, 6))
            d[f"s{i}_kernel"] = Choice((3, 5, 7))
            d[f"s{i}_se"] = Choice((False, True))
            d[f"s{i}_act"] = Choice(("relu6", "hardswish"))
        d["norm"] = Fixed("batch")
        return d

    def allowed_domains(self) -> dict[str, Domain]:
        return {**self.domains(), "norm": Choice(NORMS)}

    def decode(self, values: dict[str, Any]) -> MobileNetArch:
        missing = [k for k in self.domains() if k not in values]
        if missing:
            raise ValueError(f"missing label(s) {missing} for search space {self.name!r}")
        stages = []
        for i, (base, stride) in enumerate(zip(self.base_channels, self.strides), start=1):
            stages.append(
                Stage(
                    channels=make_divisible(base * values[f"s{i}_width"]),
                    depth=int(values[f"s{i}_depth"]),
                    stride=stride,
                    expansion=values[f"s{i}_expansion"],
                    kernel=int(values[f"s{i}_kernel"]),
                    se=bool(values[f"s{i}_se"]),
                    activation=values[f"s{i}_act"],
                )
            )
        return MobileNetArch(
            stem_channels=make_divisible(self.stem_base * values["stem_width"]),
            stem_stride=self.stem_stride,
            stem_activation=stages[0].activation,
            stages=tuple(stages),
            head_channels=self.head_channels,
            head_activation=stages[-1].activation,
            norm=str(values["norm"]),
        )

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MobileNetSpace:
        """Build from a config table (lists become tuples); unknown keys raise ``ValueError``."""
        return space_from_options(cls, options)


FAMILY = Family("mobilenet", MobileNetArch, MobileNetSpace.from_options, PRESETS)
