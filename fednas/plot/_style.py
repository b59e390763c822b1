"""Marks shared by the HTML and PNG renderers (Okabe-Ito colours, safe for colour blindness)."""

from __future__ import annotations

STATUS_STYLE: dict[str, dict[str, str]] = {
    "front": {"color": "#0072B2", "label": "Pareto front", "mpl_marker": "o", "plotly_symbol": "circle"},
    "dominated": {"color": "#999999", "label": "dominated (feasible)", "mpl_marker": "o", "plotly_symbol": "circle-open"},
    "infeasible": {"color": "#D55E00", "label": "violates a constraint", "mpl_marker": "x", "plotly_symbol": "x"},
}
STATUS_ORDER = ("dominated", "infeasible", "front")  # drawn in this order: the front on top
