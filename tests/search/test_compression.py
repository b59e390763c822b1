"""Compression knobs as labels: config checks, and each knob's effect seen in a stored trial."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from fednas.config import ConfigError, load_config
from fednas.fl import RunSpec
from fednas.search import run_search
from search_spaces import CompressionSettings

# one architecture, so every difference comes from the knob
FIXED_ARCH = ["space.labels.s1_width=0.5", "space.labels.s2_width=0.5", "space.labels.s1_expansion=2",
              "space.labels.s2_kernel=3", "study.trials=1"]


def _trial(tiny_config: Path, name: str, *overrides: str, objectives: tuple[str, ...] = ()) -> optuna.trial.FrozenTrial:
    sets = [*FIXED_ARCH, f"study.name={name}", *overrides, *(f"objectives.{o}=maximize" for o in objectives)]
    result = run_search(load_config(tiny_config, sets), progress=False)
    study = optuna.load_study(study_name=name, storage=result.storage)
    (trial,) = [t for t in study.trials if t.state.name == "COMPLETE"]
    return trial


def _train_upload(trial: optuna.trial.FrozenTrial) -> int:
    # the last round also carries the (uncompressed) batch-norm pooling replies
    return trial.user_attrs["rounds"][0]["upload_bytes"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> optuna.trial.FrozenTrial:
    from tests.conftest import TINY_STUDY

    path = tmp_path_factory.mktemp("base") / "tiny.toml"
    path.write_text(TINY_STUDY)
    return _trial(path, "base")


def test_defaults_are_off_and_stored(baseline: optuna.trial.FrozenTrial) -> None:
    labels = baseline.user_attrs["labels"]
    assert CompressionSettings.from_labels(labels) == CompressionSettings()
    assert labels["uplink_codec"] == "none" and labels["lowrank_ratio"] == 1.0 and labels["kd_weight"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "ratio"),
    [(("space.labels.uplink_codec=quantize", "space.labels.uplink_bits=8"), 0.3),
     (("space.labels.uplink_codec=topk", "space.labels.uplink_topk=0.01"), 0.1)]  # tiny model: headers weigh,
)
def test_uplink_codec_shrinks_uploads(tiny_config: Path, baseline, overrides: tuple[str, ...], ratio: float) -> None:
    trial = _trial(tiny_config, "codec", *overrides)
    assert trial.user_attrs["labels"]["uplink_codec"] == overrides[0].split("=")[1]
    assert _train_upload(trial) < ratio * _train_upload(baseline)
    assert trial.user_attrs["upload_bytes"] < baseline.user_attrs["upload_bytes"]
    assert 0.0 <= trial.user_attrs["accuracy"] <= 1.0


def test_downlink_codec_shrinks_downloads(tiny_config: Path, baseline) -> None:
    trial = _trial(tiny_config, "down", "space.labels.downlink_codec=quantize", "space.labels.downlink_bits=8",
                   "federation.rounds=3")
    assert trial.user_attrs["labels"]["downlink_codec"] == "quantize"
    # round 1 is sent in full precision, later rounds as 8-bit deltas (round 3 also pools batch norm)
    rounds = trial.user_attrs["rounds"]
    assert rounds[1]["download_bytes"] < 0.6 * rounds[0]["download_bytes"]


def test_lowrank_lowers_params(tiny_config: Path, baseline) -> None:
    trial = _trial(tiny_config, "lowrank", "space.labels.lowrank_ratio=0.5")
    assert trial.user_attrs["labels"]["lowrank_ratio"] == 0.5
    assert trial.user_attrs["params"] < baseline.user_attrs["params"]
    assert trial.user_attrs["bytes"] < baseline.user_attrs["bytes"]
    # (upload bytes may not drop on a model this tiny: twice the arrays, each with a .npy header)


def test_distillation_changes_training(tiny_config: Path, baseline) -> None:
    trial = _trial(tiny_config, "kd", "space.labels.kd_weight=0.5", "space.labels.kd_temperature=2.0")
    assert trial.user_attrs["labels"]["kd_weight"] == 0.5
    assert trial.user_attrs["rounds"][0]["train_loss"] != baseline.user_attrs["rounds"][0]["train_loss"]
    assert trial.user_attrs["macs"] == baseline.user_attrs["macs"]


def test_int8_objectives(tiny_config: Path, baseline) -> None:
    trial = _trial(tiny_config, "int8", objectives=("accuracy_int8",))
    assert 0.0 <= trial.user_attrs["accuracy_int8"] <= 1.0
    assert trial.values[-1] == trial.user_attrs["accuracy_int8"]
    assert trial.user_attrs["model_bytes"] > 0  # both stored when either is an objective
    assert "model_bytes" not in baseline.user_attrs


@pytest.mark.parametrize(
    ("override", "label"),
    [("space.labels.uplink_bits=3", "uplink_bits"), ("space.labels.uplink_codec=gzip", "uplink_codec"),
     ("space.labels.downlink_codec=topk", "downlink_codec"), ("space.labels.lowrank_ratio=0", "lowrank_ratio"),
     ("space.labels.lowrank_ratio=1.5", "lowrank_ratio"), ("space.labels.kd_weight=2", "kd_weight"),
     ("space.labels.uplink_topk={low=0.0, high=0.1}", "uplink_topk"), ("space.labels.no_such_knob=1", "no_such_knob")],
)
def test_bad_knob_values_name_the_label(tiny_config: Path, override: str, label: str) -> None:
    with pytest.raises(ConfigError, match=label):
        load_config(tiny_config, [override])


def test_knobs_can_be_searched(tiny_config: Path) -> None:
    config = load_config(tiny_config, ["space.labels.uplink_bits=[8, 4]", "space.labels.lowrank_ratio={low=0.25, high=1.0}"])
    assert config.space.labels["uplink_bits"] == [8, 4]


def test_settings_round_trip_through_run_config() -> None:
    from fednas.config import DataConfig, FederationConfig
    from search_spaces import preset

    settings = CompressionSettings(uplink_codec="topk", uplink_topk=0.05, lowrank_ratio=0.5, kd_weight=0.3)
    assert CompressionSettings.from_json(settings.to_json()) == settings
    spec = RunSpec(DataConfig(), FederationConfig(), 1, preset("mobilenet_micro").to_dict(), settings)
    assert RunSpec.from_run_config(spec.to_run_config()) == spec
    old = RunSpec(DataConfig(), FederationConfig(), 1, preset("mobilenet_micro").to_dict())
    assert RunSpec.from_run_config(old.to_run_config()).compression == CompressionSettings()
    assert settings.describe() == "top5% up, lr0.5, kd0.3" and CompressionSettings().describe() == "-"
