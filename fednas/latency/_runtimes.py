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

__all__ = ["OnnxRuntime", "Runtime", "Session", "TorchRuntime", "get_runtime", "quiet_export"]


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
