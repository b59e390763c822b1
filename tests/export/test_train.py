"""fednas train: a longer federated run of one architecture, then the same bundle as export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fednas.cli import main
from fednas.export import load_model
from search_spaces import preset

pytest.importorskip("onnxruntime")


def test_train_a_preset_reports_each_round_and_writes_a_bundle(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "micro"
    rc = main(["train", "mobilenet_micro", str(tiny_config), "--rounds", "3", "--out", str(out),
               "--formats", "onnx,torchscript", "--onnx-exporter", "torchscript"])
    text = capsys.readouterr().out
    assert rc == 0
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("round")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["federation"]["rounds"] == 3 and [r["round"] for r in m["rounds"]] == [1, 2, 3]
    # the final accuracy is the last round's, and the written weights reproduce it
    assert m["metrics"]["accuracy"] == m["rounds"][-1]["accuracy"]
    assert m["pytorch_accuracy"] == pytest.approx(m["metrics"]["accuracy"], abs=1e-9)
    assert f"accuracy {m['rounds'][-1]['accuracy']:.4f}" in lines[-1]
    assert json.loads((out / "arch.json").read_text()) == preset("mobilenet_micro").to_dict()
    assert {"onnx", "torchscript"} == set(m["exports"]) and "int8" not in m["exports"]
    model = load_model(out)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    card = (out / "README.md").read_text()
    assert "retrained for 3 rounds" in card and "## Accuracy per round" in card and "| 3 |" in card


def test_train_from_a_bundle_folder_and_bad_input(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = tmp_path / "arch.json"
    arch.write_text(preset("mobilenet_micro").to_json())
    cases = {
        "--rounds: expected an integer >= 1": ["train", str(arch), str(tiny_config), "--rounds", "0"],
        "expected an architecture": ["train"],
        "unknown architecture": ["train", "vgg16", str(tiny_config), "--rounds", "1"],
        "file not found": ["train", "mobilenet_micro", str(tmp_path / "none.toml")],
        "cannot write": ["train", str(arch), str(tiny_config), "--rounds", "1"],
    }
    for needle, argv in cases.items():
        out = str(arch / "sub") if needle == "cannot write" else str(tmp_path / "out")
        assert main([*argv, "--out", out]) == 2, needle
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, (needle, err)
    assert not (tmp_path / "out").exists()
