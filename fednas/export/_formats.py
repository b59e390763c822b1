"""Exporters: one per file format, looked up by name in ``EXPORTERS`` (``fednas.export._registry``).

Each exporter writes its file, checks it against PyTorch right away, and returns a record
(file, bytes, seconds and what the check measured) for ``metrics.json`` and the card.
"""

from __future__ import annotations

import importlib.util
import io
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fednas.latency import quiet_export

__all__ = ["ExportContext", "ExportError", "ExecuTorchExporter", "Exporter", "Int8Exporter", "ONNX_TOLERANCE",
           "OnnxExporter", "TorchScriptExporter"]

ONNX_TOLERANCE = 1e-4  # max abs difference between onnxruntime and PyTorch outputs


class ExportError(RuntimeError):
    """An exported file does not reproduce the PyTorch model (a bug, not a user error)."""


@dataclass
class ExportContext:
    """What every exporter may use; ``records`` holds the records of exporters already run."""

    model: nn.Module
    out: Path
    in_channels: int
    resolution: int
    calibration: torch.Tensor  # training images for int8 calibration
    test_x: torch.Tensor
    test_y: torch.Tensor
    seed: int = 0
    onnx_dynamo: bool | None = None  # None: the dynamo exporter when onnxscript is installed
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def random_inputs(self, batch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + batch)
        return torch.randn(batch, self.in_channels, self.resolution, self.resolution, generator=gen)


class Exporter(ABC):
    """One output format."""

    name: str = ""
    filename: str = ""
    extra: str = "export"
    modules: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()  # formats that must be exported first
    default: bool = True  # exported when --formats is not given (and the extra is installed)

    def missing(self) -> str | None:
        """None when the format's libraries are importable, else a message naming the extra."""
        absent = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if not absent:
            return None
        return (f"{self.name} needs the Python package {', '.join(absent)}; "
                f"install the extra: pip install 'fednas[{self.extra}]'")

    @abstractmethod
    def export(self, ctx: ExportContext) -> dict[str, Any]:
        """Write ``ctx.out / self.filename``, check it, and return its record."""


@torch.no_grad()
def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return model(x).numpy()


def _accuracy(logits: np.ndarray, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y.numpy()).mean()) if len(y) else float("nan")


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_logits(session: Any, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i : i + batch].numpy()})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0,))


class OnnxExporter(Exporter):
    name = "onnx"
    filename = "model.onnx"
    modules = ("onnx", "onnxruntime")

    def export(self, ctx: ExportContext) -> dict[str, Any]:
        import onnx

        path = ctx.out / self.filename
        dynamo = ctx.onnx_dynamo if ctx.onnx_dynamo is not None else importlib.util.find_spec("onnxscript") is not None
        start = time.perf_counter()
        example = ctx.random_inputs(2)
        with quiet_export():
            if dynamo:
                program = torch.onnx.export(
                    ctx.model, (example,), None, input_names=["input"], output_names=["logits"], dynamo=True,
                    dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=True, verbose=False,
                )
                proto = program.model_proto
            else:
                buf = io.BytesIO()
                torch.onnx.export(
                    ctx.model, (example,), buf, input_names=["input"], output_names=["logits"], dynamo=False,
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                )
                proto = onnx.load_from_string(buf.getvalue())
        for node in proto.graph.node:  # stack traces and local file paths of the exporting machine
            del node.metadata_props[:]
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
        seconds = time.perf_counter() - start
        session = _ort_session(path)
        diff = 0.0
        for batch in (1, 5):
            x = ctx.random_inputs(batch)
            diff = max(diff, float(np.abs(_ort_logits(session, x) - _reference(ctx.model, x)).max()))
        if not diff <= ONNX_TOLERANCE:
            raise ExportError(f"{path}: onnxruntime differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE:g})")
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        import onnxruntime

        return {
            "file": self.filename, "bytes": path.stat().st_size, "seconds": round(seconds, 3),
            "exporter": "dynamo" if dynamo else "torchscript", "opset": opset, "max_abs_diff": diff,
            "tolerance": ONNX_TOLERANCE, "accuracy": _accuracy(_ort_logits(session, ctx.test_x), ctx.test_y),
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "inputs": "input [batch, C, H, W] float32",
            "outputs": "logits [batch, classes]",
        }


def _calibration_reader(name: str, x: torch.Tensor, batch: int = 32) -> Any:
    """onnxruntime's calibrator input: batches of training images."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{name: x[i : i + batch].numpy()} for i in range(0, len(x), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return Reader()


class Int8Exporter(Exporter):
    """Static int8 quantization of the ONNX model, calibrated on training images.

    QOperator format (QLinearConv ...), int8 weights per channel kept to 7 bits
    (``reduce_range``: no saturation in the u8s8 kernels of x86 CPUs without VNNI), uint8
    activations, MinMax calibration. QOperator rather than QDQ because QDQ's extra
    Quantize/Dequantize nodes make files of very small networks no smaller than the float ones.
    """

    name = "int8"
    filename = "model.int8.onnx"
    modules = ("onnx", "onnxruntime")
    requires = ("onnx",)

    def export(self, ctx: ExportContext) -> dict[str, Any]:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        fp32 = ctx.out / ctx.records["onnx"]["file"]
        path = ctx.out / self.filename
        start = time.perf_counter()
        reader = _calibration_reader("input", ctx.calibration)
        with tempfile.TemporaryDirectory() as tmp, quiet_export():
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32), str(pre))
            quantize_static(
                str(pre), str(path), reader, quant_format=QuantFormat.QOperator, per_channel=True,
                reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
        seconds = time.perf_counter() - start
        session, ref = _ort_session(path), _ort_session(fp32)
        q_logits, f_logits = _ort_logits(session, ctx.test_x), _ort_logits(ref, ctx.test_x)
        return {
            "file": self.filename, "bytes": path.stat().st_size, "seconds": round(seconds, 3),
            "method": "onnxruntime quantize_static, QOperator, per-channel int8 weights, uint8 activations, MinMax",
            "calibration_samples": int(len(ctx.calibration)), "accuracy": _accuracy(q_logits, ctx.test_y),
            "fp32_accuracy": _accuracy(f_logits, ctx.test_y),
            "agreement": float((q_logits.argmax(1) == f_logits.argmax(1)).mean()) if len(q_logits) else float("nan"),
            "fp32_bytes": fp32.stat().st_size, "size_ratio": path.stat().st_size / fp32.stat().st_size,
        }


class TorchScriptExporter(Exporter):
    name = "torchscript"
    filename = "model.torchscript.pt"
    modules = ()

    def export(self, ctx: ExportContext) -> dict[str, Any]:
        path = ctx.out / self.filename
        start = time.perf_counter()
        with quiet_export():  # torch.jit is deprecated in favour of torch.export, and still works
            scripted = torch.jit.script(ctx.model)
            scripted.save(str(path))
            loaded = torch.jit.load(str(path))
        seconds = time.perf_counter() - start
        x = ctx.random_inputs(5)
        with torch.no_grad():
            diff = float((loaded(x) - ctx.model(x)).abs().max())
        if not diff <= ONNX_TOLERANCE:
            raise ExportError(f"{path}: TorchScript differs from PyTorch by {diff:.3g}")
        return {"file": self.filename, "bytes": path.stat().st_size, "seconds": round(seconds, 3),
                "max_abs_diff": diff, "torch": torch.__version__}


class ExecuTorchExporter(Exporter):
    """An ExecuTorch program lowered to the XNNPACK backend (optional extra ``executorch``)."""

    name = "executorch"
    filename = "model.pte"
    extra = "executorch"
    modules = ("executorch",)

    def export(self, ctx: ExportContext) -> dict[str, Any]:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        path = ctx.out / self.filename
        start = time.perf_counter()
        example = ctx.random_inputs(1)
        with quiet_export():
            program = torch.export.export(ctx.model, (example,))
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
        path.write_bytes(lowered.buffer)
        seconds = time.perf_counter() - start
        record: dict[str, Any] = {"file": self.filename, "bytes": path.stat().st_size, "seconds": round(seconds, 3),
                                  "backend": "XNNPACK", "batch": 1}
        try:
            from executorch.runtime import Runtime
        except ImportError:  # pragma: no cover - the pybindings are part of the wheel
            return record
        method = Runtime.get().load_program(str(path)).load_method("forward")
        out = method.execute([example])[0]
        diff = float((out - _reference_t(ctx.model, example)).abs().max())
        if not diff <= ONNX_TOLERANCE:
            raise ExportError(f"{path}: ExecuTorch differs from PyTorch by {diff:.3g}")
        record["max_abs_diff"] = diff
        return record


@torch.no_grad()
def _reference_t(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)

