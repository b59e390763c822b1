"""Measured latency against MACs and against the latency-table predictor (issue "From the front to the device").

Architectures: ``--archs`` drawn from the quickstart study's space (studies/quickstart.toml,
seed 1) and every MobileNet preset, all built for 3x224x224 inputs (10 classes for the
space's, 1,000 for the presets). Each is exported to ONNX and timed in ONNX Runtime with one
pinned thread, in the same interleaved passes as the table's units (``profile_and_time``:
every chunk of up to 256 units and all whole models are prepared, then ``--rounds`` passes of
warm-up and ``--repeats`` runs each; this machine's speed drifts by up to 1.4x over seconds to
minutes, and interleaving puts a slow spell on units and models alike).

The predictor's table is made as ``fednas latency profile`` makes it: ``--samples``
architectures drawn from the same space with another seed (0) and the two corners, plus the
presets, each unit timed alone (interleaved the same way); the evaluation architectures that share no draw with the
table may hold units it lacks, which are estimated from its per-kind fit and counted. As the
CLI does, ``--calibrate`` of the table's draws are also timed whole, and the cost a unit timed
alone pays at its input (the layout change and copy a model does not make between its units)
is fitted to them, per element; the evaluation architectures are not among them.

    python benchmarks/latency.py                 # 24 space archs + presets, table of 200 draws
    python benchmarks/latency.py --quick         # 8 archs, 30 draws, 20 repeats, 2 rounds

Prints a table per architecture, then Spearman and Kendall correlations of MACs vs latency and
of predicted vs measured latency, and the predictor's median relative error. Last line one
JSON object: ``{"spearman_macs_latency", "kendall_macs_latency", "spearman_predicted_latency",
"kendall_predicted_latency", "median_rel_error", "max_rel_error", "fallback_units", ...}``.
Run it on a quiet machine: other CPU work changes latencies, not MACs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

from fednas.config import load_config
from fednas.cost import count_macs
from fednas.latency import draw_labels, latency_units, profile_and_time
from fednas.models import build_run_model
from search_spaces import JointSpace, PRESETS, build_model, domain_from_config, get_search_space, preset

SHAPE = (3, 224, 224)
CONFIG = Path(__file__).resolve().parent.parent / "studies" / "quickstart.toml"


def _space_models(count: int, seed: int, exclude: set[str]) -> list[tuple[str, object]]:
    config = load_config(CONFIG)
    space = JointSpace(get_search_space(config.space.name, config.space.options))
    overrides = {k: domain_from_config(v, k) for k, v in config.space.labels.items()}
    out, tries = [], 0
    for labels in draw_labels(space, overrides, count * 20, seed)[2:]:
        key = repr(sorted(labels.items()))
        tries += 1
        if key in exclude:
            continue
        exclude.add(key)
        model = build_run_model(space.decode(labels), space.settings(labels), num_classes=10, in_channels=SHAPE[0])
        out.append((f"space#{len(out)}", model))
        if len(out) == count:
            break
    return out


def _table_models(samples: int) -> tuple[list[tuple[object, tuple[int, ...]]], set[str]]:
    config = load_config(CONFIG)
    space = JointSpace(get_search_space(config.space.name, config.space.options))
    overrides = {k: domain_from_config(v, k) for k, v in config.space.labels.items()}
    models, keys = [], set()
    for labels in draw_labels(space, overrides, samples, 0):
        key = repr(sorted(labels.items()))
        if key in keys:
            continue
        keys.add(key)
        models.append((build_run_model(space.decode(labels), space.settings(labels), num_classes=10,
                                       in_channels=SHAPE[0]), SHAPE))
    return models, keys


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=24, help="architectures drawn from the quickstart space")
    p.add_argument("--samples", type=int, default=200, help="draws the predictor's table is profiled from")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="interleaved passes over all models (and all units)")
    p.add_argument("--calibrate", type=int, default=30, help="table draws also timed whole to fit the boundary cost")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.archs, args.samples, args.repeats, args.rounds = 8, 30, 20, 2
    presets = [(name, build_model(preset(name), num_classes=1000, in_channels=SHAPE[0]))
               for name in sorted(PRESETS) if preset(name).family == "mobilenet"]

    start = time.perf_counter()
    table_models, table_keys = _table_models(args.samples)
    evaluated = _space_models(args.archs, 1, set(table_keys)) + presets
    table, timed = profile_and_time(table_models + [(m, SHAPE) for _, m in presets], [(m, SHAPE) for _, m in evaluated],
                                    runtime="onnxruntime", threads=1, warmup=args.warmup, repeats=args.repeats,
                                    rounds=args.rounds, calibrate=min(args.calibrate, len(table_models)))
    profile_seconds = time.perf_counter() - start
    print(f"table: {len(table.units)} units from {len(table_models)} space architectures and {len(presets)} presets, "
          f"empty call {table.overhead_ms:.4f} ms, boundary {table.boundary_ms_per_element * 1e6:.3f} ms per "
          f"million elements (fitted to {min(args.calibrate, len(table_models))} of the draws timed whole), "
          f"{profile_seconds:.0f} s")

    rows = []
    for (name, model), measured in zip(evaluated, timed):
        predicted = table.predict(latency_units(model, SHAPE))
        macs = count_macs(model, in_channels=SHAPE[0], resolution=SHAPE[1])
        rows.append({"arch": name, "macs": macs, "measured_ms": round(measured.ms, 4),
                     "p25_ms": round(measured.p25_ms, 4), "p75_ms": round(measured.p75_ms, 4),
                     "predicted_ms": round(predicted.ms, 4), "units": predicted.units, "fallback": predicted.fallback})
    print()
    print("| architecture | MACs | measured ms (p25-p75) | predicted ms | rel. error | units (fallback) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        err = (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
        print(f"| {r['arch']} | {r['macs']:,} | {r['measured_ms']:.3f} ({r['p25_ms']:.3f}-{r['p75_ms']:.3f}) | "
              f"{r['predicted_ms']:.3f} | {100 * err:+.1f} % | {r['units']} ({r['fallback']}) |")
    measured = np.array([r["measured_ms"] for r in rows])
    predicted = np.array([r["predicted_ms"] for r in rows])
    macs = np.array([r["macs"] for r in rows], dtype=float)
    rel = np.abs(predicted - measured) / measured
    out = {
        "spearman_macs_latency": round(float(spearmanr(macs, measured).statistic), 4),
        "kendall_macs_latency": round(float(kendalltau(macs, measured).statistic), 4),
        "spearman_predicted_latency": round(float(spearmanr(predicted, measured).statistic), 4),
        "kendall_predicted_latency": round(float(kendalltau(predicted, measured).statistic), 4),
        "median_rel_error": round(float(np.median(rel)), 4),
        "max_rel_error": round(float(rel.max()), 4),
        "architectures": len(rows), "table_units": len(table.units),
        "fallback_units": int(sum(r["fallback"] for r in rows)),
        "units_evaluated": int(sum(r["units"] for r in rows)),
        "seconds": round(profile_seconds, 1), "rounds": args.rounds, "calibrated_on": args.calibrate,
        "boundary_ms_per_million": round(table.boundary_ms_per_element * 1e6, 4), "repeats": args.repeats,
        "runtime": table.runtime,
        "runtime_version": table.runtime_version, "threads": 1, "input": "x".join(map(str, SHAPE)),
    }
    print()
    for k in ("spearman_macs_latency", "kendall_macs_latency", "spearman_predicted_latency",
              "kendall_predicted_latency", "median_rel_error", "max_rel_error"):
        print(f"{k:<28} {out[k]}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
