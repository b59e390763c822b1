"""Overhead of fednas's in-process Flower run against a plain PyTorch FedAvg loop (and Ray).

One federated job (clients, rounds, one local epoch, server-side evaluation each round)
is run three ways in this process, interleaved, each ``--repeats`` times:

* plain: a hand-written FedAvg loop over the same shards, seeds and training function;
* fednas: ``fednas.fl.run_federation`` (ServerApp + ClientApp on the in-process grid);
* ray: Flower's simulation runtime (``flwr.simulation.run_simulation``), if installed.

The plain loop and fednas compute the same thing (tests/fl/test_grid.py checks one round
against it to 1e-5); over several rounds float32 summation order (Flower samples nodes in
random order and aggregates in float32) makes the accuracies drift apart a little.
Batch-norm pooling is off in all three to keep the job identical. One untimed warm-up
round of each way runs first.
The last line is ``fednas/plain=R1 ray/fednas=R2 overhead=R3`` with the median times'
ratios. Local training is the same function in plain and fednas, and on this machine its
time varies by +-6 % from one run to the next, more than fednas's overhead; so each run
also times the local training calls, and ``overhead`` is fednas's median time outside
local training minus plain's, as a fraction of plain's median total: the cost of Flower,
messages and byte counting that the ratio of totals only blurs.

    python benchmarks/overhead.py --clients 8 --rounds 3 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import statistics
import time

import torch

from fednas._seeds import derive_seed
from fednas.config import DataConfig, FederationConfig
from fednas.fl import RunSpec, client_app, federated_data, run_federation
from fednas.fl.server_app import initial_model
from fednas.train import TrainConfig, evaluate
from fednas.train import train as _train
from search_spaces import preset

_TRAINING = [0.0]  # seconds spent in local training since the last reset


def train(*args, **kwargs):  # the same local training function, timed, in both ways
    start = time.perf_counter()
    try:
        return _train(*args, **kwargs)
    finally:
        _TRAINING[0] += time.perf_counter() - start


client_app.train = train


def plain_fedavg(spec: RunSpec) -> float:
    """The same job with no Flower: returns the final held-out accuracy."""
    fed = spec.federation
    data = federated_data(spec.data, fed.num_clients, spec.seed)
    global_model = initial_model(spec, data)
    local = TrainConfig(epochs=fed.local_epochs, batch_size=fed.batch_size, lr=fed.lr, momentum=fed.momentum)
    acc = float("nan")
    for rnd in range(1, fed.rounds + 1):
        states, weights = [], []
        for pid in range(fed.num_clients):
            shard = data.client(pid)
            model = copy.deepcopy(global_model)
            res = train(model, shard.x, shard.y, local, seed=derive_seed(spec.seed, rnd, pid))
            states.append(model.state_dict())
            weights.append(res.examples)
        total = sum(weights)
        avg = {k: sum(s[k].double() * (w / total) for s, w in zip(states, weights)) for k in states[0]}
        global_model.load_state_dict(avg)
        _, acc = evaluate(global_model, data.test.x, data.test.y)
    return acc


def fednas_run(spec: RunSpec) -> float:
    return run_federation(spec).accuracy


def ray_run(spec: RunSpec) -> float:
    """Flower's Ray simulation of the same apps; the spec reaches the Ray workers by env var."""
    from flwr.simulation import run_simulation

    from fednas.fl import client_app, server_app
    from fednas.fl._spec import RUN_ENV

    os.environ[RUN_ENV] = spec.to_run_config()["fednas-run"]
    captured = _Capture()
    log = logging.getLogger("fednas.fl.server_app")  # the ServerApp logs its final accuracy
    log.addHandler(captured)
    log.setLevel(logging.INFO)
    try:
        run_simulation(
            server_app=server_app.app,
            client_app=client_app.app,
            num_supernodes=spec.federation.num_clients,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )
    finally:
        log.removeHandler(captured)
    return captured.accuracy


class _Capture(logging.Handler):
    accuracy = float("nan")

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("final accuracy"):
            self.accuracy = float(record.args[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arch", default="mobilenet_tiny")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()

    spec = RunSpec(
        DataConfig(alpha=0.5),
        FederationConfig(num_clients=args.clients, rounds=args.rounds, bn_recalibration="off"),
        0,
        preset(args.arch).to_dict(),
    )
    federated_data(spec.data, args.clients, spec.seed)  # load once, outside the timings
    ways = {"plain": plain_fedavg, "fednas": fednas_run}
    if not args.no_ray and importlib.util.find_spec("ray") is not None:
        ways["ray"] = ray_run
    warm = RunSpec(spec.data, FederationConfig(num_clients=args.clients, rounds=1, bn_recalibration="off"), 0, spec.arch)
    for name in ("plain", "fednas"):
        ways[name](warm)
    times: dict[str, list[float]] = {k: [] for k in ways}
    outside: dict[str, list[float]] = {k: [] for k in ways}  # seconds outside local training (in-process ways)
    accs: dict[str, float] = {}
    print(f"job: {args.clients} clients, {args.rounds} rounds, 1 local epoch, {args.arch}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    for rep in range(args.repeats):
        for name, fn in ways.items():
            _TRAINING[0] = 0.0
            start = time.perf_counter()
            accs[name] = fn(spec)
            times[name].append(time.perf_counter() - start)
            outside[name].append(times[name][-1] - _TRAINING[0])
            where = f"  outside local training {outside[name][-1]:5.2f}s" if name != "ray" else ""
            print(f"  repeat {rep + 1} {name:6s} {times[name][-1]:7.2f}s{where}  accuracy {accs[name]:.4f}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:6s} median {v:7.2f}s  min {min(times[k]):7.2f}s  accuracy {accs[k]:.4f}")
    r1 = med["fednas"] / med["plain"]
    r2 = f"{med['ray'] / med['fednas']:.2f}" if "ray" in med else "n/a"
    extra = (statistics.median(outside["fednas"]) - statistics.median(outside["plain"])) / med["plain"]
    for k in ("plain", "fednas"):
        print(f"{k:6s} outside local training: median {statistics.median(outside[k]):5.2f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"times": times, "outside_training": {k: outside[k] for k in ("plain", "fednas")},
                       "accuracy": accs, "fednas_over_plain": r1, "ray_over_fednas": r2, "overhead": extra}, f, indent=2)
    print(f"fednas/plain={r1:.3f} ray/fednas={r2} overhead={extra:+.3f}")


if __name__ == "__main__":
    main()
