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
    assert settings.describe() == "top5% up, rank 0.5, kd 0.3" and CompressionSettings().describe() == "-"


# --------------------------------------------------------------------------- federated pruning

PRUNE = ("space.labels.prune_method=l1", "space.labels.prune_sparsity=0.5", "space.labels.prune_round=1")


@pytest.fixture(scope="module")
def pruned_storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.conftest import TINY_STUDY

    path = tmp_path_factory.mktemp("prune") / "tiny.toml"
    path.write_text(TINY_STUDY)
    return run_search(load_config(path, [*FIXED_ARCH, "study.name=prune", *PRUNE]), progress=False).storage


@pytest.fixture(scope="module")
def pruned_study(pruned_storage: str) -> optuna.Study:
    return optuna.load_study(study_name="prune", storage=pruned_storage)


@pytest.fixture(scope="module")
def pruned(pruned_study: optuna.Study) -> optuna.trial.FrozenTrial:
    (trial,) = [t for t in pruned_study.trials if t.state.name == "COMPLETE"]
    return trial


def test_federated_pruning_shrinks_the_model(pruned: optuna.trial.FrozenTrial, baseline) -> None:
    attrs = pruned.user_attrs
    assert attrs["labels"]["prune_method"] == "l1" and attrs["labels"]["prune_round"] == 1
    assert attrs["macs"] < baseline.user_attrs["macs"] and attrs["params"] < baseline.user_attrs["params"]
    assert attrs["bytes"] < baseline.user_attrs["bytes"]
    assert attrs["macs_before_pruning"] == baseline.user_attrs["macs"]
    assert pruned.values[1] == attrs["macs"]  # the objective is the pruned model's (tiny study: accuracy, macs, ...)
    rounds = attrs["rounds"]
    assert rounds[1]["upload_bytes"] < rounds[0]["upload_bytes"]  # round 2 sends the smaller model (+ BN pooling)
    assert rounds[1]["upload_bytes"] < baseline.user_attrs["rounds"][1]["upload_bytes"]
    assert 0.0 <= attrs["accuracy"] <= 1.0


def test_pruned_weights_load_into_the_rebuilt_structure(pruned_study: optuna.Study,
                                                        pruned: optuna.trial.FrozenTrial) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fednas.compress import apply_channel_masks, decode_channel_masks
    from fednas.cost import measure
    from fednas.fl._spec import build_run_model
    from search_spaces import MobileNetArch

    folder = Path(pruned_study.user_attrs["artifacts_dir"])
    path = str(folder / pruned.user_attrs["weights_artifact"])
    with safe_open(path, "pt") as f:
        masks = f.metadata()["prune_masks"]
    assert masks == pruned.user_attrs["prune_masks"]
    arch = MobileNetArch.from_dict(pruned.user_attrs["arch"])
    import torch

    model = build_run_model(arch, CompressionSettings.from_labels(pruned.user_attrs["labels"]), num_classes=10,
                            in_channels=1)
    model = apply_channel_masks(model, decode_channel_masks(masks), torch.zeros(2, 1, 28, 28))
    model.load_state_dict(load_file(path), strict=True)
    assert measure(model, in_channels=1, resolution=28).macs == pruned.user_attrs["macs"]


def test_pruned_trial_exports_and_loads(pruned_storage: str, pruned: optuna.trial.FrozenTrial,
                                        tmp_path: Path) -> None:
    from fednas.cost import measure
    from fednas.export import load_model, source_from_trial, write_bundle

    source = source_from_trial(pruned_storage, "prune", trial=pruned.number)
    assert source.prune_masks == pruned.user_attrs["prune_masks"]
    bundle = write_bundle(source, tmp_path / "bundle", formats=[])
    model = load_model(bundle.out)
    assert measure(model, in_channels=1, resolution=28).params == pruned.user_attrs["params"]
    assert abs(bundle.metrics["pytorch_accuracy"] - pruned.user_attrs["accuracy"]) < 1e-9


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(("space.labels.prune_method=l1", "space.labels.prune_round=2"), "prune_round"),
     (('space.labels.prune_method=["l1", "l2"]', "space.labels.prune_round={low=1, high=3}"), "prune_round"),
     (("space.labels.prune_method=l1", "space.labels.prune_sparsity=0"), "prune_sparsity"),
     (("space.labels.prune_method=l1", "space.labels.prune_sparsity=0.0"), "prune_sparsity"),
     (("space.labels.prune_method=l1", "space.labels.prune_sparsity={low=0.0, high=0.5}"), "prune_sparsity"),
     (("space.labels.prune_method=l1", "space.labels.prune_sparsity=1"), "prune_sparsity"),
     (("space.labels.prune_method=l1", "space.labels.prune_sparsity=1.0"), "prune_sparsity"),
     (("space.labels.prune_method=l1", "space.labels.downlink_codec=quantize"), "downlink_codec"),
     (("space.labels.prune_method=gzip",), "prune_method")],
)
def test_bad_pruning_settings_name_the_label(tiny_config: Path, overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(tiny_config, list(overrides))
    assert "\n" not in str(info.value)


def test_pruning_settings_accepted(tiny_config: Path) -> None:
    config = load_config(tiny_config, ['space.labels.prune_method=["none", "l1", "l2", "fpgm"]',
                                       "space.labels.prune_sparsity={low=0.1, high=0.9}", "space.labels.prune_round=1"])
    assert config.space.labels["prune_method"] == ["none", "l1", "l2", "fpgm"]
    settings = CompressionSettings(prune_method="fpgm", prune_sparsity=0.25, prune_round=2)
    assert CompressionSettings.from_json(settings.to_json()) == settings
    assert settings.describe() == "prune fpgm 25% @r2"


# --------------------------------------------------------------------------- pruning granularities


def test_unstructured_pruning_stores_its_sparsity_and_counts_sparse_bytes(tiny_config: Path) -> None:
    dense = _trial(tiny_config, "dense8", objectives=("accuracy_int8",))
    sparse = _trial(tiny_config, "sparse8", "space.labels.prune_method=l1", "space.labels.prune_granularity=weight",
                    "space.labels.prune_sparsity=0.8", "space.labels.prune_round=1", objectives=("accuracy_int8",))
    attrs = sparse.user_attrs
    assert 0.5 < attrs["sparsity"] < 0.8  # 80 % of each prunable layer; the classifier keeps its weights
    assert attrs["macs"] == dense.user_attrs["macs"] and attrs["params"] == dense.user_attrs["params"]
    assert attrs["model_bytes"] < dense.user_attrs["model_bytes"]  # bitmap + nonzero int8 values (a tiny model: the int8 file is mostly scales and headers)
    assert attrs["weight_bytes"] < 0.6 * dense.user_attrs["weight_bytes"]
    assert "prune_masks" not in attrs  # nothing to rebuild: the shape stays


@pytest.fixture(scope="module")
def block_storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.conftest import TINY_STUDY

    path = tmp_path_factory.mktemp("block") / "tiny.toml"
    path.write_text(TINY_STUDY)
    sets = [*FIXED_ARCH, "study.name=block", "space.labels.s2_depth=3", "space.labels.prune_method=l1",
            "space.labels.prune_granularity=block", "space.labels.prune_sparsity=0.5", "space.labels.prune_round=1",
            "space.labels.s2_wbits=8", "objectives.weight_bytes=minimize"]
    return run_search(load_config(path, sets), progress=False).storage


def test_block_pruning_leaves_a_shallower_member_and_it_exports(block_storage: str, tmp_path: Path) -> None:
    from fednas.cost import measure
    from fednas.export import load_model, source_from_trial, write_bundle

    study = optuna.load_study(study_name="block", storage=block_storage)
    (trial,) = [t for t in study.trials if t.state.name == "COMPLETE"]
    attrs = trial.user_attrs
    assert attrs["pruned_depths"] == [1, 2] and len(attrs["pruned_blocks"]) == 1  # 0.5 of 2 removable -> 1
    assert attrs["macs"] < attrs["macs_before_pruning"] and attrs["params"] < attrs["params_before_pruning"]
    bundle = write_bundle(source_from_trial(block_storage, "block", trial=trial.number), tmp_path / "b", formats=[])
    model = load_model(bundle.out)  # the stage precision follows the remaining blocks
    assert measure(model, in_channels=1, resolution=28).macs == attrs["macs"]
    assert len(model.blocks) == 3
    assert abs(bundle.metrics["pytorch_accuracy"] - attrs["accuracy_quantized"]) < 1e-9


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(("space.labels.prune_method=fpgm", "space.labels.prune_granularity=weight"), "'fpgm' cannot rank"),
     (('space.labels.prune_method=["l1", "taylor"]', 'space.labels.prune_granularity=["channel", "weight"]'),
      "'taylor' cannot rank prune_granularity = 'weight'"),
     (("space.labels.prune_method=fpgm", "space.labels.prune_granularity=block"), "'fpgm' cannot rank"),
     (("space.labels.prune_method=l1", "space.labels.prune_granularity=layer"), "prune_granularity")],
)
def test_impossible_granularity_combinations_name_the_labels(tiny_config: Path, overrides: tuple[str, ...],
                                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(tiny_config, list(overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(("space.labels.compression_policy=knapsack", "space.labels.weight_bits=4"), "compression_policy"),
     (("space.labels.compression_policy=dp",), "compression_policy: 'dp' spends the packed bytes"),
     (('space.labels.compression_policy=["uniform", "greedy"]', "space.labels.weight_bits=[32]"),
      "compression_policy: 'greedy'")],
)
def test_a_policy_without_bytes_to_spend_is_refused(tiny_config: Path, overrides: tuple[str, ...],
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(tiny_config, list(overrides))


def test_a_policy_with_some_narrower_weights_is_accepted(tiny_config: Path) -> None:
    config = load_config(tiny_config, ['space.labels.compression_policy=["uniform", "greedy", "dp"]',
                                       "space.labels.weight_bits=[32, 8]"])
    assert CompressionSettings.from_labels({"compression_policy": "dp", "weight_bits": 8}).describe() == "w8 dp"
    assert config.space.labels["compression_policy"] == ["uniform", "greedy", "dp"]
