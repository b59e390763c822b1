"""Cost model: parameters, multiply-accumulates and size in bytes of a network.

MACs follow the convention of the MobileNet papers: multiply-accumulates of convolution
and linear layers only (no bias, normalization, activation, pooling or the SE rescale).
thop is told so explicitly, through ``custom_ops`` that count zero for every other layer
type it would otherwise count, so that its totals match that convention.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["Cost", "count_bytes", "count_macs", "count_params", "measure", "flop_counter_macs"]


@dataclass(frozen=True)
class Cost:
    """Cost of one network at one input shape."""

    params: int
    macs: int
    bytes: int
    resolution: int
    in_channels: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _zero_ops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    module.total_ops += torch.zeros(1, dtype=torch.float64)


# Layer types thop would count (or warn about) that the papers' convention leaves out.
_UNCOUNTED = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.GELU,
    nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Dropout, nn.Identity, nn.Flatten,
)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not); buffers excluded."""
    return sum(p.numel() for p in model.parameters())


def count_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in the state dict (parameters and buffers) at their dtype."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _dummy(model: nn.Module, in_channels: int, resolution: int) -> torch.Tensor:
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros(1, in_channels, resolution, resolution, dtype=dtype)


def count_macs(model: nn.Module, *, in_channels: int, resolution: int) -> int:
    """Multiply-accumulates of conv and linear layers for one image, measured with thop."""
    import thop

    probe = copy.deepcopy(model).eval()
    ops = {t: _zero_ops for t in _UNCOUNTED}
    with torch.no_grad():
        macs, _ = thop.profile(probe, inputs=(_dummy(probe, in_channels, resolution),), custom_ops=ops, verbose=False)
    return int(round(float(macs)))


def flop_counter_macs(model: nn.Module, *, in_channels: int, resolution: int) -> int:
    """Independent count from ``torch.utils.flop_counter`` (FLOPs / 2), for cross-checks."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(_dummy(probe, in_channels, resolution))
    return counter.get_total_flops() // 2


def measure(model: nn.Module, *, in_channels: int, resolution: int) -> Cost:
    """Parameters, MACs and bytes of ``model`` at ``in_channels x resolution x resolution``."""
    return Cost(
        params=count_params(model),
        macs=count_macs(model, in_channels=in_channels, resolution=resolution),
        bytes=count_bytes(model),
        resolution=resolution,
        in_channels=in_channels,
    )
