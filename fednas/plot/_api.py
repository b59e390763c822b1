"""``fednas plot`` and ``fednas dashboard``: read a finished study, write pictures, serve it."""

from __future__ import annotations

import errno

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


def _check_address(host: str, port: int) -> None:
    """``host:port`` can be listened on: a port in range, a known host, nothing listening there yet.

    Raises:
        ConfigError: one line naming the flag and the reason.
    """
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port: expected an integer in [1, 65535], got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host}: cannot resolve it ({exc})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)  # no SO_REUSEADDR: a port another server listens on is refused
        except OSError as exc:
            why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({why})") from None


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
    _check_address(host, port)
    print(f"optuna-dashboard on {storage} at http://{host}:{port}/ (Ctrl+C to stop)", flush=True)
    optuna_dashboard.run_server(st, host=host, port=port, artifact_store=artifacts)
