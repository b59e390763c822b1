"""A study made by the code before the redesign (cbdfd74) still opens for pareto, export, plot and train.

tests/fixtures/old_study holds it: tiny_study.toml with a q4 uplink codec, 2 trials, its
SQLite file, its artifacts, and what `fednas pareto --all --format json` printed then.
The copy is made in a temporary folder, so its stored artifacts_dir (an absolute path of
the machine that made it) points elsewhere: the study is also a moved study.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fednas.cli import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "old_study"


@pytest.fixture
def legacy(tmp_path: Path) -> str:
    shutil.copytree(FIXTURE, tmp_path / "old")
    return f"sqlite:///{tmp_path / 'old' / 'legacy.db'}"


def test_pareto_prints_what_the_old_code_printed(legacy: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pareto", "--storage", legacy, "--study", "legacy", "--all", "--format", "json"]) == 0
    now = json.loads(capsys.readouterr().out)
    before = json.loads((FIXTURE / "legacy.pareto.json").read_text())
    assert now == before


def test_reading_imports_neither_torch_nor_flower(legacy: str) -> None:
    code = (
        "import sys\n"
        "from fednas.cli import main\n"
        f"assert main(['pareto', '--storage', {legacy!r}, '--study', 'legacy', '--all']) == 0\n"
        "from fednas.study import read_study\n"
        f"view = read_study({legacy!r}, 'legacy')\n"
        "assert [t.number for t in view.front()] == [1], view.front()\n"
        "from fednas.plot import build_report\n"
        "build_report(view)\n"
        "heavy = sorted(m for m in ('torch', 'flwr') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_export_and_load_a_moved_old_study(legacy: str, tmp_path: Path) -> None:
    from fednas.export import load_model, source_from_trial

    out = tmp_path / "bundle"
    assert main(["export", "--storage", legacy, "--study", "legacy", "--pick", "knee", "--out", str(out),
                 "--formats", "torchscript"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["origin"]["trial"] == 1 and doc["compression"] == {"uplink_codec": "quantize", "uplink_bits": 4}
    source = source_from_trial(legacy, "legacy", trial=1)
    model = load_model(out)
    state = model.state_dict()
    assert all((state[k] == v).all() for k, v in source.state.items())
    assert "q4 up" in (out / "README.md").read_text() or "quantize" in (out / "README.md").read_text()


def test_retraining_an_old_trial_keeps_its_codec(legacy: str, tmp_path: Path) -> None:
    """`fednas train --trial` applies the trial's compression labels: the same q4 codec, the same bytes."""
    from fednas.study import read_study

    trial = read_study(legacy, "legacy").trial(1)
    out = tmp_path / "retrained"
    assert main(["train", "--storage", legacy, "--study", "legacy", "--trial", "1", "--rounds", "2", "--out",
                 str(out), "--formats", "torchscript"]) == 0
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["upload_bytes"] for r in rounds] == [r["upload_bytes"] for r in trial.attrs["rounds"]]
    assert [r["download_bytes"] for r in rounds] == [r["download_bytes"] for r in trial.attrs["rounds"]]
    # and the codec matters: without it a client's update is ~8x larger
    plain = tmp_path / "plain"
    assert main(["train", "--storage", legacy, "--study", "legacy", "--trial", "1", "--rounds", "2", "--out",
                 str(plain), "--formats", "torchscript", "--set", "space.labels.uplink_codec=none"]) == 0
    plain_rounds = json.loads((plain / "metrics.json").read_text())["rounds"]
    assert rounds[0]["upload_bytes"] < 0.4 * plain_rounds[0]["upload_bytes"]
