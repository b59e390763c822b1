"""The HTML report: one self-contained file (plotly.js inline, nothing loaded from a URL).

A Content-Security-Policy meta tag forbids every network load (scripts, styles, fonts,
images, fetches), so the report behaves the same with or without a network.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from fednas.objectives import OBJECTIVES
from fednas.plot._data import FrontData, HypervolumeHistory, Importances, ParallelData, Report
from fednas.plot._style import STATUS_ORDER, STATUS_STYLE

__all__ = ["CSP", "render_html", "write_html"]

CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; worker-src blob:")
_CONFIG = {"displaylogo": False, "showSendToCloud": False, "responsive": True,
           "toImageButtonOptions": {"format": "png", "scale": 2}}
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9rem; } td, th { padding: 0.2rem 0.6rem; text-align: left; }
th { border-bottom: 1px solid #999; } tr:nth-child(even) td { background: #f6f6f6; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 0.5rem; }
.grid > div { min-width: 0; overflow: hidden; }
.message { background: #fff6e0; border-left: 4px solid #e0a000; padding: 0.5rem 0.8rem; }
.note { color: #555; font-size: 0.9rem; }
"""


# Figures are drawn while the page is parsed; size them again to their final boxes.
_RESIZE = ("window.addEventListener('load', function () { document.querySelectorAll('.js-plotly-plot')"
           ".forEach(function (d) { Plotly.Plots.resize(d); }); });")


def _plotly():
    try:
        import plotly.graph_objects as go
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ImportError("the HTML report needs plotly: pip install 'fednas[plot]'") from None
    return go, get_plotlyjs


def write_html(report: Report, path: Path) -> Path:
    path.write_text(render_html(report), encoding="utf-8")
    return path


def render_html(report: Report) -> str:
    """The whole report as one HTML string."""
    go, get_plotlyjs = _plotly()
    figs: list[str] = []

    def fig_div(fig: Any, name: str, height: int = 480) -> str:
        fig.update_layout(height=height, template="plotly_white", modebar={"orientation": "v"})
        if not fig.layout.margin.t:
            fig.update_layout(margin={"l": 60, "r": 40, "t": 50, "b": 60})
        div = fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False,
                          div_id=f"fig-{name}", config=_CONFIG, default_width="100%", default_height=f"{height}px")
        figs.append(name)
        return div

    e = html.escape
    parts = [
        f"<h1>fednas study <code>{e(report.study)}</code></h1>",
        _summary(report),
        "<h2>Pareto front</h2>",
        '<p class="note">Hover a point for its architecture. The front is taken over trials that satisfy '
        "the constraints; trials that violate one are drawn as crosses and are never on the front.</p>",
        fig_div(_main_figure(go, report.main, report.study), "pareto", 560),
        "<h2>Pairwise projections</h2>",
        '<p class="note">Each panel marks the front of its own two objectives.</p>',
        '<div class="grid">' + "".join(fig_div(_scatter2d(go, d, f"{d.axes[0].name} vs {d.axes[1].name}"),
                                                f"pair-{i}", 400) for i, d in enumerate(report.pairs)) + "</div>",
        "<h2>Parallel coordinates</h2>",
        '<p class="note">Objectives, then every searched label; drag along an axis to filter. Colour: '
        + ", ".join(f'<span style="color:{STATUS_STYLE[s]["color"]}">{STATUS_STYLE[s]["label"]}</span>'
                    for s in ("front", "dominated", "infeasible")) + " (front over all the study's objectives).</p>",
        fig_div(_parallel(go, report.parallel), "parallel", 520),
        *(_supernet_section(go, report.supernet, fig_div) if report.supernet else []),
        "<h2>Hypervolume history</h2>",
        _hv_note(report.hypervolume),
        fig_div(_hv_figure(go, report.hypervolume), "hypervolume", 400),
        "<h2>Parameter importances</h2>",
        _importances(go, report.importances, fig_div),
        "<h2>Front members</h2>",
        _front_table(report),
    ]
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>fednas: {e(report.study)}</title>\n<style>{_CSS}</style>\n"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n"
        f"</head>\n<body data-figures=\"{e(json.dumps(figs))}\">\n{body}\n<script>{_RESIZE}</script>\n</body>\n</html>\n"
    )


def _summary(report: Report) -> str:
    e = html.escape
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(report.states.items()))
    objs = ", ".join(f"{e(n)} ({d})" for n, d in report.objectives.items())
    cons = ", ".join(f"{e(k)} &le; {v:,}" for k, v in report.constraints.items()) or "none"
    rows = [("storage", e(report.storage)), ("trials", e(states)), ("objectives", objs),
            ("constraints", cons), ("plotted", e(", ".join(report.chosen)))]
    if report.privacy:
        rows.append(("privacy", e(report.privacy)))
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _traces_2d(go: Any, data: FrontData) -> list[Any]:
    ax_x, ax_y = data.axes
    traces = []
    front = data.front
    if len(front) > 1:
        shape = "hv" if ax_x.direction == "minimize" else "vh"
        traces.append(go.Scatter(
            x=[p.coords[0] * ax_x.scale for p in front], y=[p.coords[1] * ax_y.scale for p in front],
            mode="lines", line={"shape": shape, "color": STATUS_STYLE["front"]["color"], "width": 1},
            hoverinfo="skip", showlegend=False))
    for status in STATUS_ORDER:
        pts = data.by_status(status)
        if pts:
            style = STATUS_STYLE[status]
            traces.append(go.Scatter(
                x=[p.coords[0] * ax_x.scale for p in pts], y=[p.coords[1] * ax_y.scale for p in pts],
                mode="markers", name=data.label(status), hovertext=[p.hover for p in pts], hoverinfo="text",
                marker={"color": style["color"], "symbol": style["plotly_symbol"], "size": 9,
                        "line": {"width": 1.5, "color": style["color"]}}))
    return traces


def _scatter2d(go: Any, data: FrontData, title: str) -> Any:
    fig = go.Figure(_traces_2d(go, data))
    ax_y = data.axes[1]  # two lines: a long title would run past a small panel's height
    fig.update_layout(title=title, xaxis_title=data.axes[0].label, yaxis_title=f"{ax_y.title}<br>{ax_y.hint}",
                      legend={"orientation": "h", "y": -0.3}, margin={"l": 80, "r": 30, "t": 50, "b": 70})
    return fig


def _main_figure(go: Any, data: FrontData, study: str) -> Any:
    if len(data.axes) == 2:
        return _scatter2d(go, data, f"{study}: Pareto front")
    traces = []
    for status in STATUS_ORDER:
        pts = data.by_status(status)
        if pts:
            style = STATUS_STYLE[status]
            traces.append(go.Scatter3d(
                x=[p.coords[0] * data.axes[0].scale for p in pts], y=[p.coords[1] * data.axes[1].scale for p in pts],
                z=[p.coords[2] * data.axes[2].scale for p in pts], mode="markers", name=data.label(status),
                hovertext=[p.hover for p in pts], hoverinfo="text",
                marker={"color": style["color"], "symbol": "x" if status == "infeasible" else "circle",
                        "size": 5 if status == "dominated" else 6, "opacity": 0.6 if status == "dominated" else 1.0}))
    fig = go.Figure(traces)
    fig.update_layout(title=f"{study}: Pareto front", legend={"x": 0.0, "y": 1.0, "xanchor": "left"}, scene={
        "xaxis_title": data.axes[0].short, "yaxis_title": data.axes[1].short, "zaxis_title": data.axes[2].short,
        "camera": {"eye": {"x": 1.7, "y": 1.7, "z": 1.2}}})
    return fig


def _parallel(go: Any, data: ParallelData) -> Any:
    code = {"front": 0, "dominated": 1, "infeasible": 2}
    dims = []
    for d in data.dimensions:
        dim: dict[str, Any] = {"label": d.name, "values": list(d.values)}
        if d.ticks:
            dim["tickvals"] = [v for v, _ in d.ticks]
            dim["ticktext"] = [t for _, t in d.ticks]
        dims.append(dim)
    colors = [[0.0, STATUS_STYLE["front"]["color"]], [0.5, STATUS_STYLE["dominated"]["color"]],
              [1.0, STATUS_STYLE["infeasible"]["color"]]]
    fig = go.Figure(go.Parcoords(
        line={"color": [code[s] for s in data.statuses], "colorscale": colors, "cmin": 0, "cmax": 2},
        dimensions=dims))
    # slanted titles: a dozen dimensions side by side would otherwise overlap
    fig.update_traces(labelangle=-30, labelside="top", selector={"type": "parcoords"})
    fig.update_layout(margin={"l": 80, "r": 120, "t": 150, "b": 40})
    return fig


def _supernet_section(go: Any, curve: Any, fig_div: Any) -> list[str]:
    """A supernet study's phase 1: the largest and smallest subnet's accuracy and the training loss per round."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(curve.evaluated), y=list(curve.accuracy_largest), mode="lines+markers",
                             name="largest subnet"))
    fig.add_trace(go.Scatter(x=list(curve.evaluated), y=list(curve.accuracy_smallest), mode="lines+markers",
                             name="smallest subnet"))
    fig.add_trace(go.Scatter(x=list(curve.rounds), y=list(curve.train_loss), mode="lines", name="training loss",
                             yaxis="y2", line={"dash": "dot"}))
    fig.update_layout(title="Supernet training", xaxis_title="federated round",
                      yaxis={"title": "held-out accuracy (pooled batch-norm statistics)"},
                      yaxis2={"title": "training loss", "overlaying": "y", "side": "right"})
    note = (f'<p class="note">Phase 1 of this supernet study: {len(curve.rounds)} rounds, {curve.client_epochs:,} '
            f"client-epochs, {curve.comm_bytes:,} bytes. Every trial below inherits these weights.</p>")
    return ["<h2>Supernet training</h2>", note, fig_div(fig, "supernet", 420)]


def _hv_note(hv: HypervolumeHistory) -> str:
    if not hv.values:
        return f'<p class="message">{html.escape(hv.message)}</p>'
    return ('<p class="note">Hypervolume of the feasible front after each completed trial, over '
            f"{html.escape(', '.join(hv.objectives))}, each scaled to [0, 1] over the feasible trials "
            f"(0 = best), reference point {hv.reference[0]:g} in every objective.</p>")


def _hv_figure(go: Any, hv: HypervolumeHistory) -> Any:
    fig = go.Figure(go.Scatter(x=list(hv.numbers), y=list(hv.values), mode="lines+markers",
                               line={"shape": "hv", "color": STATUS_STYLE["front"]["color"]}, name="hypervolume"))
    step = max(1, -(-len(hv.numbers) // 12))
    fig.update_layout(title="Hypervolume history", xaxis={"title": "trial number", "tick0": 0, "dtick": step},
                      yaxis_title="hypervolume (objectives scaled to [0, 1])")
    return fig


def _importances(go: Any, imp: Importances, fig_div: Any) -> str:
    if not imp.by_objective:
        return f'<p class="message">{html.escape(imp.message)}</p>'
    rough = " With fewer than about 20 trials they are rough estimates." if imp.trials < 20 else ""
    out = [f'<p class="note">Method: {html.escape(imp.method)}, over {imp.trials} completed trials; '
           f"importances of each objective sum to 1.{rough}</p>",
           '<div class="grid">']
    for i, (name, values) in enumerate(imp.by_objective.items()):
        labels = list(values)[::-1]
        fig = go.Figure(go.Bar(x=[values[k] for k in labels], y=labels, orientation="h",
                               marker={"color": STATUS_STYLE["front"]["color"]}))
        fig.update_layout(title=f"importance for {name}", xaxis_title="importance (fraction)")
        out.append(fig_div(fig, f"importance-{i}", 360))
    out.append("</div>")
    return "".join(out)


def _front_table(report: Report) -> str:
    e = html.escape
    names = list(report.objectives)
    head = "".join(f"<th>{e(h)}</th>" for h in ["trial", *[_unit_title(n) for n in names], "compression",
                                                   "architecture"])
    rows = []
    for row in report.front_table:
        cells = ([str(row["number"])] + [_fmt(n, row[n]) for n in names]
                 + [e(row.get("compression", "-")), e(row["arch"])])
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _unit_title(name: str) -> str:
    unit = OBJECTIVES[name].unit if name in OBJECTIVES else ""
    return f"{name} ({ {'fraction': '%', 'B': 'bytes', 'eps': 'ε'}.get(unit, unit)})" if unit else name


def _fmt(name: str, v: float) -> str:
    if name in OBJECTIVES and OBJECTIVES[name].unit == "fraction":
        return f"{100 * v:.2f}"
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:.4f}"
