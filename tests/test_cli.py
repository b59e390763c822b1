from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fednas.cli import main


def test_arch_info_json_for_a_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "info", "mobilenet_v2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 3_504_872
    assert abs(info["macs"] - 300e6) / 300e6 < 0.03
    assert info["bytes"] > 4 * info["params"]  # float32 weights plus batch-norm buffers


def test_arch_info_from_a_file_with_options(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from search_spaces import preset

    path = tmp_path / "a.json"
    path.write_text(preset("mobilenet_tiny").to_json())
    assert main(["arch", "info", str(path), "--in-channels", "3", "--resolution", "32", "--num-classes", "5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["in_channels"] == 3 and info["resolution"] == 32 and info["num_classes"] == 5
    assert main(["arch", "info", str(path)]) == 0
    assert "MACs" in capsys.readouterr().out


def test_arch_info_errors_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "info", "vgg16"]) == 2
    assert "mobilenet_v2" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["arch", "info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and err.count("\n") == 1
    assert main(["arch", "info", "mobilenet_tiny", "--resolution", "0"]) == 2


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "fednas", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "search" in out.stdout and "pareto" in out.stdout


def test_version() -> None:
    import fednas

    out = subprocess.run([sys.executable, "-m", "fednas", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"fednas {fednas.__version__}"
