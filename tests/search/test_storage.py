"""Opening storages: several workers creating one new database at the same moment."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

WORKERS, ROUNDS = 6, 6


def _open_each_round(folder: str, barrier, results) -> None:
    import optuna

    from fednas.search import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for r in range(ROUNDS):
        barrier.wait()  # all workers open the same new file together
        try:
            storage = open_storage(f"sqlite:///{folder}/round{r}.db")
            optuna.create_study(storage=storage, study_name="s", load_if_exists=True)
            results.put((r, "ok"))
        except Exception as exc:  # reported to the test, which names it
            results.put((r, f"{type(exc).__name__}: {exc}"))


@pytest.mark.slow
def test_workers_creating_one_new_sqlite_study_together_all_open_it(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_open_each_round, args=(str(tmp_path), barrier, results)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in range(WORKERS * ROUNDS)]
    for p in procs:
        p.join(timeout=60)
    failures = [o for o in outcomes if o[1] != "ok"]
    assert not failures, failures[:3]
    assert all((tmp_path / f"round{r}.db").exists() for r in range(ROUNDS))


def test_storages_a_search_cannot_write_are_one_line_errors_and_nothing_is_written(
    tiny_config: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import hashlib

    from fednas.cli import main

    run = tmp_path / "elsewhere"
    run.mkdir()
    monkeypatch.chdir(run)
    assert main(["search", str(tiny_config), "--quiet", "--set", "study.trials=1", "--set", "federation.rounds=1"]) == 0
    capsys.readouterr()
    db = tiny_config.parent / "tiny.db"
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    folder_before = sorted(p.name for p in tiny_config.parent.iterdir())
    cases = {  # /proc refuses new files even to root, so these hold in CI as root too
        f"sqlite:///file:{db}?mode=ro&uri=true": "cannot write to the database (attempt to write a readonly database)",
        "journal:/proc/fednas-j.log": "cannot write there",
        "sqlite:////proc/fednas.db": "cannot write there",
        "sqlite:///": "in-memory SQLite database keeps nothing",
        "sqlite://": "in-memory SQLite database keeps nothing",
        "sqlite:///:memory:": "in-memory SQLite database keeps nothing",
    }
    for url, needle in cases.items():
        for check in ([], ["--check"]):
            assert main(["search", str(tiny_config), "--quiet", "--storage", url, "--set", "study.trials=2", *check]) == 2
            err = capsys.readouterr().err
            assert needle in err and url in err and err.count("\n") == 1, (url, err)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tiny_config.parent.iterdir()) == folder_before
    assert list(run.iterdir()) == []  # no artifacts folder in the current one
    # reading a read-only storage still works
    assert main(["pareto", "--storage", f"sqlite:///file:{db}?mode=ro&uri=true", "--study", "tiny"]) == 0
