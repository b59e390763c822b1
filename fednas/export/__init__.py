"""Export chosen models of a finished study as deployable bundles, or retrain one first.

``source_from_trial`` reads a stored trial (by number or picked from the Pareto front);
``source_from_supernet`` a supernet study's largest subnet (a teacher for ``kd_teacher``);
``train_architecture`` runs a longer federation of one architecture; ``write_bundle``
writes arch.json, safetensors weights, metrics.json, a model card and the formats in
``EXPORTERS`` (ONNX, int8 ONNX, TorchScript, ExecuTorch, TFLite, int8 TFLite, Core ML), each checked;
``load_model`` reads a bundle back. onnx/onnxruntime, executorch, litert-torch and coremltools are imported only by
the exporters that need them.
"""

from __future__ import annotations

from fednas.export._bundle import BundleResult, check_bundle_out, load_model, resolve_formats, write_bundle
from fednas.export._formats import ONNX_TOLERANCE, ExportContext, ExportError, Exporter
from fednas.export._registry import DEFAULT_FORMATS, EXPORTERS
from fednas.export._source import PICKS, ModelSource, pick_trial, source_from_supernet, source_from_trial
from fednas.export._train import train_architecture

__all__ = [
    "DEFAULT_FORMATS",
    "EXPORTERS",
    "ONNX_TOLERANCE",
    "PICKS",
    "BundleResult",
    "ExportContext",
    "ExportError",
    "Exporter",
    "ModelSource",
    "check_bundle_out",
    "load_model",
    "pick_trial",
    "resolve_formats",
    "source_from_trial",
    "source_from_supernet",
    "train_architecture",
    "write_bundle",
]
