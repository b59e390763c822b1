"""The exporter registry: ``--formats`` names, in the order they are written.

Adding a format is one ``Exporter`` subclass (``_formats`` for desktop/server runtimes,
``_mobile`` for phone runtimes) and one entry here.
"""

from __future__ import annotations

from fednas.export._formats import ExecuTorchExporter, Exporter, Int8Exporter, OnnxExporter, TorchScriptExporter
from fednas.export._mobile import CoreMLExporter, TFLiteExporter, TFLiteInt8Exporter

__all__ = ["DEFAULT_FORMATS", "EXPORTERS"]

EXPORTERS: dict[str, Exporter] = {e.name: e for e in (
    OnnxExporter(), Int8Exporter(), TorchScriptExporter(), ExecuTorchExporter(),
    TFLiteExporter(), TFLiteInt8Exporter(), CoreMLExporter(),
)}
# Without --formats: every default format whose extra is installed. The phone formats take
# 5-20 s each to convert, so they are asked for by name (or with --formats all).
DEFAULT_FORMATS = tuple(n for n, e in EXPORTERS.items() if e.default)
