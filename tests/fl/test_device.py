"""federation.device: resolution, one-line config errors, and the CPU path through the same code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fednas.cli import main
from fednas.config import ConfigError, load_config
from fednas.train import TrainConfig, evaluate, on_device, resolve_device, train
from search_spaces import build_model, preset
from tests.conftest import TINY_STUDY

NO_CUDA = not torch.cuda.is_available()


def test_auto_and_cpu_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_where_there_is_none_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:", "cuda:x", "CPU", ""])
def test_unknown_device_names_are_config_errors(tmp_path: Path, name: str) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    with pytest.raises(ConfigError, match="federation.device"):
        load_config(path, [f"federation.device='{name}'"])


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_check_refuses_cuda_with_exit_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    assert main(["search", str(path), "--check", "--set", "federation.device='cuda'"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "federation.device" in err[0] and "no CUDA device" in err[0]
    assert not list(tmp_path.glob("*.db"))


def test_train_and_evaluate_on_an_explicit_device_leave_the_model_on_the_cpu() -> None:
    model = build_model(preset("mobilenet_micro"), num_classes=10, in_channels=1)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    train(model, x, y, TrainConfig(device="cpu", batch_size=8), seed=0)
    evaluate(model, x, y, device=resolve_device("auto"))
    assert all(p.device.type == "cpu" for p in model.parameters())
    with on_device(model, None) as dev:
        assert dev.type == "cpu"


def test_a_trial_records_its_device(tiny_study_factory) -> None:
    import optuna

    folder, config, _ = tiny_study_factory("device", ("study.trials=1", "federation.device='cpu'"))
    trial = optuna.load_study(study_name="device", storage=config.storage).trials[0]
    assert trial.user_attrs["device"] == "cpu"
