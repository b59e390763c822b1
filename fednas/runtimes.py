"""The runtime registry: where ``latency_ms`` is measured (``[latency] runtime``), as plain data.

Each entry names the class that runs a model on that runtime (``fednas.latency``, imported
only when a latency is measured), the modules it needs and the extra that installs them.
Adding a runtime is one entry here and one ``Runtime`` subclass in ``fednas.latency._runtimes``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

__all__ = ["RUNTIMES", "RuntimeSpec", "get_runtime_spec"]


@dataclass(frozen=True)
class RuntimeSpec:
    """A latency runtime.

    Attributes:
        name: the ``[latency] runtime`` value.
        cls: ``module:Class`` of its ``fednas.latency.Runtime`` subclass.
        modules: what must be importable to use it.
        extra: the ``pip install 'fednas[...]'`` extra that brings those modules.
        summary: one line for documentation.
    """

    name: str
    cls: str
    modules: tuple[str, ...]
    extra: str
    summary: str

    def missing(self) -> str | None:
        """The first module it needs that is not installed, or None."""
        return next((m for m in self.modules if importlib.util.find_spec(m) is None), None)


RUNTIMES: dict[str, RuntimeSpec] = {s.name: s for s in (
    RuntimeSpec("onnxruntime", "fednas.latency._runtimes:OnnxRuntime", ("onnx", "onnxruntime"), "export",
                "the model exported to ONNX (batch 1, static shapes) in an ONNX Runtime CPU session"),
    RuntimeSpec("tflite", "fednas.latency._runtimes:TFLiteRuntime", ("litert_torch", "ai_edge_litert"), "tflite",
                "the model converted to TFLite by litert-torch (float32, batch 1) in the LiteRT interpreter"),
    RuntimeSpec("torch", "fednas.latency._runtimes:TorchRuntime", (), "",
                "the PyTorch module itself, eager, in inference mode"),
)}


def get_runtime_spec(name: str) -> RuntimeSpec:
    """Raises: ValueError listing the valid names."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown latency runtime {name!r}; valid: {', '.join(RUNTIMES)}") from None
