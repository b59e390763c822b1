"""PNG figures for papers (matplotlib, Agg): 2-D projections and the hypervolume history."""

from __future__ import annotations

import re
from pathlib import Path

from fednas.plot._data import FrontData, HypervolumeHistory, Report
from fednas.plot._style import STATUS_ORDER, STATUS_STYLE

__all__ = ["write_pngs"]

_RC = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "savefig.dpi": 200,
    "figure.figsize": (5.0, 3.8),
}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("PNG figures need matplotlib: pip install 'fednas[plot]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_pngs(report: Report, out: Path) -> list[Path]:
    """One PNG per 2-D projection (``pareto_<x>_vs_<y>.png``), ``hypervolume.png`` and, for a supernet study,
    ``supernet.png`` (its training curve)."""
    plt = _pyplot()
    paths = []
    with plt.rc_context(_RC):
        for data in report.pairs:
            path = out / f"pareto_{_slug(data.axes[0].name)}_vs_{_slug(data.axes[1].name)}.png"
            _projection(plt, data, report.study, path)
            paths.append(path)
        path = out / "hypervolume.png"
        _hypervolume(plt, report.hypervolume, report.study, path)
        paths.append(path)
        if report.supernet:
            path = out / "supernet.png"
            _supernet(plt, report.supernet, report.study, path)
            paths.append(path)
    return paths


def _supernet(plt, curve, study: str, path: Path) -> None:
    fig, ax = plt.subplots(constrained_layout=True)
    ax.plot(curve.evaluated, curve.accuracy_largest, marker="o", ms=3, lw=1.6, label="largest subnet")
    ax.plot(curve.evaluated, curve.accuracy_smallest, marker="s", ms=3, lw=1.6, label="smallest subnet")
    ax.set_xlabel("federated round")
    ax.set_ylabel("held-out accuracy (pooled batch-norm statistics)")
    loss = ax.twinx()
    loss.plot(curve.rounds, curve.train_loss, color="0.5", ls=":", lw=1.2, label="training loss")
    loss.set_ylabel("training loss")
    lines = ax.get_lines() + loss.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    _title(ax, f"{study}: supernet training ({curve.client_epochs:,} client-epochs)")
    ax.grid(True, alpha=0.3)
    fig.savefig(path)
    plt.close(fig)


def _title(ax, text: str, width: int = 52) -> None:
    """A title wrapped to the figure's width (long objective lists would be clipped on both sides)."""
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(text, width)) or text, fontsize=11)


def _slug(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]+", "_", name)


def _projection(plt, data: FrontData, study: str, path: Path) -> None:
    fig, ax = plt.subplots(constrained_layout=True)
    ax_x, ax_y = data.axes
    for status in STATUS_ORDER:
        pts = data.by_status(status)
        if not pts:
            continue
        style = STATUS_STYLE[status]
        xs = [p.coords[0] * ax_x.scale for p in pts]
        ys = [p.coords[1] * ax_y.scale for p in pts]
        if status == "dominated":
            ax.scatter(xs, ys, s=28, facecolors="none", edgecolors=style["color"], label=data.label(status), zorder=2)
        else:
            ax.scatter(xs, ys, s=34, c=style["color"], marker=style["mpl_marker"], label=data.label(status),
                       zorder=3)
    front = data.front
    if len(front) > 1:
        xs = [p.coords[0] * ax_x.scale for p in front]
        ys = [p.coords[1] * ax_y.scale for p in front]
        # the edge of the region the front dominates: with x minimized a point covers the
        # interval to its right (post), with x maximized the interval to its left (pre)
        where = "post" if ax_x.direction == "minimize" else "pre"
        ax.step(xs, ys, where=where, color=STATUS_STYLE["front"]["color"], lw=1.2, alpha=0.7, zorder=1)
    ax.set_xlabel(f"{ax_x.title}\n{ax_x.hint}")
    ax.set_ylabel(f"{ax_y.title}\n{ax_y.hint}")
    _title(ax, f"{study}: {ax_x.name} vs {ax_y.name}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", frameon=True)
    fig.savefig(path)
    plt.close(fig)


def _hypervolume(plt, hv: HypervolumeHistory, study: str, path: Path) -> None:
    fig, ax = plt.subplots(constrained_layout=True)
    if hv.values:
        ax.step(hv.numbers, hv.values, where="post", color=STATUS_STYLE["front"]["color"], lw=1.6,
                marker="o", ms=3, label="feasible front")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, hv.message, ha="center", va="center", transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume (objectives scaled to [0, 1])")
    _title(ax, f"{study}: hypervolume of {', '.join(hv.objectives)}")
    ax.grid(True, alpha=0.3)
    fig.savefig(path)
    plt.close(fig)
