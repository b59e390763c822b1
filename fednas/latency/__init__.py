"""Latency of a candidate: measured on a runtime, or predicted from a table made on the target device.

    from fednas.latency import measure_latency, load_table, predict_latency
    measure_latency(model, (3, 224, 224), runtime="onnxruntime", threads=1)   # Latency(ms=..., p25_ms=...)
    predict_latency(load_table("phone.json"), model, (3, 224, 224))          # from the table's units

``fednas latency profile`` writes such a table (``profile_units`` over architectures drawn
from a study's space, ``draw_labels``). Runtimes are registered in ``fednas.runtimes``.
"""

from __future__ import annotations

from fednas.latency._config import candidate_latency
from fednas.latency._profile import MAX_PROFILE_SAMPLES, profile_study
from fednas.latency._measure import Latency, measure_interleaved, measure_latency, pinned
from fednas.latency._runtimes import (OnnxRuntime, Runtime, Session, TFLiteRuntime, TorchRuntime, get_runtime, quiet_export,
                                      tflite_interpreter, to_tflite)
from fednas.latency._table import (MAX_TABLE_BYTES, LatencyTable, TableError, Unit, UnitTiming, cached_table,
                                   draw_labels, latency_units, load_table, machine_info, predict_latency,
                                   profile_and_time, profile_units)

__all__ = ["MAX_PROFILE_SAMPLES", "MAX_TABLE_BYTES", "Latency", "LatencyTable", "OnnxRuntime", "Runtime", "Session", "TableError",
           "TFLiteRuntime", "TorchRuntime", "Unit", "UnitTiming", "cached_table", "candidate_latency", "draw_labels", "get_runtime", "latency_units", "load_table",
           "machine_info", "measure_interleaved", "measure_latency", "pinned", "predict_latency", "profile_and_time", "profile_study", "profile_units", "quiet_export",
           "tflite_interpreter", "to_tflite"]
