"""The data behind each plot, on hand-made studies (no training): fronts, HV, importances."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution

from fednas.config import ConfigError
from fednas.plot import (
    axis_for,
    build_report,
    hypervolume,
    hypervolume_history,
    importance_data,
    knee_index,
    pareto_mask,
    read_study,
)
from search_spaces import preset

ARCH = preset("mobilenet_micro").to_dict()


def make_study(path: Path, n: int, *, bound: int = 0, seed: int = 0, name: str = "synthetic") -> str:
    """A fednas-shaped study: objectives accuracy (max) and macs (min); comm_bytes bound optional."""
    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["accuracy", "macs"])
    rng = random.Random(seed)
    dists = {"s1_kernel": CategoricalDistribution((3, 5, 7)), "s1_depth": IntDistribution(1, 4),
             "s1_se": CategoricalDistribution((False, True))}
    for i in range(n):
        params = {"s1_kernel": rng.choice((3, 5, 7)), "s1_depth": rng.randint(1, 4), "s1_se": rng.random() < 0.5}
        macs = 10_000 * params["s1_depth"] + 1_000 * params["s1_kernel"] + rng.randint(0, 999)
        acc = 0.5 + 0.1 * params["s1_depth"] + rng.random() * 0.05
        comm = 1_000 * i + 5_000
        attrs = {"accuracy": acc, "macs": macs, "params": macs // 10, "bytes": macs // 2, "comm_bytes": comm,
                 "upload_bytes": comm // 2, "download_bytes": comm - comm // 2, "arch": ARCH,
                 "labels": {**params, "s1_width": 1.0}}
        constraints = {"constraints:max_comm_bytes": float(comm - bound)} if bound else {}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=[acc, macs],
                                                  user_attrs=attrs, system_attrs=constraints))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={},
                                              user_attrs={"pruned_reason": "macs 9 > max_macs 8"}))
    return url


def test_pareto_mask_knee_and_hypervolume_by_hand() -> None:
    pts = [[1, 3], [2, 2], [3, 1], [3, 3], [2, 2]]
    assert pareto_mask(pts, ["minimize", "minimize"]).tolist() == [True, True, True, False, True]
    assert pareto_mask(pts, ["maximize", "maximize"]).tolist() == [False, False, False, True, False]
    # scaled to [0, 1] per objective, (2, 2) sits at (0.5, 0.5): nearest the ideal origin
    assert knee_index([[1, 3], [2, 2], [3, 1]], ["minimize", "minimize"]) == 1
    assert knee_index([[0.9, 100], [0.85, 12], [0.5, 10]], ["maximize", "minimize"]) == 1
    assert hypervolume(np.array([[1, 3], [2, 2], [3, 1]]), [4, 4]) == pytest.approx(6.0)
    assert hypervolume(np.array([[0, 0, 0]]), [1, 1, 1]) == pytest.approx(1.0)
    # two boxes of volume 0.5 * 1 * 1 overlapping in 0.5 * 0.5 * 1
    assert hypervolume(np.array([[0.5, 0, 0], [0, 0.5, 0]]), [1, 1, 1]) == pytest.approx(0.75)
    assert hypervolume(np.array([[2, 2]]), [1, 1]) == 0.0


def test_hypervolume_agrees_with_optunas_own() -> None:
    wfg = pytest.importorskip("optuna._hypervolume")
    rng = np.random.default_rng(0)
    for dims in (2, 3, 4):
        pts = rng.random((25, dims))
        ref = np.full(dims, 1.1)
        front = pts[pareto_mask(pts, ["minimize"] * dims)]
        assert hypervolume(pts, ref) == pytest.approx(float(wfg.compute_hypervolume(front, ref)), rel=1e-9)


def test_axes_carry_units_and_a_scale() -> None:
    acc = axis_for("accuracy", "maximize", [0.5, 0.9])
    assert acc.scale == 100 and acc.label.startswith("held-out accuracy (%)")
    macs = axis_for("macs", "minimize", [33_000, 70_000])
    assert macs.scale == 1e-3 and "(kMACs)" in macs.label and "lower is better" in macs.label
    comm = axis_for("comm_bytes", "minimize", [2_500_000])
    assert comm.scale == 1e-6 and "(MB)" in comm.label


def test_report_data_marks_infeasible_trials_and_the_feasible_front(tmp_path: Path) -> None:
    url = make_study(tmp_path / "s.db", 12, bound=12_000)
    view = read_study(url, "synthetic")
    assert len(view.trials) == 12 and view.states == {"COMPLETE": 12, "PRUNED": 1}
    assert view.incomplete == {12: "PRUNED: macs 9 > max_macs 8"}
    report = build_report(view)
    infeasible = {t.number for t in view.trials if t.values["comm_bytes"] > 12_000}
    assert infeasible  # comm grows with the trial number: the later trials break the bound
    assert {p.number for p in report.main.by_status("infeasible")} == infeasible
    feasible = [t for t in view.trials if t.number not in infeasible]
    mask = pareto_mask([[t.values["accuracy"], t.values["macs"]] for t in feasible], ["maximize", "minimize"])
    assert {p.number for p in report.main.front} == {t.number for t, m in zip(feasible, mask) if m}
    assert {row["number"] for row in report.front_table} == {p.number for p in report.main.front}
    # hover text carries the architecture
    assert all("stem 8/s2" in p.hover for p in report.main.points)
    # projections: the one pair of the study's objectives
    assert [tuple(a.name for a in d.axes) for d in report.pairs] == [("accuracy", "macs")]
    # parallel coordinates: objectives then the searched labels; categorical ones get tick labels
    dims = {d.name: d for d in report.parallel.dimensions}
    assert list(dims) == ["accuracy (%)", "macs (kMACs)", "s1_kernel", "s1_depth", "s1_se"]  # units, as the axes
    assert dims["accuracy (%)"].values[0] == pytest.approx(100 * view.trials[0].values["accuracy"])
    assert all(row["compression"] == "-" for row in report.front_table)  # the table's compression column
    assert dims["s1_se"].ticks == ((0.0, "false"), (1.0, "true"))
    assert set(report.parallel.statuses) <= {"front", "dominated", "infeasible"}
    assert report.parallel.statuses.count("infeasible") == len(infeasible)


def test_hypervolume_history_only_grows_and_ends_at_the_front(tmp_path: Path) -> None:
    url = make_study(tmp_path / "s.db", 15, bound=14_000, seed=3)
    view = read_study(url, "synthetic")
    hv = hypervolume_history(view)
    assert hv.numbers == tuple(range(15))
    assert all(b >= a for a, b in zip(hv.values, hv.values[1:]))
    assert 0 < hv.values[-1] <= 1.1**2
    # trials past the bound never raise it
    first_bad = next(t.number for t in view.trials if not t.feasible)
    assert hv.values[first_bad:] == tuple([hv.values[first_bad - 1]] * (15 - first_bad))


def test_importances_with_enough_trials_and_a_message_without(tmp_path: Path) -> None:
    view = read_study(make_study(tmp_path / "a.db", 30), "synthetic")
    imp = importance_data(view)
    assert imp.message == "" and set(imp.by_objective) == {"accuracy", "macs"}
    for values in imp.by_objective.values():
        assert set(values) == {"s1_kernel", "s1_depth", "s1_se"}
        assert sum(values.values()) == pytest.approx(1.0)
    # accuracy is made of the depth alone: it must come out on top
    assert max(imp.by_objective["accuracy"], key=imp.by_objective["accuracy"].get) == "s1_depth"
    few = importance_data(read_study(make_study(tmp_path / "b.db", 3), "synthetic"))
    assert few.by_objective == {} and "at least 5 completed trials" in few.message


def test_objective_choice_is_checked(tmp_path: Path) -> None:
    view = read_study(make_study(tmp_path / "s.db", 4), "synthetic")
    assert build_report(view, ["macs", "comm_bytes", "accuracy"]).main.axes[2].name == "accuracy"
    for bad, needle in ((["accuracy", "latency"], "unknown objective 'latency'"),
                        (["accuracy"], "expected 2 or 3 names"),
                        (["accuracy", "macs", "params", "bytes"], "expected 2 or 3 names"),
                        (["macs", "macs"], "duplicate")):
        with pytest.raises(ConfigError, match=needle):
            build_report(view, bad)
    empty = optuna.create_study(study_name="none", storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize"])
    empty.set_user_attr("objectives", ["accuracy"])
    with pytest.raises(ConfigError, match="no completed trials"):
        build_report(read_study(f"sqlite:///{tmp_path / 's.db'}", "none"))


def test_every_axis_names_its_quantity_and_unit_and_projections_say_whose_front(tmp_path: Path) -> None:
    from fednas.objectives import OBJECTIVES

    for name, obj in OBJECTIVES.items():
        for values in ([0.5], [5e2], [5e4], [5e7], [5e9]):
            axis = axis_for(name, obj.direction, values)
            assert axis.label.startswith(obj.title + " ("), axis.label
            if obj.unit:  # a unit of its own: never a bare count
                assert "count" not in axis.label and "thousands" not in axis.label, axis.label
            if obj.unit == "fraction":
                assert axis.short == f"{name} (%)" and axis.scale == 100
            if obj.unit == "B":
                assert axis.short.endswith("B)"), axis.short
    url = make_study(tmp_path / "s.db", 6)
    study = optuna.load_study(study_name="synthetic", storage=url)
    study.set_user_attr("objectives", ["accuracy", "macs"])
    report = build_report(read_study(url, "synthetic"))
    assert not report.pairs[0].partial and report.pairs[0].label("front") == "Pareto front"
    from dataclasses import replace

    from fednas.plot._data import projections

    view = read_study(url, "synthetic")
    wide = replace(view, objectives={**view.objectives, "comm_bytes": "minimize"})
    pairs = projections(wide, ["accuracy", "macs"])
    assert len(pairs) == 3 and all(p.partial and p.label("front") == "front of these 2 objectives" for p in pairs)
