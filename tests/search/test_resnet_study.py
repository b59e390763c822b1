"""studies/resnet_cifar.toml end to end on generated 32x32 RGB data: search, export, load, pareto."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from fednas.cli import main
from fednas.config import load_config
from fednas.export import load_model
from fednas.search import run_search
from search_spaces import ResNetArch, arch_from_dict, build_model

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "studies" / "resnet_cifar.toml"


def _write_rgb_npz(path: Path, n: int = 400, classes: int = 10, seed: int = 0) -> Path:
    """Learnable 32x32 RGB classes: each class has its own mean colour; pixels add Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % classes
    rng.shuffle(y)
    palette = rng.uniform(40, 215, size=(classes, 3))
    x = palette[y][:, None, None, :] + rng.normal(0, 25, size=(n, 32, 32, 3))
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y)  # channels-last (N, 32, 32, 3)
    return path


def test_the_shipped_study_reads_cifar10_from_disk() -> None:
    config = load_config(STUDY)
    assert config.space.name == "resnet" and config.space.options["stem"] == "cifar"
    assert config.data.source == "torchvision" and config.data.name == "CIFAR10"
    assert config.data.path == "data/cifar10"
    assert list(config.objectives) == ["accuracy", "macs", "comm_bytes"]
    assert config.space.options["base_channels"] == [16, 32, 64] and config.space.options["strides"] == [1, 2, 2]
    labels = config.space.labels
    for i in (1, 2, 3):
        assert labels[f"s{i}_depth"] == {"low": 1, "high": 2}
        assert labels[f"s{i}_width"] == [0.5, 1.0] and labels[f"s{i}_block"] == ["basic", "bottleneck"]


def test_missing_cifar10_is_a_clean_error_and_nothing_downloads(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cifar10"
    storage = f"sqlite:///{tmp_path / 'never.db'}"
    rc = main(["search", str(STUDY), "--check", "--storage", storage, "--set", f"data.path='{root}'"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "torchvision" in err and err.count("\n") == 1  # one line: no torchvision, or not downloaded there
    assert not root.exists() and list(tmp_path.iterdir()) == []  # no download, no storage file


def test_resnet_study_search_export_and_pareto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    data = _write_rgb_npz(tmp_path / "rgb32.npz")
    storage = f"sqlite:///{tmp_path / 'resnet.db'}"
    name = "cifar_arch_test"  # no 'resnet' in it: the pareto check must find the family in the rows
    config = load_config(STUDY, [
        f"study.name='{name}'", f"study.storage='{storage}'", "study.trials=2", "study.sampler=random",
        "data.source=npz", f"data.path='{data}'", "data.name=''",
        "federation.num_clients=3", "federation.rounds=2", "federation.local_steps=6",
    ])
    result = run_search(config, progress=False)
    assert result.completed == 2 and result.storage == storage

    study = optuna.load_study(study_name=name, storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    for t in complete:
        arch = arch_from_dict(t.user_attrs["arch"])
        assert t.user_attrs["arch"]["family"] == "resnet" and isinstance(arch, ResNetArch)
        assert arch.stem == "cifar" and [s.stride for s in arch.stages] == [1, 2, 2]
        assert {t.user_attrs["labels"][f"s{i}_block"] for i in (1, 2, 3)} <= {"basic", "bottleneck"}
        assert t.values[1] == t.user_attrs["macs"] <= 25_000_000  # max_macs of the study
        assert 0.0 <= t.values[0] <= 1.0 and len(t.user_attrs["rounds"]) == 2
        model = build_model(arch, num_classes=10, in_channels=3)
        assert sum(p.numel() for p in model.parameters()) == t.user_attrs["params"]
    assert max(t.values[0] for t in complete) > 0.2  # the colours are learnt (chance: 0.1)

    out = tmp_path / "knee"
    assert main(["export", "--storage", storage, "--study", name, "--pick", "knee", "--out", str(out),
                 "--formats", "onnx,int8,torchscript"]) == 0
    for f in ("arch.json", "model.safetensors", "model.onnx", "model.int8.onnx", "model.torchscript.pt"):
        assert (out / f).stat().st_size > 0, f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["input"]["shape"] == [3, 32, 32] and metrics["input"]["num_classes"] == 10
    assert json.loads((out / "arch.json").read_text())["family"] == "resnet"

    model = load_model(out)
    assert isinstance(arch_from_dict(json.loads((out / "arch.json").read_text())), ResNetArch)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() <= 1e-4
    capsys.readouterr()

    assert main(["pareto", "--storage", storage, "--study", name]) == 0
    table = capsys.readouterr().out
    assert "resnet" in table, table  # the architecture column describes the stored ResNet
    assert main(["pareto", "--storage", storage, "--study", name, "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front and all(t["arch"]["family"] == "resnet" for t in front)
    print(table)  # shown with -s
