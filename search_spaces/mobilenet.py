"""MobileNet-style networks of inverted-residual blocks.

Read top to bottom: the architecture records (``Stage``, ``MobileNetArch``), the layers
(``InvertedResidual``), the model (``MobileNet``), the pure builder (``build_model``),
the named presets (MobileNetV2, V3-Large, V3-Small and small ones for tests), and the
search space that maps flat labels (``s1_kernel`` ...) to an architecture.

The canonical networks are presets of the same representation: one stage is a run of
identical blocks, so MobileNetV3's blocks that differ only in expansion sit in
consecutive stages with the same width.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from ._base import Choice, Domain, Range, SearchSpace

__all__ = [
    "ACTIVATIONS",
    "PRESETS",
    "MobileNet",
    "MobileNetArch",
    "MobileNetSpace",
    "Stage",
    "build_model",
    "make_divisible",
    "preset",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below it nor 10% under value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


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
        activation: a key of ``ACTIVATIONS``.
    """

    channels: int
    depth: int
    stride: int
    expansion: float
    kernel: int
    se: bool
    activation: str

    def __post_init__(self) -> None:
        _check_int("channels", self.channels, 1)
        _check_int("depth", self.depth, 1)
        if self.stride not in (1, 2):
            raise ValueError(f"stride: expected 1 or 2, got {self.stride!r}")
        if isinstance(self.expansion, bool) or not isinstance(self.expansion, (int, float)) or self.expansion < 1:
            raise ValueError(f"expansion: expected a number >= 1, got {self.expansion!r}")
        if not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel: expected an odd positive integer, got {self.kernel!r}")
        if not isinstance(self.se, bool):
            raise ValueError(f"se: expected true or false, got {self.se!r}")
        _check_activation("activation", self.activation)


@dataclass(frozen=True, kw_only=True)
class MobileNetArch:
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
    """

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

    def __post_init__(self) -> None:
        _check_int("stem_channels", self.stem_channels, 1)
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride: expected 1 or 2, got {self.stem_stride!r}")
        _check_activation("stem_activation", self.stem_activation)
        _check_activation("head_activation", self.head_activation)
        if not self.stages or not all(isinstance(s, Stage) for s in self.stages):
            raise ValueError("stages: expected a non-empty list of stages")
        _check_int("head_channels", self.head_channels, 0)
        _check_int("classifier_hidden", self.classifier_hidden, 0)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if not 0.0 < self.se_ratio <= 1.0:
            raise ValueError(f"se_ratio: expected a number in (0, 1], got {self.se_ratio!r}")
        if self.se_gate not in _GATES:
            raise ValueError(f"se_gate: expected one of {sorted(_GATES)}, got {self.se_gate!r}")

    @property
    def num_blocks(self) -> int:
        return sum(s.depth for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (stages as a list of dicts)."""
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return {"family": "mobilenet", **d}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MobileNetArch:
        """Inverse of ``to_dict``. Unknown or missing keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"architecture: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        family = data.pop("family", "mobilenet")
        if family != "mobilenet":
            raise ValueError(f"family: expected 'mobilenet', got {family!r}")
        _check_keys("architecture", data, cls)
        stages = data.get("stages")
        if not isinstance(stages, list):
            raise ValueError("stages: expected a list of stage objects")
        parsed = []
        for i, s in enumerate(stages):
            if not isinstance(s, dict):
                raise ValueError(f"stages[{i}]: expected an object")
            _check_keys(f"stages[{i}]", s, Stage)
            parsed.append(Stage(**s))
        return cls(**{**data, "stages": tuple(parsed)})

    @classmethod
    def from_json(cls, text: str) -> MobileNetArch:
        return cls.from_dict(json.loads(text))


_GATES: dict[str, Callable[[], nn.Module]] = {"hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid}


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")


def _check_activation(name: str, value: Any) -> None:
    if value not in ACTIVATIONS:
        raise ValueError(f"{name}: expected one of {sorted(ACTIVATIONS)}, got {value!r}")


def _check_keys(where: str, data: dict[str, Any], cls: type) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {sorted(known)}")
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")



# --------------------------------------------------------------------------- layers


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
        self.gate = _GATES[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> [SE] -> project 1x1, residual when shapes match."""

    def __init__(self, cin: int, stage: Stage, stride: int, se_ratio: float, se_gate: str) -> None:
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

    def __init__(self, arch: MobileNetArch, *, num_classes: int, in_channels: int) -> None:
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


def build_model(arch: MobileNetArch, *, num_classes: int = 1000, in_channels: int = 3) -> MobileNet:
    """Build the network for ``arch``. Pure: ``arch`` is not modified.

    Args:
        arch: the architecture record.
        num_classes: width of the classifier output.
        in_channels: channels of the input images (1 for gray, 3 for RGB, ...).
    """
    if not isinstance(arch, MobileNetArch):
        raise TypeError(f"arch: expected MobileNetArch, got {type(arch).__name__}")
    _check_int("num_classes", num_classes, 1)
    _check_int("in_channels", in_channels, 1)
    return MobileNet(arch, num_classes=num_classes, in_channels=in_channels)


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


PRESETS: dict[str, Callable[[], MobileNetArch]] = {
    "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v3_large": _mobilenet_v3_large,
    "mobilenet_v3_small": _mobilenet_v3_small,
    "mobilenet_tiny": _mobilenet_tiny,
    "mobilenet_micro": _mobilenet_micro,
}


def preset(name: str) -> MobileNetArch:
    """Return the named architecture; unknown names raise ``ValueError`` listing valid ones."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(PRESETS)}") from None


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
        if len(self.base_channels) != len(self.strides) or not self.base_channels:
            raise ValueError(
                f"base_channels and strides: expected lists of the same non-zero length, "
                f"got {len(self.base_channels)} and {len(self.strides)}"
            )
        for s in self.strides:
            if s not in (1, 2):
                raise ValueError(f"strides: expected values 1 or 2, got {s!r}")
        for c in (*self.base_channels, self.stem_base):
            _check_int("base_channels", c, 1)
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride: expected 1 or 2, got {self.stem_stride!r}")
        _check_int("head_channels", self.head_channels, 0)
        _check_int("max_depth", self.max_depth, 1)

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
        return d

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
        )

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MobileNetSpace:
        """Build from a config table (lists become tuples); unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for search space 'mobilenet'; valid: {sorted(known)}")
        conv = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        return cls(**conv)

