"""Low-rank factorization: truncated SVD of pointwise convolutions and linears, Tucker-2 of k x k convolutions.

SVD: a layer ``W`` (out x in) becomes two: ``A = sqrt(S_r) V_r^T`` (rank x in, no bias)
followed by ``B = U_r sqrt(S_r)`` (out x rank, the original bias), so ``B A`` is the best
rank-``r`` approximation of ``W`` (Eckart-Young). For a 1x1 convolution the first
factor keeps the stride, padding and dilation; the second is a plain 1x1 convolution.

Tucker-2 (Kim et al., "Compression of Deep Convolutional Neural Networks for Fast and Low
Power Mobile Applications", ICLR 2016): a dense k x k convolution ``W`` (out x in x k x k)
is decomposed along its two channel modes by HOSVD, ``W ~ C x_0 U_out x_1 U_in`` with
``U_out`` (out x r_out) and ``U_in`` (in x r_in) the leading left singular vectors of the
mode unfoldings and the core ``C = W x_0 U_out^T x_1 U_in^T`` (r_out x r_in x k x k). It
becomes three convolutions: 1x1 ``in -> r_in`` (``U_in^T``), the k x k core ``r_in -> r_out``
(the original stride, padding, dilation), 1x1 ``r_out -> out`` (``U_out``, the original bias).
At full ranks the factors are orthogonal and the three reproduce the layer.
"""

from __future__ import annotations

import copy
from collections.abc import Collection

import torch
from torch import nn

__all__ = ["factorize", "low_rank", "low_rank_rank", "tucker", "tucker2"]


def low_rank_rank(ratio: float, out_features: int, in_features: int) -> int:
    """``max(1, round(ratio * min(out, in)))``."""
    return max(1, round(ratio * min(out_features, in_features)))


def _is_pointwise(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"
    )


def factorize(layer: nn.Module, rank: int) -> nn.Sequential:
    """Two layers whose composition is the rank-``rank`` SVD truncation of ``layer``.

    Args:
        layer: an ``nn.Linear`` or a pointwise ``nn.Conv2d`` (1x1, groups=1).
        rank: inner width, ``1 <= rank <= min(out, in)``.

    Raises:
        TypeError: another kind of layer. ValueError: rank out of range.
    """
    if type(layer) is nn.Linear:
        w = layer.weight.detach()
    elif _is_pointwise(layer):
        w = layer.weight.detach()[:, :, 0, 0]
    else:
        raise TypeError(f"layer: expected nn.Linear or a 1x1 nn.Conv2d with groups=1, got {layer!r}")
    out_f, in_f = w.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ValueError(f"rank: expected 1..{min(out_f, in_f)}, got {rank!r}")
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:rank].sqrt()
    a = (root[:, None] * vh[:rank]).to(w.dtype)
    b = (u[:, :rank] * root[None, :]).to(w.dtype)
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(in_f, rank, bias=False), nn.Linear(rank, out_f, bias=bias)
        first.weight.data.copy_(a)
        second.weight.data.copy_(b)
    else:
        first = nn.Conv2d(in_f, rank, 1, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                          bias=False)
        second = nn.Conv2d(rank, out_f, 1, bias=bias)
        first.weight.data.copy_(a[:, :, None, None])
        second.weight.data.copy_(b[:, :, None, None])
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    factors = nn.Sequential(first, second).to(device=layer.weight.device)
    factors.train(layer.training)
    return factors


def low_rank(
    model: nn.Module,
    ratio: float,
    *,
    only_if_smaller: bool = True,
    exclude: Collection[str] = (),
) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` and pointwise ``nn.Conv2d`` factorized.

    Each such layer (out x in) is replaced by ``factorize(layer, rank)`` with
    ``rank = max(1, round(ratio * min(out, in)))`` (an ``nn.Sequential`` of two layers,
    bias on the second). ``model`` is not modified.

    Args:
        model: the network.
        ratio: rank ratio in (0, 1]; 1 keeps the full rank (outputs equal up to float error).
        only_if_smaller: skip a layer when ``rank * (in + out) >= in * out`` (no fewer
            parameters); False factorizes every eligible layer (e.g. to check exactness).
        exclude: qualified module names to leave alone (e.g. ``{"classifier.1"}``).

    Raises:
        ValueError: ``ratio`` outside (0, 1].
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected a number in (0, 1], got {ratio!r}")
    new = copy.deepcopy(model)
    targets = [
        (name, m) for name, m in new.named_modules()
        if name and name not in exclude and (type(m) is nn.Linear or _is_pointwise(m))
    ]
    for name, m in targets:
        out_f, in_f = m.weight.shape[:2]
        rank = low_rank_rank(ratio, out_f, in_f)
        if only_if_smaller and rank * (in_f + out_f) >= in_f * out_f:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        setattr(parent, child, factorize(m, rank))
    return new


def _is_dense_spatial(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.groups == 1 and m.kernel_size != (1, 1) and m.padding_mode == "zeros"


def _leading(unfolded: torch.Tensor, rank: int) -> torch.Tensor:
    u, _, _ = torch.linalg.svd(unfolded, full_matrices=False)
    return u[:, :rank]


def tucker2(layer: nn.Conv2d, rank_out: int, rank_in: int) -> nn.Sequential:
    """Three convolutions whose composition is the Tucker-2 (HOSVD) approximation of ``layer``.

    Args:
        layer: a dense ``nn.Conv2d`` (groups=1) with a kernel larger than 1x1.
        rank_out, rank_in: core widths, ``1 <= rank_out <= out``, ``1 <= rank_in <= in``.

    Raises:
        TypeError: another kind of layer. ValueError: a rank out of range.
    """
    if not _is_dense_spatial(layer):
        raise TypeError(f"layer: expected a k x k nn.Conv2d with groups=1 and k > 1, got {layer!r}")
    w = layer.weight.detach().double()
    out_c, in_c, kh, kw = w.shape
    if not (1 <= rank_out <= out_c and 1 <= rank_in <= in_c):
        raise ValueError(f"ranks: expected 1..{out_c} and 1..{in_c}, got {rank_out!r}, {rank_in!r}")
    u_out = _leading(w.reshape(out_c, -1), rank_out)  # mode-0 unfolding
    u_in = _leading(w.permute(1, 0, 2, 3).reshape(in_c, -1), rank_in)  # mode-1 unfolding
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    dtype = layer.weight.dtype
    first = nn.Conv2d(in_c, rank_in, 1, bias=False)
    middle = nn.Conv2d(rank_in, rank_out, (kh, kw), stride=layer.stride, padding=layer.padding,
                       dilation=layer.dilation, bias=False)
    last = nn.Conv2d(rank_out, out_c, 1, bias=layer.bias is not None)
    first.weight.data.copy_(u_in.t()[:, :, None, None].to(dtype))
    middle.weight.data.copy_(core.to(dtype))
    last.weight.data.copy_(u_out[:, :, None, None].to(dtype))
    if layer.bias is not None:
        last.bias.data.copy_(layer.bias.detach())
    factors = nn.Sequential(first, middle, last).to(device=layer.weight.device)
    factors.train(layer.training)
    return factors


def tucker(model: nn.Module, ratio: float, *, only_if_smaller: bool = True, exclude: Collection[str] = ()) -> nn.Module:
    """A copy of ``model`` with every dense k x k ``nn.Conv2d`` replaced by ``tucker2`` at ranks ``ratio`` x channels.

    ``rank = max(1, round(ratio * channels))`` on each side. Depthwise convolutions (MobileNet's
    k x k layers) are not dense and are left alone, as are layers whose three factors would not
    have fewer parameters (``only_if_smaller``).

    Raises:
        ValueError: ``ratio`` outside (0, 1].
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected a number in (0, 1], got {ratio!r}")
    new = copy.deepcopy(model)
    targets = [(name, m) for name, m in new.named_modules() if name and name not in exclude and _is_dense_spatial(m)]
    for name, m in targets:
        out_c, in_c, kh, kw = m.weight.shape
        r_out, r_in = max(1, round(ratio * out_c)), max(1, round(ratio * in_c))
        if only_if_smaller and in_c * r_in + r_in * r_out * kh * kw + r_out * out_c >= out_c * in_c * kh * kw:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        setattr(parent, child, tucker2(m, r_out, r_in))
    return new
