"""Mixed-precision weights: a bit width per part of the model, applied after training, and the packed bytes.

A candidate's labels ``weight_bits`` (every conv and linear weight) and ``s{i}_wbits`` (the
weights of stage ``i``'s blocks; 0 keeps ``weight_bits``) choose among ``PRECISIONS``:

* 32: float32, as trained;
* 16: float16 (each weight rounded to half precision);
* 8, 6, 4: symmetric integers, one float16 scale per output channel, codes in
  ``[-(2^(b-1)-1), 2^(b-1)-1]`` (round to nearest), offset by ``2^(b-1)`` and bit-packed
  (``pack_bits``: ``ceil(n * b / 8)`` bytes).

``quantize_weights`` returns the model with its weights replaced by exactly what the packed
file decodes to (codes times the float16 scale), and the ``PackedWeights`` it was packed
into; ``unpack_weight`` decodes them back (tests check the round trip bit for bit). Everything that
is not a conv or linear weight (biases, norm layers and their statistics) is kept and
counted at float32. This is weight-only post-training quantization: activations stay float.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fednas.compress._codecs import pack_bits, unpack_bits

__all__ = ["PRECISIONS", "PackedWeights", "packed_bytes", "quantize_weights", "unpack_weight", "weight_plan"]

PRECISIONS = (32, 16, 8, 6, 4)


def _weights(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear modules by the name of their weight parameter."""
    return {f"{name}.weight" if name else "weight": m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}


def weight_plan(model: nn.Module, arch: Any, weight_bits: int, stage_bits: tuple[int, ...] = ()) -> dict[str, int]:
    """The bit width of every conv/linear weight of ``model``.

    ``stage_bits[i]`` (0: ``weight_bits``) applies to the blocks of ``arch.stages[i]``: the
    families keep their blocks in order in ``model.blocks``, stage after stage, each stage's
    ``depth`` of them. Everything else (stem, head, classifier) takes ``weight_bits``.

    Raises:
        ValueError: a width not in ``PRECISIONS``; stage widths for a model without stages,
            or more of them than the architecture has stages.
    """
    for b in (weight_bits, *[s for s in stage_bits if s]):
        if b not in PRECISIONS:
            raise ValueError(f"weight bits {b!r}: expected one of {PRECISIONS}")
    plan = dict.fromkeys(_weights(model), weight_bits)
    if not any(stage_bits):
        return plan
    stages = getattr(arch, "stages", None)
    blocks = getattr(model, "blocks", None)
    if stages is None or not isinstance(blocks, nn.Sequential):
        raise ValueError(f"per-stage weight bits need a family with stages and model.blocks; "
                         f"{type(model).__name__} has none")
    if len(stage_bits) > len(stages) and any(stage_bits[len(stages):]):
        raise ValueError(f"s{len(stages) + 1}_wbits: the architecture has {len(stages)} stages")
    owner: list[int] = [i for i, s in enumerate(stages) for _ in range(int(s.depth))]
    if len(owner) != len(blocks):
        raise ValueError(f"model.blocks has {len(blocks)} blocks, the architecture's stages {len(owner)}")
    for k, block in enumerate(blocks):
        bits = stage_bits[owner[k]] if owner[k] < len(stage_bits) else 0
        if bits:
            for name in _weights(block):
                plan[f"blocks.{k}.{name}"] = bits
    return plan


@dataclass
class PackedWeights:
    """A model's weights at their planned widths, as they would be stored.

    Attributes:
        tensors: per planned weight, ``{"bits", "shape", "data"}`` and for integers ``"scales"``
            (float16 bytes, one per output channel); ``data`` is the packed codes, float16 or float32 bytes.
        rest: bytes of everything else in the state dict at float32 (biases, norms and their statistics).
    """

    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    rest: int = 0

    @property
    def nbytes(self) -> int:
        """Packed weights + their scales + the float32 rest."""
        return self.rest + sum(len(t["data"]) + len(t.get("scales", b"")) for t in self.tensors.values())


def _quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, dict[str, Any]]:
    shape = list(w.shape)
    if bits == 32:
        return w, {"bits": 32, "shape": shape, "data": w.detach().float().numpy().tobytes()}
    if bits == 16:
        half = w.detach().half()
        return half.float(), {"bits": 16, "shape": shape, "data": half.numpy().tobytes()}
    top = (1 << (bits - 1)) - 1
    flat = w.detach().float().reshape(shape[0], -1)
    scales = (flat.abs().amax(1) / top).half()  # stored as float16, and used as stored
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero channel: codes 0, any scale
    s = scales.float()[:, None]
    codes = torch.clamp(torch.round(flat / s), -top, top)
    record = {"bits": bits, "shape": shape, "data": pack_bits(codes.to(torch.int64).numpy().reshape(-1) + top + 1, bits).tobytes(),
              "scales": scales.numpy().tobytes()}
    return (codes * s).reshape(shape), record


def unpack_weight(record: Mapping[str, Any]) -> torch.Tensor:
    """The float32 weight a ``PackedWeights.tensors`` entry decodes to."""
    shape, bits = list(record["shape"]), int(record["bits"])
    count = int(np.prod(shape))
    if bits == 32:
        return torch.from_numpy(np.frombuffer(record["data"], np.float32).copy()).reshape(shape)
    if bits == 16:
        return torch.from_numpy(np.frombuffer(record["data"], np.float16).astype(np.float32)).reshape(shape)
    scales = np.frombuffer(record["scales"], np.float16).astype(np.float32)
    top = (1 << (bits - 1)) - 1
    codes = (unpack_bits(np.frombuffer(record["data"], np.uint8), bits, count) - top - 1).reshape(shape[0], -1)
    codes = codes.astype(np.float32)
    return torch.from_numpy(codes * scales[:, None]).reshape(shape)


def quantize_weights(model: nn.Module, plan: Mapping[str, int]) -> tuple[nn.Module, PackedWeights]:
    """A copy of ``model`` whose planned weights hold what their packed form decodes to, and that packed form."""
    out = copy.deepcopy(model).eval()
    packed = PackedWeights()
    params = dict(out.named_parameters())
    with torch.no_grad():
        for name, bits in plan.items():
            value, record = _quantize(params[name], int(bits))
            params[name].copy_(value)
            packed.tensors[name] = record
    for name, tensor in out.state_dict().items():
        if name not in plan and tensor.is_floating_point():
            packed.rest += tensor.numel() * 4
    return out, packed


def packed_bytes(model: nn.Module, plan: Mapping[str, int]) -> int:
    """``quantize_weights(model, plan)[1].nbytes``."""
    return quantize_weights(model, plan)[1].nbytes
