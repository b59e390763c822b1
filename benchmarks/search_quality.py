"""Search strategies compared on one supernet-mode problem: hypervolume against trials.

One supernet of the quickstart space (``--config``) is trained once by the federation
(``--supernet-rounds``); then every ``study.sampler`` searches it for ``--trials`` trials
with each of ``--seeds`` seeds, each trial scored as a supernet study's phase 2 scores it
(inherited weights, pooled batch-norm statistics, held-out accuracy; MACs counted). The
problem is the same for every strategy: objectives accuracy (max) and MACs (min), the
study's labels and constraints-free. A subnet scored once is not scored again (same
architecture, same score), so the strategies differ only in what they ask for.

After every trial the hypervolume of the completed trials' front is computed in the box
accuracy [0, 1] x MACs [0, MACs of the space's largest member], normalized to 1. Printed
per strategy: the mean (over seeds) final hypervolume, the mean number of trials it needs
to reach random search's mean final hypervolume (``--trials + 1`` counts as never), and the
mean hypervolume at a quarter and half of the budget. Last line, one JSON object:
``{sampler: {"hv": mean final, "trials_to_random_hv": mean}}``.

    python benchmarks/search_quality.py --quick     # 40 trials, 2 seeds, 4 supernet rounds
    python benchmarks/search_quality.py             # 200 trials, 3 seeds, 12 supernet rounds

A long run can be stopped and resumed: ``--out FILE`` keeps every finished (strategy, seed)
history and every scored subnet in FILE (rewritten atomically after each); run the same
command again and only the missing histories are searched. The file is used only when its
settings and the trained supernet's digest match this run's (else it is refused, not
overwritten). ``--report FILE [FILE ...]`` prints the table of saved files (several runs of
disjoint ``--samplers`` may be merged) without training anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _config(args: argparse.Namespace, sampler: str, seed: int) -> Any:
    from fednas.config import parse_config

    doc = tomllib.loads(Path(args.config).read_text())
    doc["objectives"] = {"accuracy": "maximize", "macs": "minimize"}
    doc["constraints"] = {}
    doc.setdefault("study", {}).update(sampler=sampler, seed=seed, trials=args.trials, mode="supernet",
                                       population_size=args.population)
    doc.setdefault("supernet", {}).update(rounds=args.supernet_rounds)
    return parse_config(doc, source=args.config)


def _hv(points: list[tuple[float, float]], ref_macs: float) -> float:
    from fednas.study import hypervolume

    losses = np.array([[1.0 - a, m / ref_macs] for a, m in points], dtype=float)
    return hypervolume(losses, [1.0, 1.0]) if len(losses) else 0.0


def _search(args: argparse.Namespace, sampler: str, seed: int, space: Any, overrides: dict[str, Any], data: Any,
            evaluator: Any, cache: dict[str, float], ref_macs: float) -> list[float]:
    """Hypervolume after each of ``args.trials`` trials of one strategy and seed."""
    import optuna

    from fednas.cost import measure
    from fednas.models import build_run_model
    from fednas.search._study import _sampler
    from fednas.study import pareto_mask

    config = _config(args, sampler, seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=_sampler(config, 0))
    points: list[tuple[float, float]] = []
    history = []
    for _ in range(args.trials):
        trial = study.ask()
        labels = space.suggest(trial, overrides)
        arch = space.decode(labels)
        key = arch.to_json()
        if key not in cache:
            model = build_run_model(arch.to_dict(), space.settings(labels), num_classes=data.train.num_classes,
                                    in_channels=data.train.in_channels)
            cost = measure(model, in_channels=data.train.in_channels, resolution=data.train.resolution)
            score = evaluator.evaluate(arch, cost.macs, cost.params)
            cache[key] = (score.accuracy, float(cost.macs))
        acc, macs = cache[key]
        study.tell(trial, [acc, macs])
        points.append((acc, macs))
        mask = pareto_mask([[a, m] for a, m in points], ["maximize", "minimize"])
        history.append(_hv([p for p, keep in zip(points, mask) if keep], ref_macs))
    return history


def _digest(supernet: Any) -> str:
    """A digest of the trained supernet's weights: a saved run belongs to this supernet only."""
    import hashlib

    h = hashlib.sha256()
    for key, value in sorted(supernet.state.items()):
        h.update(key.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()[:16]


def _load(path: str, settings: dict[str, Any]) -> dict[str, Any]:
    empty: dict[str, Any] = {"histories": {}, "cache": {}}
    if not path or not Path(path).exists():
        return empty
    if Path(path).stat().st_size > 200_000_000:
        sys.exit(f"--out {path}: larger than 200 MB; not a file of this benchmark")
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"--out {path}: not readable as JSON ({exc}); move it away or pick another file")
    if not isinstance(doc, dict) or doc.get("settings") != settings:
        sys.exit(f"--out {path}: made with other settings or another supernet ({doc.get('settings') if isinstance(doc, dict) else '?'}); "
                 "move it away or pick another file")
    return {"histories": doc.get("histories", {}), "cache": doc.get("cache", {})}


def _save(path: str, settings: dict[str, Any], histories: dict[str, Any], cache: dict[str, Any]) -> None:
    if not path:
        return
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "histories": histories, "cache": cache}))
    tmp.replace(path)


def summarize(histories: dict[str, list[list[float]]], trials: int, *, quiet: bool = False) -> dict[str, dict[str, float]]:
    """Per strategy: mean final hypervolume and mean trials to reach random search's mean final one (printed as
    a markdown table unless ``quiet``); ``trials + 1`` counts as never."""
    target = float(np.mean([h[-1] for h in histories["random"]]))
    summary: dict[str, dict[str, float]] = {}
    if not quiet:
        print(f"\nrandom search's mean final hypervolume: {target:.4f}\n")
        print("| sampler | final HV (mean) | min-max over seeds | HV at 25% | HV at 50% | trials to random's final HV |")
        print("|---|---|---|---|---|---|")
    for name, hs in histories.items():
        reach = [next((i + 1 for i, v in enumerate(h) if v >= target), trials + 1) for h in hs]
        finals = [h[-1] for h in hs]
        q, half = max(trials // 4 - 1, 0), max(trials // 2 - 1, 0)
        summary[name] = {"hv": float(np.mean(finals)), "trials_to_random_hv": float(np.mean(reach))}
        if not quiet:
            print(f"| {name} | {np.mean(finals):.4f} | {min(finals):.4f}-{max(finals):.4f} | "
                  f"{np.mean([h[q] for h in hs]):.4f} | {np.mean([h[half] for h in hs]):.4f} | "
                  f"{np.mean(reach):.1f} ({', '.join(str(r) for r in reach)}) |")
    return summary


def report(paths: list[str], seeds: int) -> None:
    """The table and JSON line of saved ``--out`` files (merged; each must hold the same settings), from the
    strategies with all ``seeds`` histories, without training anything."""
    docs = []
    for path in paths:
        if not Path(path).is_file() or Path(path).stat().st_size > 200_000_000:
            sys.exit(f"--report {path}: expected a --out file of this benchmark (at most 200 MB)")
        try:
            docs.append(json.loads(Path(path).read_text()))
        except ValueError as exc:
            sys.exit(f"--report {path}: not readable as JSON ({exc})")
    if any(d.get("settings") != docs[0].get("settings") for d in docs):
        sys.exit("--report: the files were made with other settings or supernets")
    merged: dict[str, dict[str, list[float]]] = {}
    for d in docs:
        for name, runs in d.get("histories", {}).items():
            merged.setdefault(name, {}).update(runs)
    histories = {n: [runs[str(s)] for s in range(seeds)] for n, runs in merged.items()
                 if all(str(s) in runs for s in range(seeds))}
    partial = sorted(n for n in merged if n not in histories)
    if "random" not in histories:
        sys.exit(f"--report: random search lacks some of its {seeds} seeds; nothing to compare with")
    settings = docs[0]["settings"]
    print(f"saved histories of {', '.join(paths)}: {settings}; complete ({seeds} seeds): {', '.join(histories)}"
          + (f"; incomplete, left out: {', '.join(partial)}" if partial else ""))
    summarize(histories, int(settings["trials"]))
    print(json.dumps(summarize(histories, int(settings["trials"]), quiet=True)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "studies" / "quickstart.toml"))
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--supernet-rounds", type=int, default=12)
    p.add_argument("--population", type=int, default=20, help="study.population_size (NSGA-II/III, evolution)")
    p.add_argument("--samplers", default="", help="comma-separated (default: all registered)")
    p.add_argument("--quick", action="store_true", help="40 trials, 2 seeds, 4 supernet rounds")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 beside other CPU jobs)")
    p.add_argument("--out", default="", help="JSON file of finished histories and scores, to stop and resume")
    p.add_argument("--report", nargs="+", metavar="FILE", default=None,
                   help="only print the table of saved --out files (merged), for the strategies with all --seeds")
    args = p.parse_args()
    if args.report:
        report(args.report, args.seeds)
        return
    if args.quick:
        args.trials, args.seeds, args.supernet_rounds = 40, 2, 4

    import optuna
    import torch

    from fednas.fl import SubnetEvaluator, federated_data, run_supernet
    from fednas.samplers import SAMPLERS
    from fednas.search._supernet import supernet_spec
    from search_spaces import domain_from_config, get_search_space, with_compression

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(max(1, args.threads))
    samplers = [s for s in args.samplers.split(",") if s] or list(SAMPLERS)
    if "random" not in samplers:
        samplers.append("random")
    base = _config(args, "random", 0)
    space = with_compression(get_search_space(base.space.name, base.space.options))
    overrides = {k: domain_from_config(v, k) for k, v in base.space.labels.items()}
    data = federated_data(base.data, base.federation.num_clients, base.study.seed)
    spec = supernet_spec(base)
    from fednas.cost import measure
    from fednas.models import build_run_model

    largest = build_run_model(spec.arch, space.settings(space.corner("high", overrides)),
                              num_classes=data.train.num_classes, in_channels=data.train.in_channels)
    ref_macs = float(measure(largest, in_channels=data.train.in_channels, resolution=data.train.resolution).macs)
    start = time.perf_counter()
    supernet = run_supernet(spec).supernet
    print(f"space {args.config} ({base.space.name}); supernet {args.supernet_rounds} rounds on "
          f"{base.federation.num_clients} clients in {time.perf_counter() - start:.0f} s; {args.trials} trials x "
          f"{args.seeds} seeds per strategy; HV box accuracy [0, 1] x MACs [0, {ref_macs:,.0f}]", flush=True)
    settings = {"config": str(args.config), "trials": args.trials, "supernet_rounds": args.supernet_rounds,
                "population": args.population, "supernet": _digest(supernet)}
    saved = _load(args.out, settings)
    done: dict[str, dict[str, list[float]]] = saved["histories"]
    cache: dict[str, Any] = {k: tuple(v) for k, v in saved["cache"].items()}
    histories: dict[str, list[list[float]]] = {}
    with SubnetEvaluator(spec, supernet) as evaluator:
        for name in samplers:
            t0 = time.perf_counter()
            runs = done.setdefault(name, {})
            for seed in range(args.seeds):
                if str(seed) not in runs:
                    runs[str(seed)] = _search(args, name, seed, space, overrides, data, evaluator, cache, ref_macs)
                    _save(args.out, settings, done, cache)
            histories[name] = [runs[str(seed)] for seed in range(args.seeds)]
            final = np.mean([h[-1] for h in histories[name]])
            print(f"  {name:<10} final HV {final:.4f} ({time.perf_counter() - t0:.0f} s, {len(cache)} distinct "
                  f"subnets scored so far)", flush=True)
    summarize(histories, args.trials)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    print(json.dumps(summarize(histories, args.trials, quiet=True)))


if __name__ == "__main__":
    main()
