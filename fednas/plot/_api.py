"""``fednas plot`` and ``fednas dashboard``: read a finished study, write pictures, serve it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fednas._errors import ConfigError
from fednas._paths import ensure_writable_dir
from fednas.plot._data import Report, build_report
from fednas.study import open_storage, open_study, read_study, study_names

__all__ = ["PlotResult", "ensure_writable_dir", "plot_study", "run_dashboard"]


@dataclass(frozen=True)
class PlotResult:
    report: Report
    html: Path
    pngs: tuple[Path, ...]


def plot_study(storage: str, study: str, out: str | Path, *, objectives: list[str] | None = None,
               png: bool = True) -> PlotResult:
    """Write ``report.html`` (and the PNGs) for a stored study into ``out``.

    The study is only read. Bad input raises ``ConfigError``/``StorageError`` before any
    file is written (except the ``out`` folder itself).
    """
    from fednas.plot._html import write_html

    view = read_study(storage, study)
    report = build_report(view, objectives)
    folder = ensure_writable_dir(out)
    html = write_html(report, folder / "report.html")
    pngs: list[Path] = []
    if png:
        from fednas.plot._png import write_pngs

        pngs = write_pngs(report, folder)
    return PlotResult(report, html, tuple(pngs))


def run_dashboard(storage: str, *, study: str | None = None, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard on ``storage`` (with the study's artifacts) until interrupted.

    Raises:
        ConfigError: optuna-dashboard is not installed (names the extra), or no such study.
    """
    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError("fednas dashboard needs optuna-dashboard: pip install 'fednas[dashboard]'") from None
    from optuna.artifacts import FileSystemArtifactStore

    if study is not None:
        open_study(storage, study)  # "study not found" is the study package's one check
    st = open_storage(storage, create=False)
    artifacts = None
    for name in [study] if study is not None else study_names(st):
        folder = read_study(storage, name).artifacts_dir
        if folder and Path(folder).is_dir():
            artifacts = FileSystemArtifactStore(folder)
            break
    print(f"optuna-dashboard on {storage} at http://{host}:{port}/ (Ctrl+C to stop)", flush=True)
    optuna_dashboard.run_server(st, host=host, port=port, artifact_store=artifacts)
