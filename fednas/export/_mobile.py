"""Phone runtimes: TFLite / LiteRT (Android) and Core ML (iOS), each checked where this machine can check it.

* ``tflite``: float32 flatbuffer by litert-torch, batch 1, NCHW input as in PyTorch; run in
  the LiteRT interpreter and compared with PyTorch like ONNX is.
* ``tflite_int8``: full-integer int8 (int8 weights, activations, input and output) by Google's
  AI Edge Quantizer (``static_wi8_ai8``, min-max calibration on training images, as the int8
  ONNX); its held-out accuracy goes into the card.
* ``coreml``: a Core ML mlprogram package by coremltools from ``torch.export``. Core ML runs
  only on Apple's systems: elsewhere the package's spec is loaded and its input/output shapes
  and convolution/linear counts are compared with the PyTorch model; the numerics are checked
  (and recorded as checked) only on macOS.
"""

from __future__ import annotations

import collections
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fednas.export._formats import ExportContext, ExportError, Exporter, _accuracy, _reference
from fednas.latency import quiet_export, tflite_interpreter, to_tflite
from fednas.latency._runtimes import native_quiet

__all__ = ["COREML_TOLERANCE", "TFLITE_RTOL", "CoreMLExporter", "TFLiteExporter", "TFLiteInt8Exporter", "tflite_logits"]

COREML_TOLERANCE = 5e-2  # max abs logit difference on macOS: the package computes in float16
TFLITE_RTOL = 1e-4  # max abs logit difference of the float TFLite file, times max(1, largest |logit|)


def tflite_logits(interpreter: Any, x: torch.Tensor) -> np.ndarray:
    """Logits of ``x`` (N, C, H, W) one image at a time, through int8 input/output quantization if the file has it."""
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in x.numpy():
        value = image[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.round(value / scale) + zero, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        rows.append(y.reshape(-1))
    return np.stack(rows) if rows else np.zeros((0,), np.float32)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"litert_torch": version("litert-torch"), "ai_edge_litert": version("ai-edge-litert")}


class TFLiteExporter(Exporter):
    name = "tflite"
    filename = "model.tflite"
    extra = "tflite"
    modules = ("litert_torch", "ai_edge_litert")
    default = False

    def export(self, ctx: ExportContext) -> dict[str, Any]:
        path = ctx.out / self.filename
        start = time.perf_counter()
        path.write_bytes(to_tflite(ctx.model, ctx.random_inputs(1)))
        seconds = time.perf_counter() - start
        interpreter = tflite_interpreter(path.read_bytes())
        x = torch.cat([ctx.random_inputs(1), ctx.random_inputs(3)])
        reference = _reference(ctx.model, x)
        diff = float(np.abs(tflite_logits(interpreter, x) - reference).max())
        # XNNPACK sums in another order than PyTorch: through a deep network float32 rounding grows with the
        # logits' size (1e-4 at logits of 6 measured on mobilenet_v2), so the bound scales with them.
        tolerance = TFLITE_RTOL * max(1.0, float(np.abs(reference).max()))
        if not diff <= tolerance:
            raise ExportError(f"{path}: the LiteRT interpreter differs from PyTorch by {diff:.3g} (> {tolerance:.3g})")
        shape = ", ".join(str(d) for d in interpreter.get_input_details()[0]["shape"])
        return {
            "file": self.filename, "bytes": path.stat().st_size, "seconds": round(seconds, 3), "max_abs_diff": diff,
            "tolerance": tolerance, "accuracy": _accuracy(tflite_logits(interpreter, ctx.test_x), ctx.test_y),
            **_versions(), "inputs": f"input [{shape}] float32 (NCHW, as in PyTorch)", "outputs": "logits [1, classes]",
        }


class TFLiteInt8Exporter(Exporter):
    """Full-integer int8 TFLite: the float flatbuffer quantized by AI Edge Quantizer, calibrated on training images."""

    name = "tflite_int8"
    filename = "model.int8.tflite"
    extra = "tflite"
    modules = ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")
    requires = ("tflite",)
    default = False

    def export(self, ctx: ExportContext) -> dict[str, Any]:
        fp32 = ctx.out / ctx.records["tflite"]["file"]
        path = ctx.out / self.filename
        start = time.perf_counter()
        float_interpreter = tflite_interpreter(fp32.read_bytes())
        signature = float_interpreter.get_signature_list()
        (key, io_names), = signature.items()
        (input_name,) = io_names["inputs"]
        with quiet_export(), native_quiet():
            from ai_edge_quantizer import quantizer, recipe

            q = quantizer.Quantizer(fp32.read_bytes(), recipe.static_wi8_ai8())
            calibration = {key: [{input_name: image[None]} for image in ctx.calibration.numpy()]}
            result = q.quantize(q.calibrate(calibration, num_threads=1), enable_progress_report=False)
        path.write_bytes(bytes(result.quantized_model))
        seconds = time.perf_counter() - start
        interpreter = tflite_interpreter(path.read_bytes())
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        q_logits, f_logits = tflite_logits(interpreter, ctx.test_x), tflite_logits(float_interpreter, ctx.test_x)
        return {
            "file": self.filename, "bytes": path.stat().st_size, "seconds": round(seconds, 3),
            "method": "AI Edge Quantizer static_wi8_ai8 (int8 weights and activations, min-max calibration)",
            "calibration_samples": int(len(ctx.calibration)), "accuracy": _accuracy(q_logits, ctx.test_y),
            "fp32_accuracy": _accuracy(f_logits, ctx.test_y),
            "agreement": float((q_logits.argmax(1) == f_logits.argmax(1)).mean()) if len(q_logits) else float("nan"),
            "fp32_bytes": fp32.stat().st_size, "size_ratio": path.stat().st_size / fp32.stat().st_size,
            "input_quantization": {"dtype": np.dtype(inp["dtype"]).name, "scale": float(inp["quantization"][0]),
                                   "zero_point": int(inp["quantization"][1])},
            "output_quantization": {"dtype": np.dtype(out["dtype"]).name, "scale": float(out["quantization"][0]),
                                    "zero_point": int(out["quantization"][1])},
            **_versions(),
        }


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _layer_counts(model: nn.Module) -> dict[str, int]:
    return {"conv": sum(isinstance(m, nn.Conv2d) for m in model.modules()),
            "linear": sum(isinstance(m, nn.Linear) for m in model.modules())}


class CoreMLExporter(Exporter):
    """A Core ML mlprogram (float16 compute, float32 input and output, iOS 16 / macOS 13 and later)."""

    name = "coreml"
    filename = "model.mlpackage"
    extra = "coreml"
    modules = ("coremltools",)
    default = False

    def export(self, ctx: ExportContext) -> dict[str, Any]:
        path = ctx.out / self.filename
        start = time.perf_counter()
        example = ctx.random_inputs(1)
        with quiet_export(), native_quiet():
            import coremltools as ct

            program = torch.export.export(ctx.model, (example,)).run_decompositions({})
            mlmodel = ct.convert(
                program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                compute_precision=ct.precision.FLOAT16,
                inputs=[ct.TensorType(name="input", shape=tuple(example.shape), dtype=np.float32)],
                outputs=[ct.TensorType(name="logits", dtype=np.float32)],
            )
            mlmodel.save(str(path))
            spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
        seconds = time.perf_counter() - start
        inputs = {i.name: [int(d) for d in i.type.multiArrayType.shape] for i in spec.description.input}
        outputs = {o.name: [int(d) for d in o.type.multiArrayType.shape] for o in spec.description.output}
        logits = _reference(ctx.model, example)
        expected_in, expected_out = {"input": list(example.shape)}, {"logits": list(logits.shape)}
        if inputs != expected_in or outputs != expected_out:
            raise ExportError(f"{path}: the package takes {inputs} and gives {outputs}, "
                              f"expected {expected_in} and {expected_out}")
        function = spec.mlProgram.functions["main"]
        ops = collections.Counter(op.type for op in function.block_specializations[function.opset].operations)
        counts = _layer_counts(ctx.model)
        found = {"conv": ops.get("conv", 0), "linear": ops.get("linear", 0) + ops.get("matmul", 0)}
        if found != counts:
            raise ExportError(f"{path}: the program has {found['conv']} conv and {found['linear']} linear "
                              f"operations, the PyTorch model {counts['conv']} Conv2d and {counts['linear']} Linear")
        record: dict[str, Any] = {
            "file": self.filename, "bytes": _dir_bytes(path), "seconds": round(seconds, 3), "format": "mlprogram",
            "compute_precision": "float16", "minimum_deployment_target": "iOS16", "opset": function.opset,
            "inputs": f"input {expected_in['input']} float32 (NCHW)", "outputs": f"logits {expected_out['logits']}",
            "operations": dict(sorted(ops.items())), "layers_checked": counts, "coremltools": ct.__version__,
            "numerics_checked": False, "platform": platform.system(),
        }
        if platform.system() == "Darwin":  # only Apple's Core ML framework runs the package
            loaded = ct.models.MLModel(str(path))
            got = np.asarray(loaded.predict({"input": example.numpy()})["logits"])
            diff = float(np.abs(got - logits).max())
            if not diff <= COREML_TOLERANCE:
                raise ExportError(f"{path}: Core ML differs from PyTorch by {diff:.3g} (> {COREML_TOLERANCE:g})")
            record.update(numerics_checked=True, max_abs_diff=diff, tolerance=COREML_TOLERANCE)
        return record
