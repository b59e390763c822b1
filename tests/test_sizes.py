"""Sizes read from files are bounded before anything is allocated (architecture JSON, bundles, flags)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fednas.cli import main
from search_spaces import MAX_PARAMS, PRESETS, arch_from_dict, build_model, preset

SMALL = {
    "family": "mobilenet", "stem_channels": 8, "stem_stride": 2, "stem_activation": "hardswish",
    "stages": [{"channels": 8, "depth": 1, "stride": 2, "expansion": 2, "kernel": 3, "se": False,
                "activation": "relu6"}],
    "head_channels": 0, "head_activation": "relu6", "classifier_hidden": 0, "dropout": 0.0, "se_ratio": 0.25,
    "se_gate": "hardsigmoid",
}


def _with(**changes) -> dict:
    d = json.loads(json.dumps(SMALL))
    for key, value in changes.items():
        if key.startswith("stage_"):
            d["stages"][0][key[len("stage_"):]] = value
        else:
            d[key] = value
    return d


@pytest.mark.parametrize(("change", "field"), [
    ({"stage_channels": 10**9}, "stages[0].channels"),
    ({"stage_expansion": 10**9}, "stages[0].expansion"),
    ({"stage_kernel": 10001}, "stages[0].kernel"),
    ({"stage_depth": 5000}, "stages[0].depth"),
    ({"classifier_hidden": 10**9}, "classifier_hidden"),
    ({"head_channels": 10**9}, "head_channels"),
    ({"stem_channels": 10**9}, "stem_channels"),
])
def test_each_absurd_field_is_named(change: dict, field: str) -> None:
    import re

    with pytest.raises(ValueError, match="^" + re.escape(field) + ": expected"):
        arch_from_dict(_with(**change))


def test_fields_within_bounds_that_multiply_past_the_parameter_bound_are_refused_unallocated() -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = arch_from_dict(_with(stage_channels=16_384, stage_expansion=16, stage_depth=50))  # each field legal
    with pytest.raises(ValueError, match=r"parameters .*expected at most 100,000,000 \(search_spaces.MAX_PARAMS\)"):
        build_model(huge, num_classes=10, in_channels=1)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert grown < 500e6, f"the check itself took {grown / 1e6:.0f} MB"


def test_real_networks_are_far_inside_the_bounds() -> None:
    for name, p in PRESETS.items():
        model = build_model(preset(name), num_classes=p.num_classes, in_channels=p.in_channels)
        assert sum(t.numel() for t in model.parameters()) < MAX_PARAMS / 1.5, name


def test_cli_and_bundles_refuse_absurd_sizes_in_one_line(tmp_path: Path, tiny_config: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from fednas.models import load_model

    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps(_with(stage_channels=16_384, stage_expansion=16, stage_depth=50)))
    cases = [
        (["arch", "info", str(huge)], "MAX_PARAMS"),
        (["arch", "info", "mobilenet_v2", "--resolution", "100000"], "--resolution: expected an integer in [1, 4,096]"),
        (["train", str(huge), str(tiny_config), "--out", str(tmp_path / "out")], "MAX_PARAMS"),
        (["search", str(tiny_config), "--check", "--set", "data.resolution=100000"], "data.resolution"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert needle in err and err.count("\n") == 1, err
        assert "training" not in out  # refused before the run is announced
    assert not (tmp_path / "out").exists()
    # a bundle whose arch.json or metrics.json was edited to absurd sizes
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "arch.json").write_text(huge.read_text())
    (bundle / "metrics.json").write_text(json.dumps({"input": {"num_classes": 10, "in_channels": 1,
                                                               "resolution": 28}}))
    (bundle / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="MAX_PARAMS"):
        load_model(bundle)
    (bundle / "arch.json").write_text(json.dumps(SMALL))
    (bundle / "metrics.json").write_text(json.dumps({"input": {"num_classes": 10, "in_channels": 1,
                                                               "resolution": 10**9}}))
    with pytest.raises(ValueError, match=r"input.resolution: expected an integer in \[0, 4096\]"):
        load_model(bundle)
    shutil.rmtree(bundle)
