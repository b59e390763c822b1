"""Runtimes that run one model on one input, for timing: the ``Runtime`` extension point.

``Runtime.prepare(model, example, threads)`` returns a ``Session``: everything that is not
inference (export, graph optimization, allocation) happens there, so that ``Session.run``
is only the forward pass the timer sees.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fednas.runtimes import get_runtime_spec

__all__ = ["OnnxRuntime", "Runtime", "Session", "TFLiteRuntime", "TorchRuntime", "get_runtime", "quiet_export",
           "tflite_interpreter", "to_tflite"]


class Session(ABC):
    """A prepared model: ``run()`` is one forward pass of the example input."""

    @abstractmethod
    def run(self) -> Any: ...

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class Runtime(ABC):
    """Where a latency is measured (one entry of ``fednas.runtimes.RUNTIMES``)."""

    name: str

    @abstractmethod
    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int) -> Session:
        """``model`` (eval mode) ready to run on ``example`` with ``threads`` intra-op threads."""

    @abstractmethod
    def version(self) -> str:
        """The runtime's version, recorded beside every latency."""


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence exporters' progress prints, log lines and deprecation warnings (here and in ``fednas export``)."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping torchvision::nms"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def native_quiet() -> Iterator[None]:
    """Hold back what native libraries write to file descriptor 2 (LiteRT's and TensorFlow's C++ log lines).

    The lines are written out after all if the block raises, so a failure keeps its context.
    """
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _OrtSession(Session):
    def __init__(self, session: Any, feed: dict[str, Any]) -> None:
        self.session, self.feed = session, feed

    def run(self) -> Any:
        return self.session.run(None, self.feed)


class OnnxRuntime(Runtime):
    """ONNX (TorchScript exporter, batch 1, static shapes) in an ONNX Runtime CPU session.

    All graph optimizations on (what a deployment uses), ``threads`` intra-op threads, one
    inter-op thread, sequential execution, no spinning between runs.
    """

    name = "onnxruntime"

    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int) -> Session:
        import onnxruntime as ort

        buf = io.BytesIO()
        with quiet_export(), torch.no_grad():
            torch.onnx.export(model, (example,), buf, input_names=["input"], output_names=["output"], dynamo=False)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        return _OrtSession(session, {"input": example.numpy()})

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__


class _TorchSession(Session):
    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int) -> None:
        self.model, self.example, self.threads = model, example, threads
        self._before = torch.get_num_threads()

    def __enter__(self) -> Session:
        self._before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._before)

    def run(self) -> Any:
        with torch.inference_mode():
            return self.model(self.example)


class TorchRuntime(Runtime):
    """The module itself, eager PyTorch in inference mode, with ``threads`` intra-op threads while timed."""

    name = "torch"

    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int) -> Session:
        return _TorchSession(model, example, threads)

    def version(self) -> str:
        return torch.__version__


def to_tflite(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (eval mode) converted to a float32 TFLite flatbuffer by litert-torch, static shape of ``example``.

    The input keeps PyTorch's NCHW layout (litert-torch transposes inside the graph), so
    the file takes the same tensor as ``fednas.load_model``'s module.
    """
    with quiet_export(), native_quiet(), torch.no_grad():
        import litert_torch  # its import logs torchao's missing CUDA kernels

        return bytes(litert_torch.convert(model.eval(), (example,)).model_content())


def tflite_interpreter(content: bytes, threads: int | None = None) -> Any:
    """The LiteRT interpreter (``ai_edge_litert``, XNNPACK delegate) of a flatbuffer, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    with native_quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_content=content, num_threads=threads)
        interpreter.allocate_tensors()
    return interpreter


class _TFLiteSession(Session):
    def __init__(self, interpreter: Any, example: torch.Tensor) -> None:
        self.interpreter = interpreter
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], example.numpy().astype(detail["dtype"]))

    def run(self) -> Any:
        self.interpreter.invoke()


class TFLiteRuntime(Runtime):
    """The model converted to TFLite by litert-torch (float32, batch 1) in the LiteRT interpreter.

    What an Android app runs with the CPU (XNNPACK) delegate, here on this machine's CPU with
    ``threads`` threads; a table profiled with it on a phone predicts that phone.
    """

    name = "tflite"

    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int) -> Session:
        return _TFLiteSession(tflite_interpreter(to_tflite(model, example), threads), example)

    def version(self) -> str:
        from importlib.metadata import version

        return f"ai-edge-litert {version('ai-edge-litert')}, litert-torch {version('litert-torch')}"


def get_runtime(name: str) -> Runtime:
    """The runtime registered as ``name``.

    Raises:
        ValueError: unknown name, or a runtime whose modules are not installed (naming the extra).
    """
    import importlib

    spec = get_runtime_spec(name)
    missing = spec.missing()
    if missing:
        raise ValueError(f"latency runtime {name!r} needs {missing}, which is not installed "
                         f"(pip install 'fednas[{spec.extra}]')")
    module, _, cls = spec.cls.partition(":")
    return getattr(importlib.import_module(module), cls)()
