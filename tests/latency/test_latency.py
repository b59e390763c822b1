"""Latency: measuring on a runtime, the unit table, its file, the predictor and the config that names them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from fednas.config import ConfigError, parse_config
from fednas.cost import count_macs
from fednas.latency import (LatencyTable, TableError, UnitTiming, latency_units, load_table, measure_latency,
                            predict_latency, profile_units)
from search_spaces import build_model, preset

pytest.importorskip("onnxruntime")

SHAPE = (1, 28, 28)


def _tiny() -> nn.Module:
    return build_model(preset("mobilenet_micro"), num_classes=10, in_channels=1)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch", "tflite"])
def test_a_measured_latency_is_a_median_with_its_spread_and_where_it_ran(runtime: str) -> None:
    from fednas.runtimes import get_runtime_spec

    if (missing := get_runtime_spec(runtime).missing()) is not None:
        if os.environ.get("FEDNAS_REQUIRE_EXTRAS"):
            pytest.fail(f"{missing} not installed and FEDNAS_REQUIRE_EXTRAS is set")
        pytest.skip(f"{missing} not installed: pip install 'fednas[{get_runtime_spec(runtime).extra}]'")
    lat = measure_latency(_tiny(), SHAPE, runtime=runtime, threads=1, warmup=2, repeats=9)
    assert 0 < lat.p25_ms <= lat.ms <= lat.p75_ms
    assert (lat.runtime, lat.threads, lat.repeats, lat.source) == (runtime, 1, 9, "measured")
    assert lat.runtime_version and "units" not in lat.to_dict()
    before = torch.get_num_threads()
    measure_latency(_tiny(), SHAPE, runtime="torch", threads=1, warmup=0, repeats=1)
    assert torch.get_num_threads() == before  # the torch runtime restores the thread count
    for bad in ({"threads": 0}, {"repeats": 0}, {"warmup": -1}):
        with pytest.raises(ValueError):
            measure_latency(_tiny(), SHAPE, **bad)
    with pytest.raises(ValueError, match="unknown latency runtime 'tpu'; valid: onnxruntime, tflite, torch"):
        measure_latency(_tiny(), SHAPE, runtime="tpu")


def test_units_cover_the_model_in_forward_order_and_their_macs_add_up() -> None:
    model = build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1)
    units = latency_units(model, SHAPE)
    kinds = [u.kind for u in units]
    assert kinds[0] == "Sequential" and kinds[-1] == "Sequential" and "AdaptiveAvgPool2d" in kinds
    assert "Identity" not in kinds  # an absent head costs nothing
    assert kinds.count("InvertedResidual") == sum(s.depth for s in preset("mobilenet_tiny").stages)
    assert sum(u.macs for u in units) == count_macs(model, in_channels=1, resolution=28)
    assert units[0].input_shape == SHAPE and units[-1].input_shape == (units[-2].input_shape[0],)
    # the same block at the same input shares a key; a residual flag or another input does not
    a = build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1)
    assert [u.key for u in latency_units(a, SHAPE)] == [u.key for u in units]
    assert latency_units(a, (1, 32, 32))[1].key != units[1].key
    blocks = [m for m in model.modules() if type(m).__name__ == "InvertedResidual"]
    flipped = blocks[0]
    flipped.use_residual = not flipped.use_residual
    assert latency_units(model, SHAPE)[1].key != units[1].key


def _table(models: list[nn.Module], overhead: float = 0.01) -> LatencyTable:
    units = {}
    for m in models:
        for i, u in enumerate(latency_units(m, SHAPE)):
            units[u.key] = UnitTiming(0.1 * (i + 1), 0.09 * (i + 1), 0.12 * (i + 1), u.kind, u.macs, u.activations)
    return LatencyTable("onnxruntime", "1.0", 1, 5, overhead, units)


def test_a_prediction_sums_the_units_less_the_shared_empty_calls_and_estimates_the_missing_ones() -> None:
    model = _tiny()
    units = latency_units(model, SHAPE)
    table = _table([model])
    got = table.predict(units)
    n = len(units)
    assert got.ms == pytest.approx(sum(0.1 * (i + 1) for i in range(n)) - 0.01 * (n - 1))
    assert got.p25_ms <= got.ms <= got.p75_ms and (got.units, got.fallback, got.source) == (n, 0, "predicted")
    wider = build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1)
    other = table.predict(latency_units(wider, SHAPE))
    assert other.fallback > 0 and other.ms > 0  # estimated from the per-kind fit, never below one call
    assert all(table.estimate(u) >= table.overhead_ms for u in latency_units(wider, SHAPE))


def test_a_profiled_table_round_trips_through_its_file_and_predicts_what_it_timed(tmp_path: Path) -> None:
    model = _tiny()
    table = profile_units([(model, SHAPE)], runtime="onnxruntime", threads=1, warmup=1, repeats=5,
                          source={"note": "test"})
    assert set(table.units) == {u.key for u in latency_units(model, SHAPE)} and table.overhead_ms > 0
    assert table.machine["cpus"] >= 1 and table.created
    path = tmp_path / "t.json"
    table.save(path)
    back = load_table(path)
    assert back.units == table.units and back.source == {"note": "test"} and back.path == str(path)
    pred = predict_latency(back, model, SHAPE)
    assert pred.fallback == 0 and pred.ms == pytest.approx(table.predict(latency_units(model, SHAPE)).ms)


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def good_doc() -> dict:
    table = _table([_tiny()])
    return table.to_json()


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(format="other"), "format: expected 'fednas-latency-table'"),
    (lambda d: d.update(version=9), "version: expected 1"),
    (lambda d: d.update(threads=0), "threads: expected an integer >= 1"),
    (lambda d: d.update(overhead_ms=-1), "overhead_ms: expected a number >= 0"),
    (lambda d: d.update(units={}), "units: expected a non-empty table"),
    (lambda d: d["units"].update(bad=[1, 2]), "units.bad: expected [ms, p25_ms, p75_ms, kind, macs, activations]"),
    (lambda d: d["units"].update(bad=[float("nan"), 1, 1, "x", 1, 1]), "units.bad: expected"),
    (lambda d: d.update(runtime=""), "runtime: expected a non-empty string"),
])
def test_a_bad_table_is_refused_naming_the_file_and_key(tmp_path: Path, good_doc: dict, change, message: str) -> None:
    change(good_doc)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(good_doc).replace("NaN", "NaN"))
    with pytest.raises(TableError) as info:
        load_table(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def test_unreadable_and_oversized_tables_are_refused_before_reading(tmp_path: Path, monkeypatch) -> None:
    import fednas.latency._table as table_module

    with pytest.raises(TableError, match="cannot read the latency table"):
        load_table(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(TableError, match="not a JSON latency table"):
        load_table(tmp_path / "junk.json")
    monkeypatch.setattr(table_module, "MAX_TABLE_BYTES", 4)
    with pytest.raises(TableError, match="bytes; expected a latency table of at most 4 bytes"):
        load_table(_write(tmp_path / "big.json", {"format": "x"}))


@pytest.mark.parametrize(("doc", "message"), [
    ({"latency": {"runtime": "tpu"}}, "latency.runtime: expected one of ['onnxruntime', 'tflite', 'torch']"),
    ({"latency": {"threads": 0}}, "latency.threads: expected an integer in [1, 256]"),
    ({"latency": {"repeats": 0}}, "latency.repeats: expected an integer in [1, 100000]"),
    ({"latency": {"table": "/no/such/table.json"}, "objectives": {"accuracy": "maximize", "latency_ms": "minimize"}},
     "latency.table: '/no/such/table.json' is not a file"),
    ({"latency": {"colour": 1}}, "latency.colour: unknown key"),
    ({"constraints": {"max_latency_ms": -1.0}}, "constraints.max_latency_ms: expected a number >= 0"),
])
def test_latency_config_errors_name_the_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert message in str(info.value), str(info.value)


def test_a_runtime_that_is_not_installed_is_refused_naming_the_extra(monkeypatch) -> None:
    from fednas.runtimes import RUNTIMES, RuntimeSpec

    monkeypatch.setitem(RUNTIMES, "onnxruntime", RuntimeSpec("onnxruntime", "x:Y", ("no_such_module_xyz",), "export",
                                                             ""))
    with pytest.raises(ConfigError, match=r"latency.runtime: 'onnxruntime' needs no_such_module_xyz, which is not "
                                          r"installed \(pip install 'fednas\[export\]'\)"):
        parse_config({"objectives": {"accuracy": "maximize", "latency_ms": "minimize"}})
    parse_config({})  # not scored: nothing to measure, nothing required


def test_calibration_fits_the_boundary_cost_that_whole_models_do_not_pay() -> None:
    model = _tiny()
    units = latency_units(model, SHAPE)
    table = _table([model])
    plain = table.predict(units).ms
    junction = sum(int(torch.tensor(u.input_shape).prod()) for u in units[1:])
    table.calibrate([(units, plain - 2e-6 * junction)])  # measured faster by 2e-6 ms per junction element
    assert table.boundary_ms_per_element == pytest.approx(2e-6)
    assert table.predict(units).ms == pytest.approx(plain - 2e-6 * junction)
    table.calibrate([(units, plain + 1.0)])  # slower than the sum: no negative boundary cost
    assert table.boundary_ms_per_element == 0.0


def test_profile_and_time_times_whole_models_in_the_units_passes(tmp_path: Path) -> None:
    from fednas.latency import profile_and_time

    model, other = _tiny(), build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1)
    table, timed = profile_and_time([(model, SHAPE)], [(other, SHAPE)], warmup=1, repeats=3, rounds=2, calibrate=1)
    assert len(timed) == 1 and timed[0].ms > 0 and timed[0].repeats == 6
    assert table.source["calibrated_on"] == 1 and table.boundary_ms_per_element >= 0
    table.save(tmp_path / "t.json")
    assert load_table(tmp_path / "t.json").boundary_ms_per_element == table.boundary_ms_per_element


def test_resnet_models_cut_into_units_whose_macs_add_up() -> None:
    model = build_model(preset("resnet18"), num_classes=10, in_channels=3)
    units = latency_units(model, (3, 32, 32))
    assert sum(u.macs for u in units) == count_macs(model, in_channels=3, resolution=32)
    blocks = [u for u in units if u.kind in ("BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck")]
    assert len(blocks) == 8 and len({u.key for u in blocks}) >= 4  # a downsampling block differs from the rest
