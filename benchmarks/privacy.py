"""Robust aggregation under attack: FedAvg and each Byzantine-robust rule, clean and with malicious clients.

Part (c) of the privacy/robustness benchmark (issue "Private and robust federations"): the
default federation (mnist5k, 8 clients, Dirichlet 0.5, one local epoch) of ``mobilenet_tiny``
is run clean and under each attack with 25 % of the clients (2 of 8) malicious, once per
aggregation rule, all in this process with one seed. Krum and Multi-Krum are told the true
number of attackers (``num_malicious_nodes = 2``); Bulyan needs 4f + 3 replies, so with 8
clients it is built for f = 1 and faces twice that; FedTrimmedAvg trims 25 % at each end.
The DP and secure-aggregation parts (a) and (b) are not built yet.

    python benchmarks/privacy.py            # 6 rounds, every rule and attack (about 10 minutes here)
    python benchmarks/privacy.py --quick    # 3 rounds, FedAvg, Krum and FedMedian

Prints a markdown table of final held-out accuracies and, as the last line, one JSON object
``{"clean_accuracy": ..., "clean": {rule: accuracy}, "attack": {attack: {rule: accuracy}},
"attackers_per_round": ...}``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from fednas.config import DataConfig, FederationConfig
from fednas.fl import RunSpec, run_federation
from search_spaces import preset

RULES: dict[str, dict[str, float]] = {
    "fedavg": {},
    "krum": {"num_malicious_nodes": 2},
    "multikrum": {"num_malicious_nodes": 2, "num_nodes_to_select": 4},
    "bulyan": {"num_malicious_nodes": 1},
    "fedmedian": {},
    "fedtrimmedavg": {"beta": 0.25},
}
ATTACKS = ("label_flip", "sign_flip", "gaussian", "scaling")
QUICK_RULES = ("fedavg", "krum", "fedmedian")


def run(rule: str, attack: str, rounds: int, seed: int) -> tuple[float, list[int], float]:
    fed = FederationConfig(num_clients=8, rounds=rounds, strategy=rule, strategy_options=dict(RULES[rule]),
                           min_train_nodes=8, attack=attack, attack_fraction=0.25 if attack != "none" else 0.0)
    fed.check()
    spec = RunSpec(DataConfig(), fed, seed, preset("mobilenet_tiny").to_dict())
    start = time.perf_counter()
    outcome = run_federation(spec)
    return outcome.accuracy, [r.attackers for r in outcome.rounds], time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3 rounds; FedAvg, Krum and FedMedian only")
    args = p.parse_args()
    rounds = 3 if args.quick else args.rounds
    rules = QUICK_RULES if args.quick else tuple(RULES)
    table: dict[str, dict[str, float]] = {}
    attackers: dict[str, list[int]] = {}
    for attack in ("none", *ATTACKS):
        table[attack] = {}
        for rule in rules:
            acc, seen, seconds = run(rule, attack, rounds, args.seed)
            table[attack][rule] = round(acc, 4)
            attackers[attack] = seen
            print(f"  {attack:<10} {rule:<14} accuracy {acc:.4f}  attackers per round {seen}  {seconds:5.1f} s",
                  flush=True)
    print()
    print("| attack (2 of 8 clients) | " + " | ".join(rules) + " |")
    print("|---|" + "---|" * len(rules))
    for attack, row in table.items():
        best = max(row.values())
        cells = [f"**{row[r]:.4f}**" if row[r] == best else f"{row[r]:.4f}" for r in rules]
        print(f"| {'clean' if attack == 'none' else attack} | " + " | ".join(cells) + " |")
    clean = table.pop("none")
    print(json.dumps({"clean_accuracy": clean["fedavg"], "clean": clean, "attack": table, "rounds": rounds,
                      "attackers_per_round": {a: attackers[a] for a in ATTACKS}}))


if __name__ == "__main__":
    main()
