from __future__ import annotations

import json

import optuna
import pytest
import torch

from fednas.cost import flop_counter_macs, measure
from search_spaces import (
    PRESETS,
    Choice,
    Fixed,
    MobileNetArch,
    Range,
    build_model,
    get_search_space,
    load_architecture,
    preset,
)

# Published torchvision parameter counts; MACs from the papers (Sandler 2018, Howard 2019).
CANONICAL = {
    "mobilenet_v2": (3_504_872, 300e6),
    "mobilenet_v3_large": (5_483_032, 219e6),
    "mobilenet_v3_small": (2_542_856, 56e6),
}


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_canonical_params_and_macs(name: str) -> None:
    params, paper_macs = CANONICAL[name]
    cost = measure(build_model(preset(name), num_classes=1000, in_channels=3), in_channels=3, resolution=224)
    assert cost.params == params
    assert abs(cost.macs - paper_macs) / paper_macs < 0.03


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_tiny", "mobilenet_micro"])
def test_thop_macs_match_torch_flop_counter(name: str) -> None:
    model = build_model(preset(name), num_classes=10, in_channels=1)
    cost = measure(model, in_channels=1, resolution=28)
    assert cost.macs == flop_counter_macs(model, in_channels=1, resolution=28)
    assert cost.macs > 0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_json(name: str) -> None:
    arch = preset(name)
    again = type(arch).from_json(arch.to_json())
    assert again == arch
    assert json.loads(again.to_json()) == json.loads(arch.to_json())


def test_sampled_architectures_round_trip_and_build() -> None:
    space = get_search_space("mobilenet")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        values = space.suggest(trial)
        assert values == {**trial.params, "norm": "batch"}  # Optuna stores the searched labels; norm is fixed
        arch = space.decode(values)
        assert MobileNetArch.from_json(arch.to_json()) == arch
        for channels, res in ((1, 28), (3, 32)):
            out = build_model(arch, num_classes=7, in_channels=channels)(torch.randn(2, channels, res, res))
            assert out.shape == (2, 7)


def test_group_norm_is_a_label_and_keeps_old_records_unchanged() -> None:
    space = get_search_space("mobilenet")
    labels = {**space.corner("low"), "norm": "group"}
    arch = space.decode(labels)
    assert arch.norm == "group" and MobileNetArch.from_json(arch.to_json()) == arch
    model = build_model(arch, num_classes=5, in_channels=1)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.modules()) >= 3
    assert not [k for k in model.state_dict() if "running" in k or "num_batches" in k]  # no client data in buffers
    plain = space.decode({**labels, "norm": "batch"})
    assert "norm" not in plain.to_dict() and MobileNetArch.from_dict(plain.to_dict()) == plain  # JSON as before
    with pytest.raises(ValueError, match="norm"):
        space.resolve({"norm": Choice(("batch", "layer"))})
    with pytest.raises(ValueError, match="norm"):
        arch.weight_slices(arch, num_classes=5, in_channels=1)


def test_build_model_does_not_mutate_and_is_deterministic_in_structure() -> None:
    arch = preset("mobilenet_tiny")
    before = arch.to_json()
    a = build_model(arch, num_classes=10, in_channels=1)
    b = build_model(arch, num_classes=10, in_channels=1)
    assert arch.to_json() == before
    assert [t.shape for t in a.state_dict().values()] == [t.shape for t in b.state_dict().values()]


def test_overrides_fix_and_restrict_labels() -> None:
    space = get_search_space("mobilenet", {"base_channels": [8, 16], "strides": [2, 2]})
    overrides = {"s1_kernel": Fixed(5), "s2_depth": Range(1, 2), "s1_act": Choice(("hardswish",))}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    values = space.suggest(trial, overrides)
    assert values["s1_kernel"] == 5 and "s1_kernel" not in trial.params
    assert 1 <= values["s2_depth"] <= 2 and values["s1_act"] == "hardswish"
    arch = space.decode(values)
    assert len(arch.stages) == 2 and arch.stages[0].kernel == 5


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"s9_kernel": Fixed(3)}, "unknown label"),
        ({"s1_kernel": Fixed(4)}, "s1_kernel"),
        ({"s1_depth": Range(1, 99)}, "s1_depth"),
        ({"s1_se": Choice((1,))}, "s1_se"),
    ],
)
def test_bad_overrides_name_the_label(overrides, match) -> None:
    with pytest.raises(ValueError, match=match):
        get_search_space("mobilenet").resolve(overrides)


def test_unknown_names_list_valid_ones(tmp_path) -> None:
    with pytest.raises(ValueError, match="mobilenet"):
        get_search_space("vgg")
    with pytest.raises(ValueError, match="mobilenet_v2"):
        load_architecture("vgg16")
    bad = tmp_path / "arch.json"
    bad.write_text(json.dumps({**preset("mobilenet_tiny").to_dict(), "colour": "red"}))
    with pytest.raises(ValueError, match="colour"):
        load_architecture(bad)


def test_invalid_architecture_values_raise() -> None:
    data = preset("mobilenet_micro").to_dict()
    data["stages"][0]["kernel"] = 4
    with pytest.raises(ValueError, match="kernel"):
        MobileNetArch.from_dict(data)
