"""Workers on several machines sharing one storage: PostgreSQL, journal files, heartbeats, for real.

Each worker runs in its own UTS namespace with its own host name, so the others cannot
check its process and see it as on another computer; a PostgreSQL server is started for
the module. ``FEDNAS_REQUIRE_POSTGRES=1`` (set by .ci/run) turns a missing server, driver
or namespace support into a failure instead of a skip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from fednas.testing import PostgresUnavailable, as_other_machine, can_fake_machines, temporary_postgres, wait_for

pytestmark = pytest.mark.slow
REQUIRED = os.environ.get("FEDNAS_REQUIRE_POSTGRES") == "1"


def _unavailable(why: str) -> None:
    if REQUIRED:
        pytest.fail(f"{why} (FEDNAS_REQUIRE_POSTGRES=1)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def postgres_url():
    try:
        import psycopg  # noqa: F401  SQLAlchemy's driver for postgresql:// URLs
    except ImportError:
        _unavailable("psycopg not installed (pip install 'fednas[postgresql]')")
    try:
        server = temporary_postgres()
        url = server.__enter__()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module", autouse=True)
def _machines() -> None:
    if not can_fake_machines():
        _unavailable("unshare --uts is not allowed here (needs root or user namespaces)")


@pytest.fixture(params=["postgresql", "sqlite", "journal"])
def storage(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'machines.db'}"
    if request.param == "journal":  # a journal file on a shared file system: fednas's own heartbeats
        return f"journal:{tmp_path / 'machines.log'}"
    return request.getfixturevalue("postgres_url")


def _worker(host: str, config: Path, storage: str, study: str, *extra: str) -> subprocess.Popen:
    # weights beside the test's config, not in the checkout's studies/artifacts (a server storage has no folder)
    cmd = [sys.executable, "-m", "fednas", "search", str(config), "--storage", storage, "--study", study,
           "--quiet", "--set", f"study.artifacts='{config.parent / 'artifacts'}'", *extra]
    return subprocess.Popen(as_other_machine(host, cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    from fednas.search import open_storage

    if storage.startswith("journal:") and not Path(storage[len("journal:"):]).exists():
        return []
    try:
        return optuna.load_study(study_name=study, storage=open_storage(storage)).trials
    except KeyError:
        return []


def _check_whole(trials, target: int) -> None:
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == target
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    labels = [json.dumps(t.user_attrs["labels"], sort_keys=True) for t in complete]
    assert len(labels) == len(set(labels))  # no candidate trained twice


def test_two_machines_finish_one_postgresql_study_together(tiny_config: Path, postgres_url: str) -> None:
    study = "two-machines"
    args = ("--trials", "4", "--set", "federation.rounds=6")
    workers = [_worker(host, tiny_config, postgres_url, study, *args) for host in ("machine-a", "machine-b")]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    trials = _trials(postgres_url, study)
    _check_whole(trials, 4)
    hosts = {t.user_attrs["worker"].rpartition(":")[0] for t in trials if t.state.name == "COMPLETE"}
    assert hosts == {"machine-a", "machine-b"}


def test_a_lost_machine_s_trial_is_failed_by_heartbeat_and_retried(tiny_config: Path, storage: str) -> None:
    study = "lost-machine"
    args = ("--trials", "3", "--set", "federation.rounds=12", "--set", "study.heartbeat=1")
    lost = _worker("machine-a", tiny_config, storage, study, *args)
    wait_for(lambda: any(t.state.name == "RUNNING" for t in _trials(storage, study)))
    time.sleep(1.5)  # past the first heartbeats
    lost.send_signal(signal.SIGKILL)  # the machine vanishes: no cleanup, no message
    lost.wait(timeout=30)
    killed = [t for t in _trials(storage, study) if t.state.name == "RUNNING"]
    assert len(killed) == 1 and killed[0].user_attrs["worker"].startswith("machine-a:")

    # machine-b cannot see machine-a's processes; only the silence of its heartbeats tells
    survivor = _worker("machine-b", tiny_config, storage, study, *args)
    _, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err
    trials = _trials(storage, study)
    _check_whole(trials, 3)
    dead = trials[killed[0].number]
    assert dead.state.name == "FAIL"
    assert dead.system_attrs["fail_reason"] == (
        f"worker {killed[0].user_attrs['worker']} sent no heartbeat for 3 s (host lost or process killed)"
    )
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE" and retried[0].params == dead.params
    assert retried[0].user_attrs["worker"].startswith("machine-b:")
    assert "fail_reason" not in retried[0].system_attrs  # the lost attempt's reason stays with it
