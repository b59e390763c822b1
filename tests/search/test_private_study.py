"""A study with central DP: epsilon as an objective, the noise multiplier searched, the bound, pareto and the card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("dp_accounting")

PRIVATE = ("study.trials=3", "study.sampler='random'", "federation.bn_recalibration='off'", "privacy.mode='central'",
           "privacy.clipping_norm=0.5", "objectives={accuracy='maximize', epsilon='minimize'}",
           "space.labels.dp_noise_multiplier=[0.5, 1.0, 4.0]", "space.labels.norm='group'",
           "space.labels.s1_width=0.5", "space.labels.s2_width=0.5", "space.labels.s1_expansion=1",
           "constraints.max_epsilon=10.0")


@pytest.fixture(scope="module")
def private_study(tiny_study_factory):
    return tiny_study_factory("private", PRIVATE)


def test_each_trial_stores_the_epsilon_its_noise_multiplier_spent(private_study) -> None:
    import optuna

    folder, config, _ = private_study
    study = optuna.load_study(study_name="private", storage=config.storage)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3
    by_noise = {}
    for t in trials:
        z = t.user_attrs["labels"]["dp_noise_multiplier"]
        privacy = t.user_attrs["privacy"]
        assert privacy["noise_multiplier"] == z and privacy["releases"] == config.federation.rounds
        assert t.values[1] == t.user_attrs["epsilon"] == privacy["epsilon"] > 0
        assert [r["epsilon"] for r in t.user_attrs["rounds"]][-1] == privacy["epsilon"]
        assert t.constraints == {"max_epsilon": pytest.approx(privacy["epsilon"] - 10.0)}  # infeasible above 10
        by_noise[z] = privacy["epsilon"]
    ordered = [by_noise[z] for z in sorted(by_noise)]
    assert ordered == sorted(ordered, reverse=True)  # more noise, less spent


def test_pareto_and_the_card_show_epsilon(private_study, tmp_path: Path, capsys) -> None:
    from fednas.cli import main
    from fednas.export import source_from_trial, write_bundle

    folder, config, _ = private_study
    assert main(["pareto", "--storage", config.storage, "--study", "private", "--all"]) == 0
    out = capsys.readouterr().out
    assert "epsilon" in out.splitlines()[0] and "dp z=" in out
    assert out.splitlines()[-1].startswith("privacy: central DP (user level; fixed clipping at 0.5")
    import optuna

    study = optuna.load_study(study_name="private", storage=config.storage)
    number = min(study.trials, key=lambda t: t.values[1] if t.values else 1e9).number
    bundle = write_bundle(source_from_trial(config.storage, "private", trial=number), tmp_path / "b", formats=[])
    doc = json.loads((bundle.out / "metrics.json").read_text())
    assert doc["privacy"]["epsilon"] == study.trials[number].user_attrs["epsilon"]
    card = (bundle.out / "README.md").read_text()
    assert "## Privacy" in card and f"{doc['privacy']['epsilon']:.4g}" in card and "group norm" in card


SECURE = ("study.trials=2", "study.sampler='random'", "federation.bn_recalibration='off'",
          "privacy.secure_aggregation='secagg+'", "space.labels.s1_width=0.5", "space.labels.s2_width=0.5",
          "space.labels.s1_expansion=1")


def test_a_secure_study_stores_the_protocol_and_its_cost_and_the_card_says_so(tiny_study_factory, tmp_path,
                                                                             capsys) -> None:
    import optuna

    from fednas.cli import main
    from fednas.export import source_from_trial, write_bundle

    folder, config, _ = tiny_study_factory("secure", SECURE)
    study = optuna.load_study(study_name="secure", storage=config.storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        report = t.user_attrs["secure_aggregation"]
        assert report["protocol"] == "secagg+" and report["protocol_bytes"] > 0
        assert "privacy" not in t.user_attrs and all("secagg_clipped" in r for r in t.user_attrs["rounds"])
    bundle = write_bundle(source_from_trial(config.storage, "secure", trial=done[0].number), tmp_path / "b",
                          formats=[])
    doc = json.loads((bundle.out / "metrics.json").read_text())
    assert doc["secure_aggregation"] == done[0].user_attrs["secure_aggregation"]
    assert "SecAgg+" in (bundle.out / "README.md").read_text()
    capsys.readouterr()
    assert main(["pareto", "--storage", config.storage, "--study", "secure"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("privacy: secure aggregation secagg+")


def test_the_report_draws_accuracy_against_epsilon_and_names_the_privacy(private_study) -> None:
    pytest.importorskip("plotly")
    from fednas.plot import build_report
    from fednas.plot._html import render_html
    from fednas.study import read_study

    folder, config, _ = private_study
    report = build_report(read_study(config.storage, "private"))
    assert [a.name for a in report.main.axes] == ["accuracy", "epsilon"]
    assert report.privacy.startswith("central DP") and len(report.main.points) == 3
    page = render_html(report)
    assert "<th>privacy</th>" in page and "\u03b5" in page
