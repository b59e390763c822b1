"""Torture a study: repeated SIGKILLs and Ctrl-Cs at random moments, then several workers.

Runs the real CLI in subprocesses on real storage files and reports, at the end, how many
kills and interrupts were survived, how many workers ran together, and how many trials were
lost or trained twice (the goal is none):

    python benchmarks/robustness.py --kills 5 --interrupts 2 --trials 8

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


def _cli(config: Path, storage: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fednas", "search", str(config), "--storage", storage, "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--interrupts", type=int, default=2)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = [torture(tmp, args.kills, args.interrupts, args.trials, rng)]
        print("torture:", results[0], flush=True)
        for kind, count in (("sqlite", 3), ("journal", 2)):
            results.append(workers(tmp, kind, count, args.trials))
            print("workers:", results[-1], flush=True)
    total = {
        "kills_survived": results[0]["kills_survived"],
        "interrupts_survived": results[0]["interrupts_survived"],
        "max_workers_together": max(r.get("workers", 1) for r in results),
        "trials_lost": sum(r["lost"] for r in results),
        "trials_doubled": sum(r["doubled"] for r in results),
        "overshoot": sum(r["overshoot"] for r in results),
    }
    print(json.dumps(total))


if __name__ == "__main__":
    main()
