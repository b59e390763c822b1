"""From-scratch search against supernet search, on one space and one dataset, in one run.

Three studies evaluate the same number of candidates (``--candidates``) of the quickstart's
space (``--config``), with two objectives, held-out accuracy (max) and MACs (min):

* scratch: NSGA-II, every candidate trained from scratch by the whole federation;
* halving: from scratch with successive halving over rounds (``study.fidelity``), when this
  version has it (otherwise reported as not run);
* supernet: ``study.mode = "supernet"``: one supernet trained by the federation, its subnets
  scored with inherited weights and pooled batch-norm statistics, the front fine-tuned.

Printed: client-epochs spent (sum over nodes of local epochs; the supernet's training and
the front's fine-tuning included), wall time, the hypervolume of each study's (accuracy,
MACs) front against the reference point (accuracy 0, MACs = ``--ref-macs``), normalized so
the whole box is 1, and Kendall's tau between inherited and from-scratch accuracy on the
architectures the scratch study trained (at least 10). The supernet's front is measured
with the accuracy one would deploy: fine-tuned where phase 3 ran, inherited elsewhere (the
inherited-only hypervolume is printed too). Then the fine-tuned front members are trained
from scratch with the scratch study's settings, for the gap between the two.

Last line: one JSON object with ``client_epochs_ratio`` (scratch / supernet), ``hv_scratch``,
``hv_halving``, ``hv_supernet``, ``kendall_tau`` and the rest of the figures.

    python benchmarks/supernet.py --quick          # 12 candidates, under 10 minutes on 2 cores
    python benchmarks/supernet.py --candidates 50  # the full run
    python benchmarks/supernet.py --fashion        # Fashion-MNIST (Debian's dataset-fashion-mnist)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _config(args: argparse.Namespace, name: str, folder: Path, changes: dict[str, dict[str, Any]]) -> Any:
    from fednas.config import parse_config

    doc = tomllib.loads(Path(args.config).read_text())
    doc["objectives"] = {"accuracy": "maximize", "macs": "minimize"}
    doc.setdefault("study", {}).update(name=name, trials=args.candidates, storage=f"sqlite:///{folder / name}.db",
                                       seed=args.seed)
    if args.fashion:
        doc["data"] = {**doc.get("data", {}), "source": "idx", "path": str(FASHION), "limit": args.limit}
    elif args.limit:
        doc.setdefault("data", {})["limit"] = args.limit
    for section, values in changes.items():
        doc.setdefault(section, {}).update(values)
    return parse_config(doc, source=str(folder / f"{name}.toml"))


def _hv(points: list[tuple[float, float]], ref_macs: float) -> float:
    """Hypervolume of (accuracy, MACs) points in the box accuracy [0, 1] x MACs [0, ref_macs], normalized to 1."""
    import numpy as np

    from fednas.study import hypervolume

    losses = np.array([[1.0 - a, m / ref_macs] for a, m in points if m <= ref_macs], dtype=float)
    return hypervolume(losses, [1.0, 1.0]) if len(losses) else 0.0


def _front_points(view: Any, key: str = "accuracy") -> list[tuple[float, float]]:
    return [(float(t.metrics.get(key, t.objectives["accuracy"])), float(t.metrics["macs"])) for t in view.front()]


def _search(config: Any) -> tuple[Any, float]:
    from fednas.search import run_search
    from fednas.study import read_study

    start = time.perf_counter()
    run_search(config, progress=False)
    return read_study(config.storage, config.study.name), time.perf_counter() - start


def _kendall(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "studies" / "quickstart.toml"))
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="12 candidates (under 10 minutes on 2 cores)")
    p.add_argument("--supernet-rounds", type=int, default=24)
    p.add_argument("--finetune-rounds", type=int, default=2)
    p.add_argument("--ref-macs", type=float, default=2_000_000, help="the reference point's MACs")
    p.add_argument("--fashion", action="store_true", help="Fashion-MNIST from Debian's idx files")
    p.add_argument("--limit", type=int, default=0, help="training+test images to use (0: the source's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.candidates = 12
    if args.fashion and not args.limit:
        args.limit = 6000
    from fednas import pipeline
    from fednas.config import FederationConfig
    from fednas.fl import SubnetEvaluator, federated_data
    from fednas.search._supernet import supernet_spec
    from fednas.supernet import Supernet
    from fednas.study import FINETUNE_ATTR, SUPERNET_ATTR
    from search_spaces import arch_from_dict

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scratch_cfg = _config(args, "scratch", folder, {"study": {"sampler": "nsga2"}})
        fed: FederationConfig = scratch_cfg.federation
        print(f"space {args.config}, data {scratch_cfg.data.source} (limit {scratch_cfg.data.limit or 'none'}), "
              f"{fed.num_clients} clients, {fed.rounds} rounds per scratch candidate, {args.candidates} candidates "
              f"per study; objectives accuracy (max), MACs (min); hypervolume reference: accuracy 0, MACs "
              f"{args.ref_macs:,.0f}")

        view_a, sec_a = _search(scratch_cfg)
        epochs_a = sum(t.attrs.get("client_epochs", 0) for t in view_a.records)
        hv_a = _hv(_front_points(view_a), args.ref_macs)
        print(f"(a) scratch  : {len(view_a.trials)} trained, {epochs_a:,} client-epochs, {sec_a:,.0f} s, HV {hv_a:.4f}")

        from fednas.config import StudySection

        halving = "fidelity" in StudySection.__dataclass_fields__
        hv_b: float | None = None
        if halving:
            view_b, sec_b = _search(_config(args, "halving", folder, {"study": {"sampler": "nsga2",
                                                                                "fidelity": "halving"}}))
            epochs_b = sum(t.attrs.get("client_epochs", 0) for t in view_b.records)
            hv_b = _hv(_front_points(view_b), args.ref_macs)
            print(f"(b) halving  : {len(view_b.trials)} completed, {epochs_b:,} client-epochs, {sec_b:,.0f} s, "
                  f"HV {hv_b:.4f}")
            out["client_epochs_halving"] = epochs_b
        else:
            print("(b) halving  : not run (study.fidelity is not in this version)")

        sup_cfg = _config(args, "supernet", folder, {
            "study": {"sampler": "nsga2", "mode": "supernet"},
            "supernet": {"rounds": args.supernet_rounds, "finetune_rounds": args.finetune_rounds, "eval_every": 6}})
        view_c, sec_c = _search(sup_cfg)
        rounds = view_c.supernet["rounds"]
        import optuna

        finetuned = optuna.load_study(study_name="supernet", storage=sup_cfg.storage).user_attrs.get(FINETUNE_ATTR, {})
        epochs_train = sum(r["client_epochs"] for r in rounds)
        epochs_ft = sum(v.get("client_epochs", 0) for v in finetuned.values())
        epochs_c = epochs_train + epochs_ft
        deploy = [(float(t.metrics.get("accuracy_finetuned", t.objectives["accuracy"])), float(t.metrics["macs"]))
                  for t in view_c.trials]
        from fednas.study import pareto_mask

        mask = pareto_mask([[a, m] for a, m in deploy], ["maximize", "minimize"])
        hv_c = _hv([p for p, keep in zip(deploy, mask) if keep], args.ref_macs)
        hv_c_inh = _hv(_front_points(view_c), args.ref_macs)
        last = rounds[-1]
        print(f"(c) supernet : {args.supernet_rounds} supernet rounds ({epochs_train:,} client-epochs; largest subnet "
              f"{last['accuracy_largest']:.4f}, smallest {last['accuracy_smallest']:.4f}), {len(view_c.trials)} "
              f"subnets scored, {len(finetuned)} fine-tuned for {args.finetune_rounds} rounds ({epochs_ft:,} "
              f"client-epochs); {sec_c:,.0f} s; HV {hv_c:.4f} (inherited accuracy only: {hv_c_inh:.4f})")

        # Kendall's tau: the scratch study's architectures, scored with the supernet's weights
        data = federated_data(sup_cfg.data, sup_cfg.federation.num_clients, sup_cfg.study.seed)
        spec = supernet_spec(sup_cfg)
        from safetensors.numpy import load

        store = Path(view_c.artifacts_dir) / view_c.supernet["artifact"]
        sup = Supernet(arch_from_dict(spec.arch), data.train.num_classes, data.train.in_channels,
                       dict(load(store.read_bytes())))
        scratch_acc, inherited = [], []
        t0 = time.perf_counter()
        with SubnetEvaluator(spec, sup) as ev:
            for t in view_a.trials:
                arch = arch_from_dict(t.arch)
                score = ev.evaluate(arch, int(t.metrics["macs"]), int(t.metrics["params"]))
                scratch_acc.append(t.objectives["accuracy"])
                inherited.append(score.accuracy)
        tau = _kendall(scratch_acc, inherited)
        print(f"kendall tau (inherited vs from-scratch accuracy, {len(scratch_acc)} architectures): {tau:.3f} "
              f"({time.perf_counter() - t0:.0f} s; mean accuracy scratch {sum(scratch_acc) / len(scratch_acc):.4f}, "
              f"inherited {sum(inherited) / len(inherited):.4f})")

        # the fine-tuned front against the same architectures trained from scratch
        gaps = []
        for number, ft in sorted(finetuned.items(), key=lambda kv: int(kv[0])):
            if "accuracy" not in ft:
                continue
            t = next(r for r in view_c.trials if r.number == int(number))
            cand = pipeline.Candidate.of(t.arch, t.labels)
            result = pipeline.run_candidate(cand, scratch_cfg, federated_data(
                scratch_cfg.data, scratch_cfg.federation.num_clients, scratch_cfg.study.seed))
            gaps.append(result.metrics["accuracy"] - ft["accuracy"])
            print(f"  trial {number}: fine-tuned {ft['accuracy']:.4f}, inherited {t.objectives['accuracy']:.4f}, "
                  f"from scratch ({fed.rounds} rounds) {result.metrics['accuracy']:.4f}")
        if gaps:
            print(f"fine-tuned front vs from scratch: mean gap {100 * sum(gaps) / len(gaps):+.2f} points, worst "
                  f"{100 * max(gaps):+.2f} points (positive: scratch better)")
        out.update({
            "client_epochs_ratio": round(epochs_a / epochs_c, 3), "hv_scratch": round(hv_a, 4),
            "hv_halving": None if hv_b is None else round(hv_b, 4), "hv_supernet": round(hv_c, 4),
            "hv_supernet_inherited": round(hv_c_inh, 4), "kendall_tau": round(tau, 3),
            "client_epochs_scratch": epochs_a, "client_epochs_supernet": epochs_c, "seconds_scratch": round(sec_a),
            "seconds_supernet": round(sec_c), "candidates": args.candidates,
            "finetune_gap_points_mean": round(100 * sum(gaps) / len(gaps), 2) if gaps else None,
            "finetune_gap_points_worst": round(100 * max(gaps), 2) if gaps else None,
            "data": scratch_cfg.data.source,
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
