"""The ``resnet`` family: published sizes, cost cross-checks, JSON records, validation, CLI."""

from __future__ import annotations

import json
import tracemalloc

import optuna
import pytest
import torch

from fednas.cli import main
from fednas.cost import count_params, flop_counter_macs, measure
from search_spaces import (
    PRESETS,
    MobileNetArch,
    ResNetArch,
    ResStage,
    arch_from_dict,
    arch_from_json,
    build_model,
    get_search_space,
    load_architecture,
    preset,
)

RESNET_PRESETS = sorted(name for name, p in PRESETS.items() if isinstance(p.make(), ResNetArch))

# torchvision's parameter counts (resnet18/34/50, 1000 classes) and its documented GFLOPS
# (which are MACs: 1.81 / 4.09 G at 224x224); HeteroFL's pre-activation ResNet-18 at rate 1.
IMAGENET = {"resnet18": (11_689_512, 1.82e9), "resnet50": (25_557_032, 4.09e9)}


def _bottleneck_preact(stem: str = "cifar") -> ResNetArch:
    return ResNetArch(stem=stem, stem_channels=8, preact=True, stages=(
        ResStage(channels=8, depth=2, stride=1, block="bottleneck"),
        ResStage(channels=16, depth=1, stride=2, block="bottleneck"),
    ))


def test_the_presets_are_registered() -> None:
    assert RESNET_PRESETS == ["preact_resnet18_cifar", "resnet18", "resnet34", "resnet50", "resnet_micro"]


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_torchvision_params_and_macs(name: str) -> None:
    params, macs = IMAGENET[name]
    cost = measure(build_model(preset(name), num_classes=1000, in_channels=3), in_channels=3, resolution=224)
    assert cost.params == params
    assert abs(cost.macs - macs) / macs < 0.03


def test_resnet34_params() -> None:
    assert count_params(build_model(preset("resnet34"), num_classes=1000, in_channels=3)) == 21_797_672


def test_preact_resnet18_cifar_params_and_output() -> None:
    model = build_model(preset("preact_resnet18_cifar"), num_classes=10, in_channels=3)
    assert count_params(model) == 11_172_170
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("arch, channels, res", [
    (preset("resnet_micro"), 1, 28),
    (preset("resnet_micro"), 3, 32),
    (_bottleneck_preact(), 3, 32),
    (_bottleneck_preact("imagenet"), 3, 64),
    (ResNetArch(stem="imagenet", stem_channels=8, stages=(
        ResStage(channels=8, depth=1, stride=2, block="bottleneck"), ResStage(channels=8, depth=1, stride=2))), 3, 64),
], ids=["micro-28", "micro-32", "preact-bottleneck-32", "preact-bottleneck-imagenet-64", "post-mixed-imagenet-64"])
def test_thop_macs_match_torch_flop_counter(arch: ResNetArch, channels: int, res: int) -> None:
    model = build_model(arch, num_classes=10, in_channels=channels)
    cost = measure(model, in_channels=channels, resolution=res)
    assert cost.macs > 0
    assert cost.macs == flop_counter_macs(model, in_channels=channels, resolution=res)


@pytest.mark.parametrize("name", RESNET_PRESETS)
def test_presets_round_trip_json(name: str) -> None:
    arch = preset(name)
    text = arch.to_json()
    assert json.loads(text)["family"] == "resnet"
    assert ResNetArch.from_json(text) == arch
    assert arch_from_json(text) == arch
    assert json.loads(arch_from_json(text).to_json()) == json.loads(text)


def test_sampled_architectures_round_trip_and_build() -> None:
    space = get_search_space("resnet", {"base_channels": [8, 16], "strides": [1, 2], "stem_base": 8,
                                        "max_depth": 2})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    blocks = set()
    for _ in range(6):
        trial = study.ask()
        values = space.suggest(trial)
        assert values == {**trial.params, "norm": "batch"}  # Optuna stores the searched labels; norm is fixed
        assert set(values) == {"stem_width", "s1_depth", "s1_width", "s1_block", "s2_depth", "s2_width", "s2_block",
                               "norm"}
        arch = space.decode(values)
        assert isinstance(arch, ResNetArch)
        assert arch_from_dict(json.loads(arch.to_json())) == arch
        blocks |= {s.block for s in arch.stages}
        for channels, res in ((1, 28), (3, 32)):
            model = build_model(arch, num_classes=7, in_channels=channels)
            out = model(torch.randn(2, channels, res, res))
            assert out.shape == (2, 7)
        study.tell(trial, 0.0)
    assert blocks == {"basic", "bottleneck"}  # both block types were sampled and built


def test_default_space_samples_build() -> None:
    space = get_search_space("resnet")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(3):
        trial = study.ask()
        values = space.suggest(trial)
        assert values == {**trial.params, "norm": "batch"}
        arch = space.decode(values)
        assert len(arch.stages) == 4 and ResNetArch.from_json(arch.to_json()) == arch
        with torch.no_grad():
            out = build_model(arch, num_classes=10, in_channels=3).eval()(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10)
        study.tell(trial, 0.0)


def test_arch_from_dict_dispatches_on_family() -> None:
    assert type(arch_from_dict(preset("resnet_micro").to_dict())) is ResNetArch
    mobile = preset("mobilenet_micro").to_dict()
    assert type(arch_from_dict(mobile)) is MobileNetArch
    mobile.pop("family")  # trials stored before families existed
    assert arch_from_dict(mobile) == preset("mobilenet_micro")
    # a ResNet record without its family is read as a MobileNet, and fails as one
    resnet = preset("resnet_micro").to_dict()
    resnet.pop("family")
    with pytest.raises(ValueError, match="unknown key"):
        arch_from_dict(resnet)
    with pytest.raises(ValueError, match="family"):
        ResNetArch.from_dict(resnet)


def _micro(**changes) -> dict:
    data = preset("resnet_micro").to_dict()
    stage = changes.pop("stage", None)
    if stage:
        data["stages"][0].update(stage)
    data.update(changes)
    return data


@pytest.mark.parametrize("data, match", [
    (_micro(family="vgg"), r"family: expected one of .*resnet.*'vgg'"),
    (_micro(family=3), "family"),
    (_micro(colour="red"), r"unknown key\(s\) \['colour'\]"),
    (_micro(stage={"width": 2}), r"stages\[0\]: unknown key\(s\) \['width'\]"),
    (_micro(stage={"block": "dense"}), r"block: expected one of \['basic', 'bottleneck'\], got 'dense'"),
    (_micro(stem="huge"), r"stem: expected one of \['imagenet', 'cifar'\]"),
    (_micro(stem_channels=10**9), "stem_channels: expected an integer in"),
    (_micro(stage={"channels": 10**9}), "channels: expected an integer in"),
    (_micro(stage={"channels": True}), "channels"),
    (_micro(stage={"depth": 10**6}), "depth: expected an integer in"),
    (_micro(stages=[{"channels": 8, "depth": 300, "stride": 1}] * 2), "stages: expected at most"),
    (_micro(stages=[]), "stages"),
    (_micro(stages="8x2"), "stages"),
    (_micro(stage={"stride": 3}), "stride"),
    (_micro(preact="yes"), "preact"),
    (_micro(dropout=1.5), "dropout"),
    ({"family": "resnet", "stem": "cifar"}, r"missing key\(s\) \['stages'\]"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_records_name_the_field_without_allocating(data, match, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_modules(*args, **kwargs):
        raise AssertionError("a torch module was constructed while validating a record")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_modules)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            arch_from_dict(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # rejected while parsing: nothing the size of a layer was allocated


def test_bad_file_names_the_field(tmp_path) -> None:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(_micro(stage={"channels": 10**9})))
    with pytest.raises(ValueError, match=r"arch\.json: stages\[0\]\.channels: expected an integer in \[1, 16384\]"):
        load_architecture(path)
    assert main(["arch", "info", str(path)]) == 2


def test_records_validate_when_built_directly() -> None:
    with pytest.raises(ValueError, match="block"):
        ResStage(channels=8, depth=1, stride=1, block="wide")
    with pytest.raises(ValueError, match="stem"):
        ResNetArch(stem="tiny", stages=(ResStage(channels=8, depth=1, stride=1),))
    with pytest.raises(ValueError, match="base_channels and strides"):
        get_search_space("resnet", {"base_channels": [8, 16], "strides": [1]})
    with pytest.raises(ValueError, match="unknown option"):
        get_search_space("resnet", {"kernel": 3})


def test_bottleneck_output_channels_and_describe() -> None:
    arch = _bottleneck_preact()
    assert [s.out_channels for s in arch.stages] == [32, 64]
    assert arch.num_blocks == 3
    assert arch.describe() == "resnet pre cifar 8 | 8x2 bottleneck | 16x1/s2 bottleneck"
    model = build_model(arch, num_classes=10, in_channels=3)
    assert model.classifier[-1].in_features == 64


def test_cli_arch_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "info", "resnet18", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 11_689_512
    assert info["num_classes"] == 1000 and info["resolution"] == 224 and info["in_channels"] == 3
    assert abs(info["macs"] - 1.82e9) / 1.82e9 < 0.03
    assert info["blocks"] == 8
    assert info["architecture"] == preset("resnet18").to_dict()


@pytest.mark.parametrize("preact", [False, True])
def test_group_norm_is_a_label_of_the_resnet_family_too(preact: bool) -> None:
    space = get_search_space("resnet", {"preact": preact, "base_channels": [8, 16], "strides": [1, 2],
                                        "stem_base": 8})
    labels = {**space.corner("high"), "norm": "group"}
    arch = space.decode(labels)
    assert arch.norm == "group" and ResNetArch.from_json(arch.to_json()) == arch and "group norm" in arch.describe()
    model = build_model(arch, num_classes=5, in_channels=3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not [k for k in model.state_dict() if "running" in k or "num_batches" in k]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    plain = space.decode({**labels, "norm": "batch"})
    assert "norm" not in plain.to_dict()  # records from before the label read as before
    batch_params = count_params(build_model(plain, num_classes=5, in_channels=3))
    assert count_params(model) == batch_params  # the same affine parameters per channel
    with pytest.raises(ValueError, match="norm"):
        ResNetArch.from_dict({**arch.to_dict(), "norm": "layer"})
