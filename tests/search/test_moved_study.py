"""A study's storage file moved or copied elsewhere and resumed: search and export agree on where weights are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna

from fednas.cli import main
from fednas.config import load_config
from fednas.search import run_search


def _resume(folder: Path, trials: int) -> None:
    config = load_config(folder / "tiny.toml", [f"study.trials={trials}", "federation.rounds=1"])
    run_search(config, progress=False)


def _export(folder: Path, trial: int, out: Path) -> dict:
    argv = ["export", "--storage", f"sqlite:///{folder / 'tiny.db'}", "--study", "tiny", "--trial", str(trial),
            "--out", str(out), "--formats", "onnx", "--onnx-exporter", "torchscript"]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_copied_and_db_only_copies_resume_and_export(tiny_config: Path, tmp_path: Path) -> None:
    original = tiny_config.parent
    _resume(original, 1)
    # a copy with its artifacts folder, the original left in place
    full = tmp_path / "full"
    full.mkdir()
    for name in ("tiny.toml", "tiny.db", "tiny.artifacts"):
        (shutil.copytree if name.endswith("artifacts") else shutil.copy)(original / name, full / name)
    _resume(full, 2)
    attrs = optuna.load_study(study_name="tiny", storage=f"sqlite:///{full / 'tiny.db'}").user_attrs
    assert attrs["artifacts_dir"] == str((full / "tiny.artifacts").resolve())
    assert attrs["artifacts_dirs_before"] == [str((original / "tiny.artifacts").resolve())]
    assert _export(full, 1, tmp_path / "f1")["origin"]["trial"] == 1  # the new trial's weights are found
    assert _export(full, 0, tmp_path / "f0")["origin"]["trial"] == 0
    assert len(list((original / "tiny.artifacts").iterdir())) == 1  # the original study's folder is untouched
    # only the database copied: old weights are read where they were, new ones beside the copy
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(original / "tiny.toml", bare / "tiny.toml")
    shutil.copy(original / "tiny.db", bare / "tiny.db")
    _resume(bare, 2)
    assert len(list((bare / "tiny.artifacts").iterdir())) == 1
    assert _export(bare, 0, tmp_path / "b0")["origin"]["trial"] == 0
    assert _export(bare, 1, tmp_path / "b1")["origin"]["trial"] == 1
