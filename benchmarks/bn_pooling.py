"""Batch-norm statistics under label skew: FedAvg's averaged running statistics vs pooled ones.

Runs the same federation (mnist5k, 8 clients, Dirichlet alpha, FedAvg, 6 rounds of one local
epoch, mobilenet_tiny, seed 0) with ``federation.bn_recalibration`` "off" (clients' running
statistics averaged with the weights) and "final" (the server asks the clients for per-channel
sums and sums of squares of every batch-norm input and sets the exact pooled statistics), for
each alpha, and prints a markdown table; the last line is one JSON object.

    python benchmarks/bn_pooling.py --alphas 0.3 0.5 1.0
"""

from __future__ import annotations

import argparse
import json

from fednas.config import DataConfig, FederationConfig
from fednas.fl import RunSpec, run_federation
from search_spaces import preset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 1.0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--arch", default="mobilenet_tiny")
    args = p.parse_args()
    print("| alpha | averaged statistics | pooled statistics | pooling bytes |")
    print("|---|---|---|---|")
    out = {}
    for alpha in args.alphas:
        acc = {}
        for mode in ("off", "final"):
            spec = RunSpec(DataConfig(alpha=alpha), FederationConfig(rounds=args.rounds, bn_recalibration=mode), 0,
                           preset(args.arch).to_dict())
            res = run_federation(spec)
            acc[mode] = res.accuracy
            if mode == "final":
                pool = res.bytes_by_type.get("query.bn_moments", {})
                pool_bytes = pool.get("upload_bytes", 0) + pool.get("download_bytes", 0)
        print(f"| {alpha} | {acc['off']:.4f} | {acc['final']:.4f} | {pool_bytes:,} |", flush=True)
        out[str(alpha)] = {"averaged": acc["off"], "pooled": acc["final"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
