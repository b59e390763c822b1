"""Workers on one machine: each sharing the cores (fednas's default) against each using all.

Real ``fednas search`` processes on a fresh SQLite file per run, alternating the two
variants so both see the same machine load:

* ``shared``: no ``OMP_NUM_THREADS``; each worker sizes torch's pool to cores // workers;
* ``full``: ``OMP_NUM_THREADS=<cores>``, what every worker did before (torch's default).

Scenarios: two workers started by hand on the tiny test study (4 trials x 12 rounds),
and one worker alone on the quickstart study (2 trials), where sharing must cost nothing.
The last line is one JSON object with the median wall times and the ratios full/shared.

    python benchmarks/worker_threads.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "two_workers_tiny": (ROOT / "tests" / "tiny_study.toml", 2, ("--trials", "4", "--set", "federation.rounds=12")),
    "one_worker_quickstart": (ROOT / "studies" / "quickstart.toml", 1, ("--trials", "2")),
}


def _run(config: Path, workers: int, args: tuple[str, ...], threads: int | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "fednas", "search", str(config), "--storage", f"sqlite:///{d}/s.db",
               "--quiet", *args]
        start = time.perf_counter()
        procs = [subprocess.Popen(cmd, env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(workers)]
        for p in procs:
            _, err = p.communicate(timeout=3600)
            if p.returncode != 0:
                raise SystemExit(f"worker failed: {err}")
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    out: dict[str, float] = {"cores": cores}
    for name, (config, workers, extra) in SCENARIOS.items():
        times: dict[str, list[float]] = {"shared": [], "full": []}
        for _ in range(args.repeats):
            for variant, threads in (("shared", None), ("full", cores)):
                times[variant].append(_run(config, workers, extra, threads))
                print(f"{name} {variant}: {times[variant][-1]:.1f} s", flush=True)
        med = {v: statistics.median(t) for v, t in times.items()}
        out[f"{name}_shared_s"] = round(med["shared"], 1)
        out[f"{name}_full_s"] = round(med["full"], 1)
        out[f"{name}_full/shared"] = round(med["full"] / med["shared"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
