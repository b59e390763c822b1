"""A supernet study end to end: phases 1-3, per-tier fronts, export, config errors, SIGKILL in each phase."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from fednas.cli import main
from fednas.config import ConfigError, load_config
from fednas.study import FINETUNE_ATTR, SUPERNET_ATTR, read_study
from fednas.testing import wait_for
from tests.conftest import TINY_STUDY

SUPERNET = ["study.mode='supernet'", "study.trials=5", "supernet.rounds=4", "supernet.eval_every=2",
            "supernet.finetune_rounds=1", "space.labels.s2_depth={low=1, high=2}", "space.labels.s2_expansion=[2, 3]"]
TIERS = "federation.tiers=[{name='small', share=0.34, max_macs=60000}, {name='big', share=0.66}]"


def _config(tmp_path: Path, *extra: str):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    return path, load_config(path, [*SUPERNET, *extra])


def test_supernet_study_end_to_end(tmp_path: Path, capsys) -> None:
    from fednas.search import run_search

    path, config = _config(tmp_path, TIERS)
    result = run_search(config, progress=False)
    assert result.completed == 5
    view = read_study(config.storage, config.study.name)
    curve = view.supernet["rounds"]
    assert [r["round"] for r in curve] == [1, 2, 3, 4]
    assert curve[1]["accuracy_largest"] is not None and curve[0]["accuracy_largest"] is None  # eval_every = 2
    assert all(r["client_epochs"] == 3 for r in curve)
    trials = view.trials
    assert all(t.attrs["mode"] == "supernet" and t.attrs["client_epochs"] == 0 for t in trials)
    assert all(t.metrics["accuracy_inherited"] == t.objectives["accuracy"] for t in trials)
    # a subnet over the small tier's budget is pooled from the big tier's two nodes only
    for t in trials:
        small = t.metrics["macs"] <= 60000
        assert t.attrs["tiers"] == (["small", "big"] if small else ["big"])
        assert t.attrs["bn_nodes"] == (3 if small else 2)
    # phase 3: every member of the overall and per-tier fronts was fine-tuned, on the nodes that can run it
    finetuned = optuna.load_study(study_name="tiny", storage=config.storage).user_attrs[FINETUNE_ATTR]
    members = {t.number for t in view.front()} | {t.number for t in view.front("small")} | {
        t.number for t in view.front("big")}
    assert {int(k) for k in finetuned} == members
    for t in view.trials:
        if t.number in members:
            assert t.metrics["accuracy_finetuned"] == finetuned[str(t.number)]["accuracy"]
            assert t.attrs["weights_artifact"] == finetuned[str(t.number)]["weights_artifact"]
    assert all(t.attrs["tiers"].count("small") for t in view.front("small"))
    # the CLI: a tier's front, and an export of a fine-tuned member
    capsys.readouterr()
    assert main(["pareto", "--study", "tiny", "--storage", config.storage, "--tier", "small"]) == 0
    assert "accuracy_finetuned" in capsys.readouterr().out
    assert main(["pareto", "--study", "tiny", "--storage", config.storage, "--tier", "tiny-phones"]) == 2
    out = tmp_path / "bundle"
    assert main(["export", "--study", "tiny", "--storage", config.storage, "--pick", "best-accuracy", "--out",
                 str(out), "--formats", "torchscript"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["origin"]["training"]["mode"] == "supernet"
    assert "fine-tuned by 1 federated rounds" in (out / "README.md").read_text()
    # the supernet's largest subnet as a bundle, and as the distillation teacher of a from-scratch study
    teacher = tmp_path / "largest"
    assert main(["export", "--study", "tiny", "--storage", config.storage, "--supernet", "--out", str(teacher),
                 "--formats", "torchscript"]) == 0
    doc = json.loads((teacher / "metrics.json").read_text())
    assert doc["origin"]["supernet"] == "largest subnet" and doc["architecture"] == view.supernet["arch"]
    assert doc["metrics"]["macs"] >= max(t.metrics["macs"] for t in view.trials)
    assert abs(doc["metrics"]["accuracy"] - doc["pytorch_accuracy"]) < 1e-9
    assert "the supernet's largest subnet" in (teacher / "README.md").read_text()
    assert main(["export", "--study", "tiny", "--storage", config.storage, "--supernet", "--out", str(out)]) == 2
    student = load_config(path, ["study.name='student'", "study.trials=1", "federation.rounds=1",
                                 "space.labels.kd_weight=0.3", f"space.labels.kd_teacher='{teacher}'",
                                 "space.labels.kd_kind='attention'"])
    assert run_search(student, progress=False).completed == 1
    capsys.readouterr()
    assert main(["export", "--study", "student", "--storage", student.storage, "--supernet", "--out",
                 str(tmp_path / "none")]) == 2  # a from-scratch study has no supernet
    assert "has no trained supernet" in capsys.readouterr().err
    # `fednas train` retrains a supernet trial's architecture from scratch, as for any study
    best = max(view.trials, key=lambda t: t.objectives["accuracy"])
    assert main(["train", "--study", "tiny", "--storage", config.storage, "--trial", str(best.number), "--rounds", "1",
                 "--out", str(tmp_path / "retrained"), "--formats", "torchscript"]) == 0
    assert json.loads((tmp_path / "retrained" / "metrics.json").read_text())["architecture"] == best.arch
    # the report shows the supernet's training curve
    from fednas.plot import build_report, write_pngs

    report = build_report(view)
    assert report.supernet.rounds == (1, 2, 3, 4) and report.supernet.evaluated == (2, 4)
    assert report.supernet.client_epochs == 12
    assert (tmp_path / "supernet.png") in write_pngs(report, tmp_path)
    from fednas.plot import write_html

    html = write_html(report, tmp_path / "report.html").read_text()
    assert "Supernet training" in html and 'id="fig-supernet"' in html
    # resuming a finished study does nothing more
    again = run_search(config, progress=False)
    assert again.completed == 5
    assert len(optuna.load_study(study_name="tiny", storage=config.storage).trials) == len(view.records)


@pytest.mark.parametrize("extra, key", [
    (["study.mode='supernet'", "space.name='resnet'"], "study.mode"),
    (["study.mode='supernet'", "space.labels.prune_method='l1'"], "space.labels.prune_method"),
    ([TIERS], "federation.tiers"),
    (["study.mode='supernet'", "federation.tiers=[{name='a', share=0.1}, {name='b', share=0.9}]"],
     "federation.tiers"),
    (["study.mode='supernet'", "federation.tiers=[{name='a', share=0.5}, {name='b', share=0.4}]"],
     "federation.tiers"),
    (["study.mode='supernet'", "federation.tiers=[{name='a', share=1.0, max_mac=5}]"], "federation.tiers[0].max_mac"),
    (["supernet.sampling='biggest'"], "supernet.sampling"),
])
def test_supernet_config_errors_name_the_key(tmp_path: Path, extra: list[str], key: str) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY.replace('[space]\n', '[space]\n' if "resnet" not in " ".join(extra) else '[space]\n'))
    if "space.name='resnet'" in extra:
        path.write_text(TINY_STUDY.split("[space]")[0] + "[space]\nname = 'resnet'\n\n[data]" +
                        TINY_STUDY.split("[data]")[1])
        extra = [e for e in extra if not e.startswith("space.name")]
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(path, extra)


def test_a_tier_budget_below_the_smallest_subnet_is_a_config_error(tmp_path: Path) -> None:
    from fednas.search import check_study

    _, config = _config(tmp_path, "federation.tiers=[{name='watch', share=0.34, max_macs=10}, {name='big', share=0.66}]")
    with pytest.raises(ConfigError, match="watch"):
        check_study(config)


# ---------------------------------------------------------------- SIGKILL in each phase


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _search(path: Path, storage: str, *sets: str) -> subprocess.Popen:
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "fednas", "search", str(path), "--storage", storage, "--quiet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _attrs(storage: str) -> dict:
    try:
        return optuna.load_study(study_name="tiny", storage=storage).user_attrs
    except (KeyError, Exception):  # not created yet, or the file is being created
        return {}


def _values(storage: str) -> dict[str, list[float]]:
    study = optuna.load_study(study_name="tiny", storage=storage)
    return {json.dumps(t.user_attrs["labels"], sort_keys=True): t.values for t in study.trials
            if t.state.name == "COMPLETE"}


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["supernet", "subnets", "finetune"])
def test_sigkill_in_each_phase_then_resume(tmp_path: Path, phase: str) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    sets = [*SUPERNET, "supernet.rounds=8", "study.trials=6", "data.limit=480"]
    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    ref = _search(path, reference, *sets)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    proc = _search(path, storage, *sets)
    if phase == "supernet":
        wait_for(lambda: len(_attrs(storage).get(SUPERNET_ATTR, {}).get("rounds", [])) >= 2, poll=0.05)
    elif phase == "subnets":
        wait_for(lambda: any(t.state.name == "COMPLETE" for t in optuna.load_study(
            study_name="tiny", storage=storage).trials) if _attrs(storage).get(SUPERNET_ATTR) else False, poll=0.05)
    else:
        wait_for(lambda: bool(_attrs(storage).get(FINETUNE_ATTR)), poll=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = _attrs(storage)
    again = _search(path, storage, *sets)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    done = _attrs(storage)
    assert len(done[SUPERNET_ATTR]["rounds"]) == 8
    if phase == "supernet":  # killed inside phase 1, before any subnet was scored
        assert 2 <= len(killed_at[SUPERNET_ATTR]["rounds"]) < 8
    values, ref_values = _values(storage), _values(reference)
    assert len(values) == 6
    if phase == "subnets":  # the resumed sampler draws on from the stored trials: the same subnet scores the same
        common = values.keys() & ref_values.keys()
        assert common and all(values[k] == ref_values[k] for k in common)
        return
    # the resumed study found the same subnets with the same scores as the uninterrupted one
    assert values == ref_values
    ref_ft = {k: v["accuracy"] for k, v in _attrs(reference)[FINETUNE_ATTR].items()}
    assert {k: v["accuracy"] for k, v in done[FINETUNE_ATTR].items()} == ref_ft
    if phase == "finetune":
        first = next(iter(killed_at[FINETUNE_ATTR]))
        assert done[FINETUNE_ATTR][first] == killed_at[FINETUNE_ATTR][first]  # kept, not redone
