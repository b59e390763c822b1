"""Pictures of a finished study: the data behind each plot, then HTML and PNG renderers.

Compute first, render second: ``build_report`` returns dataclasses (``FrontData``,
``ParallelData``, ``HypervolumeHistory``, ``Importances``); ``write_html`` and
``write_pngs`` draw them. plotly and matplotlib are imported only by the renderers.
"""

from __future__ import annotations

from pathlib import Path

from fednas.plot._api import PlotResult, ensure_writable_dir, plot_study, run_dashboard
from fednas.plot._data import (
    Axis,
    Dimension,
    FrontData,
    HypervolumeHistory,
    Importances,
    ParallelData,
    PlotPoint,
    Report,
    axis_for,
    build_report,
    choose_objectives,
    front_data,
    hypervolume_history,
    importance_data,
    parallel_data,
    projections,
    statuses,
)
from fednas.study import (StudyView, TrialRecord, config_from_stored, hypervolume, knee_index, metric_direction,
                          normalized_losses, pareto_mask, read_study, to_losses)

TrialPoint = TrialRecord  # the name of earlier versions

__all__ = [
    "Axis",
    "Dimension",
    "FrontData",
    "HypervolumeHistory",
    "Importances",
    "ParallelData",
    "PlotPoint",
    "PlotResult",
    "Report",
    "StudyView",
    "TrialPoint",
    "TrialRecord",
    "axis_for",
    "build_report",
    "choose_objectives",
    "config_from_stored",
    "ensure_writable_dir",
    "front_data",
    "hypervolume",
    "hypervolume_history",
    "importance_data",
    "knee_index",
    "metric_direction",
    "normalized_losses",
    "parallel_data",
    "pareto_mask",
    "plot_study",
    "projections",
    "read_study",
    "run_dashboard",
    "statuses",
    "to_losses",
    "write_html",
    "write_pngs",
]


def write_html(report: Report, path: Path) -> Path:
    """Write the self-contained HTML report (needs plotly, imported here)."""
    from fednas.plot._html import write_html as _write

    return _write(report, path)


def write_pngs(report: Report, out: Path) -> list[Path]:
    """Write the PNG figures into the folder ``out`` (needs matplotlib, imported here)."""
    from fednas.plot._png import write_pngs as _write

    return _write(report, out)
