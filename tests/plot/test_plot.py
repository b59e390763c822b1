"""fednas plot and fednas dashboard on a tiny real study: files, self-containment, a real browser."""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fednas.cli import main
from fednas.plot import read_study

pytest.importorskip("plotly")
pytest.importorskip("matplotlib")

# tests/tiny_study.toml's candidates send about 170-230 kB: this bound makes some infeasible.
PLOT_OVERRIDES = ("constraints.max_comm_bytes=200000",)


@pytest.fixture(scope="module")
def study(tiny_study_factory) -> dict:
    folder, _, result = tiny_study_factory("pics", PLOT_OVERRIDES)
    assert result.completed == 3
    return {"storage": result.storage, "db": folder / "pics.db"}


@pytest.fixture(scope="module")
def plots(study: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plots")
    start = time.perf_counter()
    assert main(["plot", "--storage", study["storage"], "--study", "pics", "--out", str(out)]) == 0
    print(f"fednas plot took {time.perf_counter() - start:.1f} s")
    return out


def test_plot_writes_the_report_and_paper_figures(study: dict, plots: Path) -> None:
    from PIL import Image

    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["hypervolume.png", "pareto_accuracy_vs_comm_bytes.png", "pareto_accuracy_vs_macs.png",
                    "pareto_macs_vs_comm_bytes.png"]
    for name in pngs:
        with Image.open(plots / name) as img:
            assert img.size[0] >= 800 and img.size[1] >= 600
            colors = img.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colors is None or len(colors) > 20, name  # not a blank canvas
    page = (plots / "report.html").read_text()
    for heading in ("Pareto front", "Pairwise projections", "Parallel coordinates", "Hypervolume history",
                    "Parameter importances", "Front members"):
        assert f"<h2>{heading}</h2>" in page
    table = page[page.index("<h2>Front members</h2>"):]
    for header in ("accuracy (%)", "macs (MACs)", "comm_bytes (bytes)", "compression", "architecture"):
        assert f"<th>{header}</th>" in table, header
    assert "front of these 2 objectives" in page  # three objectives: each projection marks its own pair's front
    # three completed trials are too few for importances: the report says so instead of failing
    assert "need at least 5 completed trials; this study has 3" in page
    view = read_study(study["storage"], "pics")
    over = [t.number for t in view.trials if t.values["comm_bytes"] > 200_000]
    assert [t.number for t in view.trials if not t.feasible] == over
    if over:  # constraint violators get their own legend entry
        assert "violates a constraint" in page


class _Refs(html.parser.HTMLParser):
    """Every URL a page would load: script/img/iframe src, link href, CSS url() and @import."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.inline_scripts = 0
        self.csp = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "embed", "source", "audio", "video") and a.get("src"):
            self.loads.append(a["src"] or "")
        if tag == "script" and not a.get("src"):
            self.inline_scripts += 1
        if tag == "link" and a.get("href"):
            self.loads.append(a["href"] or "")
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "content-security-policy":
            self.csp = a.get("content") or ""
        if tag == "style":
            self._in_style = True
        if a.get("style"):
            self._css(a["style"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self._css(data)

    def _css(self, text: str) -> None:
        self.loads += re.findall(r"url\(\s*['\"]?([^'\")]+)", text)
        self.loads += re.findall(r"@import\s+['\"]([^'\"]+)", text)


def test_report_loads_nothing_from_a_url(plots: Path) -> None:
    page = (plots / "report.html").read_text()
    refs = _Refs()
    refs.feed(page)
    assert refs.loads == []  # no script, stylesheet, image or font file at all, local or remote
    assert refs.inline_scripts >= 2  # plotly.js itself and the figures
    assert len(page) > 1_000_000  # plotly.js is embedded
    assert "default-src 'none'" in refs.csp and "https:" not in refs.csp and "http:" not in refs.csp
    assert "@font-face" not in page.split("<script", 1)[0]
    assert "mathjax" not in page.lower().split("<script", 1)[0]
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", page)


def test_bad_input_exit_2_and_the_store_is_untouched(
    study: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = hashlib.sha256(study["db"].read_bytes()).hexdigest()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    base = ["plot", "--storage", study["storage"], "--study", "pics"]
    cases = {
        "unknown objective 'latency'": [*base, "--objectives", "accuracy,latency", "--out", str(tmp_path / "a")],
        "expected 2 or 3 names": [*base, "--objectives", "accuracy", "--out", str(tmp_path / "a")],
        "not found": ["plot", "--storage", study["storage"], "--study", "nope", "--out", str(tmp_path / "a")],
        "cannot write": [*base, "--out", str(blocker / "sub")],
    }
    for needle, argv in cases.items():
        assert main(argv) == 2, needle
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, (needle, err)
    assert hashlib.sha256(study["db"].read_bytes()).hexdigest() == before
    assert not (tmp_path / "a").exists()


def test_two_objectives_give_a_2d_front(study: dict, tmp_path: Path) -> None:
    assert main(["plot", "--storage", study["storage"], "--study", "pics", "--objectives", "macs,accuracy",
                 "--out", str(tmp_path), "--no-png"]) == 0
    page = (tmp_path / "report.html").read_text()
    # the traces of the main figure come right after its id, before the layout's template
    traces = page.split('"fig-pareto",', 1)[1].split('"template"', 1)[0]
    assert '"type":"scatter"' in traces and "scatter3d" not in traces
    figure = page.split('"fig-pareto",', 1)[1].split("</script>", 1)[0]
    assert "MACs per image (kMACs), lower is better" in figure  # the axis label names its unit
    assert not list(tmp_path.glob("*.png"))


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _browser(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=15000"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(plots: Path, tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        if os.environ.get("FEDNAS_REQUIRE_BROWSER"):
            pytest.fail("chromium not found, and FEDNAS_REQUIRE_BROWSER is set (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run does)")
    page = plots / "report.html"
    figures = json.loads(re.search(r'data-figures="([^"]+)"', page.read_text()).group(1).replace("&quot;", '"'))
    dom = _browser(binary, tmp_path / "profile-dom", "--dump-dom", page.as_uri()).stdout
    body = dom.split("</script>")[-1] if "</script>" in dom else dom
    for fig in figures:  # every figure div was turned into a plot by plotly.js
        m = re.search(rf'<div id="fig-{re.escape(fig)}" class="([^"]*)"', dom)
        assert m and "js-plotly-plot" in m.group(1), fig
    assert dom.count('class="main-svg"') >= len(figures)
    assert body.count("class=\"scatterlayer") + body.count("scatter3d") + dom.count("parcoords") > 0
    shot = tmp_path / "report.png"
    _browser(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50  # plots, not an empty page
    saved = os.environ.get("FEDNAS_SCREENSHOT_DIR")
    if saved:
        shutil.copy(shot, Path(saved) / "report.png")
    print(f"screenshot: {shot}")


def test_dashboard_names_its_extra_when_missing(
    study: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    assert main(["dashboard", "--storage", study["storage"]]) == 2
    err = capsys.readouterr().err
    assert "pip install 'fednas[dashboard]'" in err and err.count("\n") == 1


def test_dashboard_serves_the_study(study: dict) -> None:
    pytest.importorskip("optuna_dashboard")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fednas", "dashboard", "--storage", study["storage"],
                             "--study", "pics", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert '"pics"' in body
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_dashboard_address_errors_are_one_line_before_any_url(study: dict, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("optuna_dashboard")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = {str(port): f"--port {port}: cannot listen on 127.0.0.1:{port} (in use)",
                 "99999": "--port: expected an integer in [1, 65535], got 99999",
                 "0": "--port: expected an integer in [1, 65535], got 0"}
        for value, needle in cases.items():
            assert main(["dashboard", "--storage", study["storage"], "--port", value]) == 2
            out, err = capsys.readouterr()
            assert out == "" and needle in err and err.count("\n") == 1, err
