"""Torture a study: repeated SIGKILLs and Ctrl-Cs at random moments, then several workers.

Runs the real CLI in subprocesses on real storage files and reports, at the end, how many
kills and interrupts were survived, how many workers ran together, and how many trials were
lost or trained twice (the goal is none). The last scenario runs three workers as three
machines (own host names, ``fednas.testing.as_other_machine``) on a throwaway PostgreSQL
server, then on a journal file, and makes one vanish mid-trial (``--machines-on`` picks
the storages, e.g. a ``mysql+pymysql://`` URL; ``--scenarios`` the scenarios):

    python benchmarks/robustness.py --kills 5 --interrupts 2 --trials 8

``--sweep N`` instead sends one SIGINT (or ``--signal TERM``) to each of N fresh searches
at a random moment up to ``--max-delay`` s (default 2.5) after its first trial started,
and sorts the outcomes: "clean" (exit 128+signal, the resume message, no traceback, no
trial left RUNNING, the interrupted trial enqueued again), "killed by the signal" (the
interrupt escaped), "ignored" (the search ran on and finished), or "traceback" (a signal
that would come after the search finished is not sent). To compare two versions side by
side, pass ``--compare PATH`` (another checkout): two processes run the same sweep (same
seed, same delays) at the same time, one with PATH first on ``PYTHONPATH``:

    python benchmarks/robustness.py --sweep 40 --compare /tmp/oldtree

A trial is "lost" when the study ends with fewer completed trials than requested, or a
completed trial's weights artifact is missing; "doubled" when two completed trials have the
same candidate labels. The last line is one JSON object with the counts.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tiny_study.toml"


def _default_sigint() -> None:  # a shell's background job would otherwise ignore SIGINT
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(config: Path, storage: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fednas", "search", str(config), "--storage", storage, "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint,
    )


def _study(storage: str) -> optuna.Study:
    if storage.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(storage[len("journal:"):])
        return optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(backend))
    return optuna.load_study(study_name="tiny", storage=storage)


def _audit(storage: str, target: int) -> dict[str, int]:
    study = _study(storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    folder = Path(study.user_attrs["artifacts_dir"])
    missing = sum(not (folder / t.user_attrs["weights_artifact"]).exists() for t in complete)
    labels = [json.dumps(t.user_attrs["labels"], sort_keys=True) for t in complete]
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "complete": len(complete),
        "lost": max(target - len(complete), 0) + missing,
        "doubled": len(labels) - len(set(labels)),
        "overshoot": max(len(complete) - target, 0),
        **{f"state_{k.lower()}": v for k, v in states.items()},
    }


def torture(tmp: Path, kills: int, interrupts: int, trials: int, rng: random.Random) -> dict:
    storage = f"sqlite:///{tmp / 'torture.db'}"
    args = ("--trials", str(trials), "--set", "federation.rounds=30")
    events = ["kill"] * kills + ["int"] * interrupts
    rng.shuffle(events)
    survived = {"kill": 0, "int": 0}
    for event in events:
        proc = _cli(TINY, storage, *args)
        time.sleep(rng.uniform(3.0, 8.0))  # startup takes ~3 s; a trial of 30 rounds several more
        if proc.poll() is not None:
            continue  # the study finished before we struck
        proc.send_signal(signal.SIGKILL if event == "kill" else signal.SIGINT)
        proc.wait(timeout=60)
        survived[event] += 1
    final = _cli(TINY, storage, *args)
    _, err = final.communicate(timeout=1800)
    if final.returncode != 0:
        raise SystemExit(f"resume failed: {err}")
    return {"kills_survived": survived["kill"], "interrupts_survived": survived["int"], **_audit(storage, trials)}


def workers(tmp: Path, kind: str, count: int, trials: int) -> dict:
    storage = f"sqlite:///{tmp / f'w{count}.db'}" if kind == "sqlite" else f"journal:{tmp / f'w{count}.log'}"
    procs = [_cli(TINY, storage, "--trials", str(trials)) for _ in range(count)]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"worker failed: {err}")
    audit = _audit(storage, trials)
    study = _study(storage)
    audit["workers_with_trials"] = len({t.user_attrs.get("worker") for t in study.trials if t.state.name == "COMPLETE"})
    return {"storage": kind, "workers": count, **audit}


def machines(tmp: Path, where: str, trials: int, rng: random.Random) -> dict:
    """Three "machines" (own host names) on one storage; one vanishes mid-trial.

    ``where`` is ``postgresql`` (a throwaway server), ``journal`` (a journal file, as on
    NFS) or any storage URL. The survivors cannot see the lost machine's processes: only
    its silent heartbeats (``study.heartbeat=1``, grace 3 s) tell them to fail and retry
    its trial.
    """
    from contextlib import nullcontext

    from fednas.testing import temporary_postgres

    if where == "postgresql":
        server = temporary_postgres()
    else:
        server = nullcontext(f"journal:{tmp / 'machines.log'}" if where == "journal" else where)
    with server as storage:
        return {"storage": where.split(":")[0], "workers": 3, **_lose_a_machine(tmp, storage, trials, rng)}


def _lose_a_machine(tmp: Path, storage: str, trials: int, rng: random.Random) -> dict:
    from fednas.testing import as_other_machine

    args = ("--trials", str(trials), "--set", "federation.rounds=30", "--set", "study.heartbeat=1",
            "--set", f"study.artifacts='{tmp / 'machines.artifacts'}'")  # a shared folder, as on NFS
    procs = {}
    for host in ("machine-a", "machine-b", "machine-c"):
        cmd = [sys.executable, "-m", "fednas", "search", str(TINY), "--storage", storage, "--quiet", *args]
        procs[host] = subprocess.Popen(as_other_machine(host, cmd), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    lost = procs.pop("machine-a")
    end = time.time() + 300
    while time.time() < end and lost.poll() is None and not _running_on(storage, "machine-a"):
        time.sleep(0.2)
    time.sleep(rng.uniform(1.0, 4.0))  # into its trial
    struck = _running_on(storage, "machine-a")
    lost.kill()
    lost.wait(timeout=60)
    for host, p in procs.items():
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"{host} failed: {err}")
    study = _study(storage)
    reasons = [t.system_attrs.get("fail_reason", "") for t in study.trials if t.state.name == "FAIL"]
    hosts = {t.user_attrs.get("worker", "").rpartition(":")[0] for t in study.trials if t.state.name == "COMPLETE"}
    return {"machine_lost_mid_trial": struck, "recovered_by_heartbeat": sum("heartbeat" in r for r in reasons),
            "hosts_with_trials": sorted(hosts), **_audit(storage, trials)}


def _running_on(storage: str, host: str) -> bool:
    try:
        trials = _study(storage).trials
    except KeyError:  # not created yet
        return False
    return any(t.state.name == "RUNNING" and t.user_attrs.get("worker", "").startswith(f"{host}:") for t in trials)


def _states(storage: str) -> dict[str, int]:
    try:
        trials = _study(storage).trials
    except KeyError:  # not created yet
        return {}
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _strike(storage: str, proc: subprocess.Popen, delay: float, signum: int) -> str:
    """Signal ``proc`` ``delay`` s after its first trial is RUNNING; classify what happened."""
    end = time.time() + 120
    while _states(storage).get("RUNNING", 0) == 0 and time.time() < end and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(delay)
    if proc.poll() is not None:
        return "finished before the signal"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == -signum:
        return "killed by the signal"
    if "Traceback" in err or "Exception ignored" in err:
        return "traceback"
    if proc.returncode == 0:
        return "ignored"
    states = _states(storage)
    failed = [t for t in _study(storage).trials if t.state.name == "FAIL"]
    requeued = states.get("WAITING", 0) == len(failed) and all("interrupted" in t.user_attrs.get("fail_reason", "")
                                                               for t in failed)
    if (proc.returncode == 128 + signum and "Resume with the same command" in err
            and states.get("RUNNING", 0) == 0 and requeued):
        return "clean"
    return f"exit {proc.returncode}, states {states}"


def sweep(tmp: Path, runs: int, signum: int, rng: random.Random, max_delay: float) -> dict[str, int]:
    """``runs`` searches of the fednas on ``sys.path``, each interrupted once; outcome counts."""
    outcomes: dict[str, int] = {}
    args = ("--trials", "2", "--set", "federation.rounds=12")
    for i in range(runs):
        delay = rng.uniform(0.0, max_delay)
        storage = f"sqlite:///{tmp / f'sweep-{i}.db'}"
        what = _strike(storage, _cli(TINY, storage, *args), delay, signum)
        outcomes[what] = outcomes.get(what, 0) + 1
        if what != "clean":
            print(f"  run {i} ({delay:.2f} s): {what}", flush=True)
    return outcomes


def compare_sweeps(argv: list[str], other: str) -> dict[str, dict[str, int]]:
    """Run the same sweep for this checkout and for ``other`` at the same time, in two processes."""
    import os

    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    envs = {"this": None, "compare": {**os.environ, "PYTHONPATH": str(Path(other).resolve())}}
    # not from inside a checkout: ``python -m fednas`` would put the working folder first on sys.path
    cwd = tempfile.gettempdir()
    procs = {v: subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True) for v, env in envs.items()}
    out = {}
    for v, proc in procs.items():
        text, _ = proc.communicate()
        for line in text.splitlines()[:-1]:
            print(f"{v}:{line}", flush=True)
        out[v] = json.loads(text.splitlines()[-1])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--interrupts", type=int, default=2)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", type=int, default=0, metavar="N", help="N single interrupts at random moments instead")
    p.add_argument("--signal", choices=["INT", "TERM"], default="INT", help="signal of --sweep")
    p.add_argument("--compare", metavar="PATH", help="with --sweep: also run the fednas checkout at PATH")
    p.add_argument("--scenarios", type=lambda t: t.split(","), default=["torture", "workers", "machines"],
                   help="comma-separated subset of torture,workers,machines (default: all)")
    p.add_argument("--machines-on", type=lambda t: [x for x in t.split(",") if x], default=["postgresql", "journal"],
                   metavar="STORAGE,...", help="storages of the machines scenario: postgresql (a throwaway server), "
                                               "journal, or storage URLs (default: postgresql,journal)")
    p.add_argument("--max-delay", type=float, default=2.5, help="with --sweep: latest moment of the signal (s)")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(args.seed)
    if args.sweep and args.compare:
        argv = ["--sweep", str(args.sweep), "--signal", args.signal, "--max-delay", str(args.max_delay),
                "--seed", str(args.seed)]
        print(json.dumps(compare_sweeps(argv, args.compare)))
        return
    if args.sweep:
        with tempfile.TemporaryDirectory() as d:
            out = sweep(Path(d), args.sweep, getattr(signal, f"SIG{args.signal}"), rng, args.max_delay)
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = []
        if "torture" in args.scenarios:
            results.append(torture(tmp, args.kills, args.interrupts, args.trials, rng))
            print("torture:", results[-1], flush=True)
        for kind, count in (("sqlite", 3), ("journal", 2)) if "workers" in args.scenarios else ():
            results.append(workers(tmp, kind, count, args.trials))
            print("workers:", results[-1], flush=True)
        for where in args.machines_on if "machines" in args.scenarios else ():
            results.append(machines(tmp, where, args.trials, rng))
            print("machines:", results[-1], flush=True)
    total = {
        "kills_survived": sum(r.get("kills_survived", 0) for r in results),
        "interrupts_survived": sum(r.get("interrupts_survived", 0) for r in results),
        "max_workers_together": max(r.get("workers", 1) for r in results),
        "machines_lost_mid_trial": sum(r.get("machine_lost_mid_trial", False) for r in results),
        "recovered_by_heartbeat": sum(r.get("recovered_by_heartbeat", 0) for r in results),
        "trials_lost": sum(r["lost"] for r in results),
        "trials_doubled": sum(r["doubled"] for r in results),
        "overshoot": sum(r["overshoot"] for r in results),
    }
    print(json.dumps(total))


if __name__ == "__main__":
    main()
