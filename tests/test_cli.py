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


def test_pareto_all_takes_its_columns_from_the_objectives_when_trial_0_failed(tmp_path, capsys) -> None:
    import optuna

    from search_spaces import preset

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url, directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["accuracy", "macs"])
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={}, distributions={},
                                              user_attrs={"fail_reason": "boom", "macs": 5, "params": 1}))
    arch = preset("mobilenet_micro").to_dict()
    study.add_trial(optuna.trial.create_trial(values=[0.5, 100], params={}, distributions={},
                                              user_attrs={"accuracy": 0.5, "macs": 100, "arch": arch, "labels": {}}))
    for fmt, header in (("table", None), ("csv", None)):
        assert main(["pareto", "--storage", url, "--study", "s", "--all", "--format", fmt]) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert "accuracy" in first and "macs" in first and "state" in first, first


def test_arch_info_measures_or_predicts_latency(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    from fednas.latency import profile_units
    from search_spaces import build_model, preset

    assert main(["arch", "info", "mobilenet_micro", "--latency", "torch", "--json"]) == 0
    lat = json.loads(capsys.readouterr().out)["latency"]
    assert lat["runtime"] == "torch" and lat["source"] == "measured" and lat["ms"] > 0
    table = profile_units([(build_model(preset("mobilenet_micro"), num_classes=10, in_channels=1), (1, 28, 28))],
                          warmup=1, repeats=3, rounds=1)
    table.save(tmp_path / "t.json")
    assert main(["arch", "info", "mobilenet_micro", "--latency", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert f"predicted from {tmp_path / 't.json'} (0 of " in out and " units estimated)" in out
    for bad in (str(tmp_path / "missing.json"), "tpu"):
        assert main(["arch", "info", "mobilenet_micro", "--latency", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot read the latency table" in err[0]
