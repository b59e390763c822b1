from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from safetensors.torch import load_file

from fednas.config import ConfigError, load_config
from fednas.search import load_front, run_search
from search_spaces import MobileNetArch, build_model


def test_tiny_study_end_to_end(tiny_config: Path, tmp_path: Path) -> None:
    config = load_config(tiny_config)
    result = run_search(config, progress=False)
    assert result.completed == 3
    assert result.storage == f"sqlite:///{tmp_path / 'tiny.db'}"
    study = optuna.load_study(study_name="tiny", storage=result.storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    for t in complete:
        # values are the objectives in config order, and equal the stored metrics
        acc, macs, comm = t.values
        assert 0.0 <= acc <= 1.0 and acc == t.user_attrs["accuracy"]
        assert macs == t.user_attrs["macs"] > 0
        assert comm == t.user_attrs["upload_bytes"] + t.user_attrs["download_bytes"]
        assert len(t.user_attrs["rounds"]) == 2
        # the architecture rebuilds and the stored weights load into it
        arch = MobileNetArch.from_dict(t.user_attrs["arch"])
        folder = Path(study.user_attrs["artifacts_dir"])
        weights = load_file(str(folder / t.user_attrs["weights_artifact"]))
        model = build_model(arch, num_classes=10, in_channels=1)
        model.load_state_dict(weights)
        # fixed labels are stored with the searched ones
        assert t.user_attrs["labels"]["s1_kernel"] == 3 and "s1_kernel" not in t.params
    front = load_front(result.storage, "tiny")
    assert front and {f.number for f in front} <= {t.number for t in complete}
    assert [f.number for f in front] == [f.number for f in result.front]


def test_resume_continues_the_same_study(tiny_config: Path) -> None:
    config = load_config(tiny_config, ["study.trials=2"])
    run_search(config, progress=False)
    first = optuna.load_study(study_name="tiny", storage=config.storage)
    first_numbers = [t.number for t in first.trials]
    again = run_search(load_config(tiny_config, ["study.trials=4"]), progress=False)
    assert again.completed == 4
    study = optuna.load_study(study_name="tiny", storage=config.storage)
    assert [t.number for t in study.trials][: len(first_numbers)] == first_numbers
    labels = [json.dumps(t.user_attrs["labels"], sort_keys=True) for t in study.trials if t.state.name == "COMPLETE"]
    assert len(labels) == len(set(labels))  # no architecture trained twice


def test_static_constraint_skips_training(tiny_config: Path) -> None:
    config = load_config(tiny_config, ["constraints.max_macs=40000", "study.max_attempts=6", "study.trials=2"])
    run_search(config, progress=False)
    study = optuna.load_study(study_name="tiny", storage=config.storage)
    pruned = [t for t in study.trials if t.state.name == "PRUNED" and "max_macs" in t.user_attrs.get("pruned_reason", "")]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert pruned, "the bound should exclude some candidates of this space"
    for t in pruned:
        assert t.user_attrs["macs"] > 40000 and "weights_artifact" not in t.user_attrs
        assert t.constraints["max_macs"] > 0
    for t in complete:
        assert t.user_attrs["macs"] <= 40000 and t.constraints["max_macs"] <= 0


def test_bound_below_smallest_candidate_is_a_config_error(tiny_config: Path, tmp_path: Path) -> None:
    config = load_config(tiny_config, ["constraints.max_params=10"])
    with pytest.raises(ConfigError, match="constraints.max_params: 10 is below the smallest candidate"):
        run_search(config, progress=False)
    assert not list(tmp_path.glob("*.db"))


def test_cli_search_then_pareto_json_and_csv(tiny_config: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'cli.db'}"
    run = subprocess.run(
        [sys.executable, "-m", "fednas", "search", str(tiny_config), "--storage", storage, "--study", "clistudy",
         "--trials", "2", "--seed", "3", "--set", "federation.rounds=1"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "2 completed trials" in run.stdout
    assert "[trial 2/2" in run.stderr  # progress display
    out = subprocess.run(
        [sys.executable, "-m", "fednas", "pareto", "--storage", storage, "--study", "clistudy", "--all", "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    trials = json.loads(out.stdout)
    assert len(trials) == 2
    for t in trials:
        assert {"number", "state", "accuracy", "macs", "comm_bytes", "params"} <= set(t)
        assert t["state"] == "COMPLETE" and isinstance(t["params"], dict) and "s1_width" in t["params"]
    csv_out = subprocess.run(
        [sys.executable, "-m", "fednas", "pareto", "--storage", storage, "--study", "clistudy", "--format", "csv"],
        capture_output=True, text=True, timeout=120,
    )
    header = csv_out.stdout.splitlines()[0].split(",")
    assert header[:5] == ["number", "state", "accuracy", "macs", "comm_bytes"]


def test_pareto_of_missing_study_is_a_one_line_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fednas", "pareto", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--study", "x"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "none.db" in out.stderr
    assert not (tmp_path / "none.db").exists()


def test_failed_trials_keep_their_reason_and_the_search_goes_on(tiny_config: Path, tmp_path: Path) -> None:
    config = load_config(tiny_config, ["federation.client_failure_rate=0.9", "federation.min_train_nodes=3",
                                       "study.max_attempts=2", "study.trials=1"])
    result = run_search(config, progress=False)
    assert result.completed == 0 and not result.reached and result.failed == 2
    study = optuna.load_study(study_name="tiny", storage=config.storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]  # the second attempt still ran
    again = subprocess.run(  # the same command again: the attempts are used up, and the exit code says so
        [sys.executable, "-m", "fednas", "search", str(tiny_config), "--quiet", "--set", "study.max_attempts=2",
         "--set", "federation.client_failure_rate=0.9", "--set", "federation.min_train_nodes=3"],
        capture_output=True, text=True, timeout=120)
    assert again.returncode == 1, again.stderr
    assert "search stopped before study.trials = 3 was reached: 0 completed, 2 failed" in again.stderr
    for t in study.trials:
        assert "min_train_nodes=3" in t.user_attrs["fail_reason"]
    out = subprocess.run(
        [sys.executable, "-m", "fednas", "pareto", "--storage", config.storage, "--study", "tiny", "--all"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0 and out.stdout.count("FAIL") == 2 and "min_train_nodes=3" in out.stdout


def test_same_config_and_seed_give_identical_trials(tiny_config: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    # CPU kernels round differently with another thread count; fednas would change it if
    # another fednas worker ran on this machine meanwhile, so the test pins it.
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    runs = []
    for name in ("a", "b"):
        config = load_config(tiny_config, [f"study.storage='sqlite:///{tmp_path / name}.db'", "study.trials=2"])
        run_search(config, progress=False)
        study = optuna.load_study(study_name="tiny", storage=config.storage)
        runs.append([(t.params, t.values, t.user_attrs["rounds"]) for t in study.trials])
        assert all(t.user_attrs["torch_threads"] == [threads] for t in study.trials)
    for a, b in zip(*runs):
        assert a[0] == b[0] and a[1] == b[1]
        assert [r["accuracy"] for r in a[2]] == [r["accuracy"] for r in b[2]]


def test_a_resume_with_other_data_or_federation_is_refused_and_bounds_are_stored(
    tiny_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fednas.cli import main
    from fednas.search._study import CONFIG_ATTR

    base = ["study.trials=1", "federation.rounds=1"]
    config = load_config(tiny_config, base)
    run_search(config, progress=False)
    study = optuna.load_study(study_name="tiny", storage=config.storage)
    stored = study.user_attrs[CONFIG_ATTR]
    for change, key in (("data.limit=300", "data.limit"), ("federation.lr=0.5", "federation.lr"),
                        ("study.seed=7", "study.seed"), ("space.labels.s2_kernel=7", "space.labels.s2_kernel")):
        with pytest.raises(ConfigError, match=rf"^{key}: study 'tiny' in .* was made with .*; got "):
            run_search(load_config(tiny_config, [*base, change]), progress=False)
        argv = ["search", str(tiny_config), "--check", "--quiet"]
        for s in [*base, change]:
            argv += ["--set", s]
        assert main(argv) == 2 and key in capsys.readouterr().err
    assert optuna.load_study(study_name="tiny", storage=config.storage).user_attrs[CONFIG_ATTR] == stored
    assert len(study.trials) == 1
    # how long, how and where it searches, and the bounds, may change; the stored config follows
    again = load_config(tiny_config, ["study.trials=2", "federation.rounds=1", "study.sampler='tpe'",
                                      "constraints.max_macs=10000000", "federation.device='cpu'"])
    assert run_search(again, progress=False).completed == 2
    now = optuna.load_study(study_name="tiny", storage=config.storage).user_attrs[CONFIG_ATTR]
    assert now["study"]["sampler"] == "tpe" and now["constraints"]["max_macs"] == 10_000_000
