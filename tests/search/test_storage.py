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
