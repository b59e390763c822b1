"""Post-training static int8 quantization with PyTorch's FX graph mode (CPU backends).

``quantize_int8`` traces the trained float model with ``torch.fx``, inserts observers
(``prepare_fx`` with the backend's default ``QConfigMapping``: per-channel symmetric int8
weights, per-tensor affine uint8 activations; conv + batch norm (+ ReLU) fused),
calibrates them on a few training batches and converts (``convert_fx``) to a model whose
convolutions, linears, residual adds, hard-swish and SE multiplies run as int8 kernels
(fbgemm/x86 or qnnpack). It takes and returns float tensors.

This works for every fednas MobileNet preset on torch 2.13 (ReLU6, hard-swish, SE with
hard-sigmoid, residual adds): no eager-mode rewrite or ONNX Runtime fallback was needed.
``torch.ao.quantization`` is deprecated upstream (its warning speaks of removal in 2.10,
yet it ships in 2.13); its successor is torchao's PT2E flow, not installed here. The
deprecation and observer warnings are silenced inside these functions.

Backends measured on this x86 CPU (torch 2.13, mobilenet_tiny): "x86", "fbgemm" and
"onednn" agree with the float model; "qnnpack" (meant for ARM) gives wrong outputs here
(a conv + batch norm + ReLU6 alone has relative error 1.2 against 0.03 for "x86"; the tiny
net falls to chance accuracy), so use it only where it is verified.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fednas.train import evaluate

__all__ = ["CALIBRATION_SAMPLES", "INT8_BACKENDS", "Int8Model", "evaluate_int8", "quantize_int8", "serialized_bytes"]

INT8_BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")
CALIBRATION_SAMPLES = 256  # training images that calibrate the int8 observers (search and export)


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what storing the weights costs."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@dataclass(frozen=True)
class Int8Model:
    """A quantized model and what it weighs.

    Attributes:
        model: the converted ``torch.fx.GraphModule`` (float in, float out, eval mode).
        backend: the quantized engine it was converted for (run it with that engine).
        bytes: serialized state-dict bytes of the int8 model.
        float_bytes: the same for the float model it came from.
    """

    model: nn.Module
    backend: str
    bytes: int
    float_bytes: int

    @property
    def size_ratio(self) -> float:
        return self.bytes / self.float_bytes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with quantized_engine(self.backend), torch.no_grad():
            return self.model(x)


@contextlib.contextmanager
def quantized_engine(backend: str) -> Iterator[None]:
    """Use ``backend`` as ``torch.backends.quantized.engine`` inside the block, then restore."""
    if backend not in INT8_BACKENDS or backend not in torch.backends.quantized.supported_engines:
        valid = [b for b in INT8_BACKENDS if b in torch.backends.quantized.supported_engines]
        raise ValueError(f"unknown or unsupported int8 backend {backend!r}; valid here: {', '.join(valid)}")
    saved = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = saved


def _batches(calibration: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(calibration, torch.Tensor):
        for start in range(0, len(calibration), batch_size):
            yield calibration[start : start + batch_size]
    else:
        yield from calibration


def quantize_int8(
    model: nn.Module,
    calibration: torch.Tensor | Iterable[torch.Tensor],
    *,
    backend: str = "x86",
    batch_size: int = 64,
) -> Int8Model:
    """Static int8 quantization of a trained float model, calibrated on ``calibration``.

    Args:
        model: the trained float model (not modified).
        calibration: training inputs (a tensor, split into ``batch_size`` batches, or an
            iterable of input batches) that set the activation ranges.
        backend: "x86" (default), "fbgemm", "onednn" or "qnnpack" (wrong results on x86
            CPUs in torch 2.13: see the module docstring).
        batch_size: calibration batch size when ``calibration`` is a tensor.

    Raises:
        ValueError: unknown or unsupported backend, or no calibration data.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    float_model = copy.deepcopy(model).eval()
    batches = iter(_batches(calibration, batch_size))
    first = next(batches, None)
    if first is None:
        raise ValueError("calibration: expected at least one batch of inputs")
    with quantized_engine(backend), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation of torch.ao.quantization, observer notices
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(backend), example_inputs=(first,))
        prepared(first)
        for batch in batches:
            prepared(batch)
        quantized = convert_fx(prepared)
    return Int8Model(quantized, backend, serialized_bytes(quantized), serialized_bytes(model))


def evaluate_int8(q: Int8Model, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> tuple[float, float]:
    """``(mean loss, accuracy)`` of the int8 model, as ``fednas.train.evaluate`` computes them."""
    with quantized_engine(q.backend):
        return evaluate(q.model, x, y, batch_size=batch_size)
