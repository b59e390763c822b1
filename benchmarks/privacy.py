"""Privacy and robustness of a federation: accuracy against epsilon under central DP; robust rules under attack.

Part (a), central DP: the same federation (mnist5k, 8 clients, Dirichlet 0.5, 6 rounds,
all clients every round) of ``mobilenet_tiny`` with group norm (``norm = "group"``: no
running statistics in the clipped update), once without privacy and once per noise
multiplier, fixed clipping at norm ``--clip``; the (epsilon, delta) the accountant gives
after the rounds, and the held-out accuracy. The batch-norm model without privacy is the
reference of what the norm swap costs. Then local DP (``mode = "local"``, DP-SGD with Opacus
on each client, per-example clipping at 1.0) at the three largest noise multipliers: the
largest example-level epsilon any client reported.

Part (c) of the privacy/robustness benchmark (issue "Private and robust federations"): the
default federation (mnist5k, 8 clients, Dirichlet 0.5, one local epoch) of ``mobilenet_tiny``
is run clean and under each attack with 25 % of the clients (2 of 8) malicious, once per
aggregation rule, all in this process with one seed. Krum and Multi-Krum are told the true
number of attackers (``num_malicious_nodes = 2``); Bulyan needs 4f + 3 replies, so with 8
clients it is built for f = 1 and faces twice that; FedTrimmedAvg trims 25 % at each end; DnC
(``fednas.fl._dnc``) removes 2 replies per iteration; ``fltrust_median`` (``fednas.fl._trust``)
has no option to tell. ``oracle`` is no defence but the bound of
every filtering rule: FedAvg over the honest replies only (the server is told who attacks), the
same run under every attack since the attackers' replies never count.
``--bucket S`` puts bucketing (``federation.bucket_size``) in front of the robust rules;
``--rules`` and ``--attacks NAME[:STRENGTH],...`` pick a subset (e.g. ``sign_flip:4``), and
``--option RULE.KEY=VALUE`` changes a rule's option (``multikrum.num_nodes_to_select=6``).
Part (c) is judged at ``--rounds 30``: at 12 rounds the runs are still on the steep part of the
learning curve and the final accuracy moves by up to 10 points from one round to the next
(BENCHMARKS.md, "Thirty rounds"); ``--no-clean`` skips the clean runs.

Part (b), secure aggregation: one round of the same federation of ``mobilenet_tiny``
aggregated in the clear, by Flower's SecAgg+ (``privacy.secure_aggregation = "secagg+"``,
every client sharing with every other, threshold 2/3, 22-bit quantization) and by CKKS
encryption (``"ckks"``, TenSEAL, degree 8192);
the largest absolute difference between the two global models, and the bytes and seconds
of the round (the protocol's four exchanges against the plain one; local training is part
of both).

    python benchmarks/privacy.py            # 6 rounds, both parts (about 13 minutes here)
    python benchmarks/privacy.py --part dp  # part (a) only (--part secure, --part attack: the others)
    python benchmarks/privacy.py --quick    # 3 rounds; two noise levels; FedAvg, Krum and FedMedian

Prints markdown tables and, as the last line, one JSON object ``{"dp": [{noise, epsilon,
delta, accuracy}], "dp_clean_accuracy": ..., "secagg_max_abs_diff": ..., "secagg_upload_ratio": ...,
"ckks_max_abs_diff": ..., "ckks_upload_ratio": ..., "secagg": {...}, "ckks": {...}, "clean_accuracy": ..., "clean": {rule: accuracy},
"attack": {attack: {rule: accuracy}}, "attackers_per_round": ..., "curves": {attack: {rule: [accuracy
after each round]}}, "failed": {"attack/rule": error}}`` (the keys of the parts run; a run that stops
with a ``FederationError``, e.g. every client's training diverging under a boosted update, has
accuracy null and its error in ``failed``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from flwr.app import Message
from flwr.serverapp.strategy import FedAvg

from fednas.config import DataConfig, FederationConfig, PrivacyConfig
from fednas.fl import FederationError, RunSpec, run_federation
from fednas.fl._attacks import ATTACKER_KEY
from fednas.strategies import StrategySpec, register_strategy
from search_spaces import preset

class HonestOnly(FedAvg):
    """FedAvg over the honest replies only: the server is told who attacks (each reply's ``attacker``
    metric). Not a defence, the bound of every rule that filters replies: what the federation
    reaches when exactly the malicious clients are left out (``--rules oracle``)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[Any, Any]:
        honest = [m for m in replies
                  if m.has_error() or not m.content["metrics"].get(ATTACKER_KEY, 0)]
        return super().aggregate_train(server_round, honest)


register_strategy(StrategySpec("oracle", f"{__name__}:HonestOnly", {}, "FedAvg over the honest replies"))

RULES: dict[str, dict[str, float]] = {
    "fedavg": {},
    "krum": {"num_malicious_nodes": 2},
    "multikrum": {"num_malicious_nodes": 2, "num_nodes_to_select": 4},
    "bulyan": {"num_malicious_nodes": 1},
    "fedmedian": {},
    "fedtrimmedavg": {"beta": 0.25},
    "dnc": {"num_malicious_nodes": 2},
    "fltrust_median": {},
    "oracle": {},  # not a defence: the bound of any filtering rule (see HonestOnly)
}
ATTACKS = ("label_flip", "sign_flip", "gaussian", "scaling")
QUICK_RULES = ("fedavg", "krum", "fedmedian")
NOISE = (0.1, 0.3, 1.0, 3.0)
LOCAL_CLIP = 1.0  # DP-SGD's per-example gradient norm (part a, local rows)
QUICK_NOISE = (0.3, 1.0)


def run_private(noise: float, rounds: int, seed: int, clip: float, norm: str = "group",
                mode: str = "central") -> tuple[float, dict, float]:
    """One run of part (a): noise 0 is the run without privacy."""
    fed = FederationConfig(num_clients=8, rounds=rounds, min_train_nodes=8, bn_recalibration="off")
    privacy = PrivacyConfig(mode=mode, noise_multiplier=noise, clipping_norm=clip) if noise else PrivacyConfig()
    arch = replace(preset("mobilenet_tiny"), norm=norm)
    start = time.perf_counter()
    outcome = run_federation(RunSpec(DataConfig(), fed, seed, arch.to_dict(), privacy=privacy))
    return outcome.accuracy, outcome.privacy, time.perf_counter() - start


def dp_rows(noises: tuple[float, ...], rounds: int, seed: int, clip: float, mode: str) -> list[dict]:
    """One private run per noise multiplier: its (epsilon, delta) and accuracy, each printed as it ends."""
    rows = []
    for z in noises:
        acc, spent, seconds = run_private(z, rounds, seed, clip, mode=mode)
        rows.append({"noise": z, "epsilon": round(spent["epsilon"], 4), "delta": spent["delta"],
                     "accuracy": round(acc, 4)})
        how = (f"after {spent['releases']} rounds" if mode == "central" else "(largest of any client, per record)")
        print(f"  {mode} noise {z:<5g} clip {clip:g}   accuracy {acc:.4f}  epsilon {spent['epsilon']:.4g} at delta "
              f"{spent['delta']:g} {how}  {seconds:5.1f} s", flush=True)
    print()
    return rows


def _table(title: str, epsilon: str, rounds: int, rows: list[dict], first: tuple[str, ...] = ()) -> None:
    print(f"| {title} | {epsilon} (delta = 1e-5, {rounds} rounds) | accuracy |")
    print("|---|---|---|")
    for line in first:
        print(line)
    for r in rows:
        print(f"| {r['noise']:g} | {r['epsilon']:.4g} | {r['accuracy']:.4f} |")
    print()


def part_dp(noises: tuple[float, ...], rounds: int, seed: int, clip: float) -> dict:
    bn, _, seconds = run_private(0.0, rounds, seed, clip, norm="batch")
    print(f"  no privacy, batch norm   accuracy {bn:.4f}  {seconds:5.1f} s", flush=True)
    clean, _, seconds = run_private(0.0, rounds, seed, clip)
    print(f"  no privacy, group norm   accuracy {clean:.4f}  {seconds:5.1f} s", flush=True)
    rows = dp_rows(noises, rounds, seed, clip, "central")
    _table("noise multiplier", "epsilon", rounds, rows, (f"| none (batch norm) | inf | {bn:.4f} |",
                                              f"| none (group norm) | inf | {clean:.4f} |"))
    local = dp_rows(noises[-3:], rounds, seed, LOCAL_CLIP, "local")
    _table("DP-SGD noise multiplier", "epsilon per record", rounds, local)
    return {"dp": rows, "dp_clean_accuracy": round(clean, 4), "dp_batchnorm_accuracy": round(bn, 4), "dp_clip": clip,
            "dp_local": local, "dp_local_clip": LOCAL_CLIP}


def part_secure(seed: int) -> dict:
    fed = FederationConfig(num_clients=8, rounds=1, min_train_nodes=8, bn_recalibration="off")
    spec = RunSpec(DataConfig(), fed, seed, preset("mobilenet_tiny").to_dict())
    run_federation(spec)  # warm-up: data, model templates
    plain = run_federation(spec)
    a = plain.arrays.to_torch_state_dict()
    floats = sum(v.numel() for v in a.values() if v.is_floating_point())
    print(f"  one round, 8 clients, {floats} floating-point values per model")
    print("| aggregation | max abs diff to plain | download B | upload B | seconds of the round's exchanges |")
    print("|---|---|---|---|---|")
    print(f"| plain FedAvg | 0 | {plain.download_bytes} | {plain.upload_bytes} | {plain.rounds[0].seconds:.2f} |")
    out: dict = {}
    for protocol, name in (("secagg+", "secagg"), ("ckks", "ckks")):
        secure = run_federation(replace(spec, privacy=PrivacyConfig(secure_aggregation=protocol)))
        b = secure.arrays.to_torch_state_dict()
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
        seconds = secure.rounds[0].seconds
        print(f"| {protocol} | {diff:.3g} | {secure.download_bytes} | {secure.upload_bytes} | {seconds:.2f} |")
        out[f"{name}_max_abs_diff"] = diff
        out[f"{name}_upload_ratio"] = round(secure.upload_bytes / plain.upload_bytes, 4)
        out[name] = {"download_bytes": secure.download_bytes, "upload_bytes": secure.upload_bytes,
                     "seconds": round(seconds, 3), "bytes_by_type": secure.bytes_by_type, **secure.secure}
    out["plain"] = {"download_bytes": plain.download_bytes, "upload_bytes": plain.upload_bytes,
                    "seconds": round(plain.rounds[0].seconds, 3)}
    print()
    for name in ("secagg", "ckks"):
        print(f"  {name} bytes by exchange: {out[name]['bytes_by_type']}")
    print()
    return out


def run(rule: str, attack: str, rounds: int, seed: int, strength: float = 0.0,
        bucket: int = 1) -> tuple[float, list[int], float, list[float]]:
    fed = FederationConfig(num_clients=8, rounds=rounds, strategy=rule, strategy_options=dict(RULES[rule]),
                           min_train_nodes=8, attack=attack, attack_fraction=0.25 if attack != "none" else 0.0,
                           attack_strength=strength if attack != "none" else 0.0,
                           bucket_size=bucket if rule not in ("fedavg", "oracle") else 1)
    fed.check()
    spec = RunSpec(DataConfig(), fed, seed, preset("mobilenet_tiny").to_dict())
    start = time.perf_counter()
    outcome = run_federation(spec)
    return (outcome.accuracy, [r.attackers for r in outcome.rounds], time.perf_counter() - start,
            [round(r.accuracy, 4) for r in outcome.rounds])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3 rounds; two noise levels; FedAvg, Krum and FedMedian only")
    p.add_argument("--part", choices=("all", "dp", "secure", "attack"), default="all")
    p.add_argument("--clip", type=float, default=0.5, help="clipping norm of part (a)")
    p.add_argument("--rules", default="", help="part (c): comma-separated rules (default: all of RULES)")
    p.add_argument("--attacks", default="", help="part (c): comma-separated attacks, each NAME or NAME:STRENGTH "
                   "(default: all at their default strengths; the clean run comes first unless --no-clean)")
    p.add_argument("--option", action="append", default=[], metavar="RULE.KEY=VALUE",
                   help="part (c): a rule's option instead of the default in RULES, e.g. "
                        "multikrum.num_nodes_to_select=6 (repeatable)")
    p.add_argument("--no-clean", action="store_true", help="part (c): skip the clean runs (e.g. for the oracle, "
                   "whose clean run is FedAvg's)")
    p.add_argument("--bucket", type=int, default=1, help="part (c): federation.bucket_size of the robust rules "
                   "(1: no bucketing; FedAvg is never bucketed: it would not change)")
    args = p.parse_args()
    rounds = 3 if args.quick else args.rounds
    out: dict = {}
    if args.part in ("all", "dp"):
        out.update(part_dp(QUICK_NOISE if args.quick else NOISE, rounds, args.seed, args.clip))
    if args.part in ("all", "secure"):
        out.update(part_secure(args.seed))
    if args.part in ("all", "attack"):
        for item in args.option:
            key, _, value = item.partition("=")
            rule, _, name = key.partition(".")
            if rule not in RULES or not name or not value:
                p.error(f"--option: expected RULE.KEY=VALUE with RULE in {list(RULES)}, got {item!r}")
            RULES[rule][name] = float(value)
        rules = tuple(args.rules.split(",")) if args.rules else QUICK_RULES if args.quick else tuple(RULES)
        unknown = [r for r in rules if r not in RULES]
        if unknown:
            p.error(f"--rules: unknown {unknown}; expected names from {list(RULES)}")
        attacks = [(a.partition(":")[0], float(a.partition(":")[2] or 0)) for a in args.attacks.split(",") if a] \
            or [(a, 0.0) for a in ATTACKS]
        if any(a not in ATTACKS for a, _ in attacks):
            p.error(f"--attacks: expected names from {list(ATTACKS)}, got {args.attacks!r}")
        out.update(part_attack(rules, rounds, args.seed, attacks, args.bucket, clean=not args.no_clean))
    print(json.dumps(out))


def part_attack(rules: tuple[str, ...], rounds: int, seed: int,
                attacks: list[tuple[str, float]] | None = None, bucket: int = 1, clean: bool = True) -> dict:
    """Each rule clean (unless ``clean`` is False) and under each (attack, strength) (strength 0: the
    attack's default). ``curves`` holds every run's held-out accuracy after each round."""
    table: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    attackers: dict[str, list[int]] = {}
    failed: dict[str, str] = {}  # "attack/rule" -> why the run stopped (its accuracy is null)
    for attack, strength in ([("none", 0.0)] if clean else []) + list(attacks or [(a, 0.0) for a in ATTACKS]):
        name = f"{attack}:{strength:g}" if strength else attack
        table[name], curves[name] = {}, {}
        for rule in rules:
            try:
                acc, seen, seconds, curve = run(rule, attack, rounds, seed, strength, bucket)
            except FederationError as exc:  # e.g. a client's training diverged under a boosted update
                table[name][rule], curves[name][rule] = None, []
                failed[f"{name}/{rule}"] = str(exc)
                print(f"  {name:<12} {rule:<14} failed: {exc}", flush=True)
                continue
            table[name][rule], curves[name][rule] = round(acc, 4), curve
            attackers[name] = seen
            tail = curve[-5:]
            print(f"  {name:<12} {rule:<14} accuracy {acc:.4f}  mean of the last {len(tail)} rounds "
                  f"{sum(tail) / len(tail):.4f}  attackers per round {seen}  {seconds:5.1f} s", flush=True)
    print()
    buckets = f", rules on buckets of {bucket}" if bucket > 1 else ""
    print(f"| attack (2 of 8 clients){buckets} | " + " | ".join(rules) + " |")
    print("|---|" + "---|" * len(rules))
    for attack, row in table.items():
        best = max((a for a in row.values() if a is not None), default=None)
        cells = ["failed" if row[r] is None else f"**{row[r]:.4f}**" if row[r] == best else f"{row[r]:.4f}"
                 for r in rules]
        print(f"| {'clean' if attack == 'none' else attack} | " + " | ".join(cells) + " |")
    clean_row = table.pop("none", {})
    return {"clean_accuracy": clean_row.get("fedavg"), "clean": clean_row, "attack": table, "rounds": rounds,
            "bucket_size": bucket, "attackers_per_round": {a: attackers.get(a, []) for a in table}, "curves": curves,
            "failed": failed}


if __name__ == "__main__":
    main()
