"""A study that scores latency_ms: measured on ONNX Runtime, or predicted from a profiled table; its front drawn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

LATENCY = ("study.trials=2", "objectives={accuracy='maximize', latency_ms='minimize'}", "federation.rounds=1",
           "latency.repeats=5", "latency.warmup=1", "constraints.max_latency_ms=1000.0")


def test_a_study_measures_latency_stores_its_spread_and_bounds_it(tiny_study_factory, tmp_path: Path) -> None:
    import optuna

    from fednas.export import source_from_trial, write_bundle

    _, config, result = tiny_study_factory("latency", LATENCY)
    study = optuna.load_study(study_name="latency", storage=config.storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        lat = t.user_attrs["latency"]
        assert t.values[1] == t.user_attrs["latency_ms"] == lat["ms"] > 0
        assert lat["runtime"] == "onnxruntime" and lat["threads"] == 1 and lat["repeats"] == 5
        assert lat["source"] == "measured" and lat["p25_ms"] <= lat["ms"] <= lat["p75_ms"]
        assert t.constraints == {"max_latency_ms": pytest.approx(lat["ms"] - 1000.0)}
    bundle = write_bundle(source_from_trial(config.storage, "latency", trial=done[0].number), tmp_path / "b",
                          formats=[])
    doc = json.loads((bundle.out / "metrics.json").read_text())
    assert doc["metrics"]["latency"] == done[0].user_attrs["latency"]
    card = (bundle.out / "README.md").read_text()
    assert f"Single-image latency {done[0].user_attrs['latency_ms']:.4g} ms on onnxruntime" in card


def test_a_tight_latency_bound_skips_training(tiny_study_factory) -> None:
    import optuna

    _, config, _ = tiny_study_factory("slowpoke", (*LATENCY[:-1], "constraints.max_latency_ms=0.000001",
                                                   "study.max_attempts=2"))
    study = optuna.load_study(study_name="slowpoke", storage=config.storage)
    assert study.trials and all(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    assert all("latency_ms" in t.user_attrs["pruned_reason"] and "> max_latency_ms" in t.user_attrs["pruned_reason"]
               for t in study.trials)


def test_profile_a_table_then_a_study_predicts_from_it_and_the_report_draws_the_front(tmp_path: Path,
                                                                                     tiny_config: Path,
                                                                                     capsys) -> None:
    import optuna

    from fednas.cli import main
    from fednas.config import load_config
    from fednas.search import run_search

    table = tmp_path / "table.json"
    args = ["latency", "profile", str(tiny_config), "--out", str(table), "--samples", "30", "--repeats", "5",
            "--warmup", "1", "--quiet"]
    assert main(args) == 0
    line = capsys.readouterr().out
    doc = json.loads(table.read_text())
    assert doc["runtime"] == "onnxruntime" and doc["source"]["resolutions"] == [28] and str(table) in line
    before = table.read_bytes()
    assert main(args) == 2  # an existing table is kept
    assert "exists; expected a new file (or --force" in capsys.readouterr().err and table.read_bytes() == before
    other = [*args[:4], str(tmp_path / "other.json"), *args[5:]]
    assert main([*other, "--resolution", "0"]) == 2
    assert "--resolution: expected an integer in [1, " in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()
    config = load_config(tiny_config, ["study.name='predicted'", *LATENCY[:-1], f"latency.table='{table}'"])
    run_search(config, progress=False)
    study = optuna.load_study(study_name="predicted", storage=config.storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        lat = t.user_attrs["latency"]
        assert lat["source"] == "predicted" and lat["table"] == str(table) and lat["units"] > 0
        assert t.values[1] == lat["ms"] > 0
    out = tmp_path / "plots"
    assert main(["plot", "--storage", config.storage, "--study", "predicted", "--out", str(out), "--no-png"]) == 0
    page = (out / "report.html").read_text()
    assert "latency per image (ms)" in page
