"""A supernet study (``study.mode = "supernet"``): train one supernet, search its subnets, fine-tune the front.

Phase 1, ``train_supernet``: the federation trains the space's weight-sharing supernet for
``supernet.rounds`` rounds (``fednas.fl.run_supernet``). After every round the supernet's
weights are stored as an Optuna artifact of the study and the study attribute ``supernet``
records the rounds so far; a killed search resumes from the last stored round with the same
command, and continues exactly as the uninterrupted run would have.

Phase 2, ``SubnetTrialRunner``: each Optuna trial is a subnet of the trained supernet. It
inherits its weights, gets batch-norm statistics pooled from the clients (one round trip,
measured: that is its ``comm_bytes``) and is scored on the held-out split. No client trains.

Phase 3, ``finetune_front``: each member of the final Pareto front (and of each device tier's
front) is fine-tuned by ``supernet.finetune_rounds`` federated rounds from its inherited
weights, on the nodes whose tier can run it. The study attribute ``finetuned`` keeps, per
trial, the fine-tuned accuracy, bytes, client-epochs and weights; ``fednas export`` then uses
those weights. Each fine-tuned trial is stored as it finishes, so a killed phase 3 resumes
where it stopped.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact

from fednas import pipeline
from fednas._interrupt import checkpoint
from fednas.config import ConfigError, StudyConfig
from fednas.fl import FederationError, RunSpec, SubnetEvaluator, run_federation, run_supernet, supernet_section
from fednas.fl._supernet import SupernetRound, supernet_of
from fednas.search._objective import TrialRunner
from fednas.search._progress import Progress
from fednas.study import FINETUNE_ATTR, SUPERNET_ATTR, read_study, tier_fronts, weights_path
from fednas.supernet import Supernet, admitting_nodes

__all__ = ["SubnetTrialRunner", "finetune_front", "supernet_spec", "train_supernet"]


def supernet_spec(config: StudyConfig) -> RunSpec:
    """The run spec of the study's supernet (its architecture is the space's largest member)."""
    spec = RunSpec(config.data, config.federation, config.study.seed, {}, supernet=supernet_section(config))
    return replace(spec, arch=supernet_of(spec)[2].to_dict())


def _save(state: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file(dict(state), str(path), metadata=metadata)


def _load_supernet(spec: RunSpec, store: Any, artifact: str, num_classes: int, in_channels: int) -> Supernet:
    from safetensors.numpy import load

    with store.open_reader(artifact) as f:
        state = load(f.read())
    return Supernet(supernet_of(spec)[2], num_classes, in_channels, dict(state))


def _nan_to_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _round_of(d: dict[str, Any]) -> SupernetRound:
    return SupernetRound(**{k: (math.nan if v is None else v) for k, v in d.items()})


def train_supernet(study: optuna.Study, config: StudyConfig, store: Any, data: Any, reporter: Progress) -> Supernet:
    """Phase 1: train the supernet, or resume it from its last stored round, or load the finished one.

    Raises:
        ConfigError: the study's stored supernet is of another space, or was trained for more
            rounds than ``supernet.rounds``, or subnets were evaluated on an earlier supernet.
    """
    spec = supernet_spec(config)
    train = data.train
    target = config.supernet.rounds
    stored = dict(study.user_attrs.get(SUPERNET_ATTR) or {})
    start = None
    if stored:
        if stored.get("arch") != spec.arch:
            raise ConfigError(f"space: study {config.study.name!r} trained its supernet for another space; use "
                              "another --study name")
        done = [_round_of(r) for r in stored.get("rounds", [])]
        if len(done) > target:
            raise ConfigError(f"supernet.rounds: the study's supernet was trained for {len(done)} rounds; got "
                              f"{target} (use another --study name)")
        supernet = _load_supernet(spec, store, stored["artifact"], train.num_classes, train.in_channels)
        if len(done) == target:
            return supernet
        evaluated = [t for t in study.get_trials(deepcopy=False) if "supernet_round" in t.user_attrs]
        if evaluated:
            raise ConfigError(f"supernet.rounds: {len(evaluated)} subnets were evaluated on the supernet of round "
                              f"{len(done)}; training it further would mix two supernets (use another --study name)")
        start = (supernet, done)
        reporter.note(f"supernet: resuming after round {len(done)} of {target}")

    def on_round(record: SupernetRound, supernet: Supernet) -> None:
        history.append(_nan_to_none(asdict(record)))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"supernet-round-{record.round}.safetensors"
            _save(supernet.state, path, {"arch": json.dumps(spec.arch), "round": str(record.round)})
            artifact = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study,
                                       mimetype="application/octet-stream")
        previous = study.user_attrs.get(SUPERNET_ATTR, {}).get("artifact")
        study.set_user_attr(SUPERNET_ATTR, {"arch": spec.arch, "rounds": history, "artifact": artifact,
                                            "rounds_target": target})
        if previous:
            store.remove(previous)  # only the newest round is kept
        acc = "" if math.isnan(record.accuracy_largest) else (
            f", largest {record.accuracy_largest:.3f} / smallest {record.accuracy_smallest:.3f}")
        reporter.note(f"supernet round {record.round}/{target}: {record.subnets} subnets trained, "
                      f"{record.download_bytes + record.upload_bytes:,} bytes{acc}")

    history = [_nan_to_none(asdict(r)) for r in (start[1] if start else [])]
    return run_supernet(spec, start=start, on_round=on_round).supernet


class SubnetTrialRunner(TrialRunner):
    """The Optuna objective of a supernet study: inherit, pool batch-norm statistics, score. No training."""

    def __init__(self, *args: Any, evaluator: SubnetEvaluator, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.evaluator = evaluator
        self.tiers = self.config.federation.tier_list()

    def _score(self, trial: optuna.Trial, candidate: pipeline.Candidate,
               built: pipeline.Built) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        static = built.static
        runs_on = [t.name for t in self.tiers if t.admits(static["macs"], static["params"])]
        if self.tiers and not runs_on:
            why = "no device tier can run it: " + "; ".join(t.describe() for t in self.tiers)
            trial.set_user_attr("pruned_reason", why)
            raise optuna.TrialPruned(why)
        try:
            score = self.evaluator.evaluate(candidate.arch, static["macs"], static["params"])
        except FederationError as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        # per node asked: one device's cost of getting this subnet ready (its weights down, its moments up)
        down, up = round(score.download_bytes / score.nodes), round(score.upload_bytes / score.nodes)
        metrics: dict[str, Any] = {**static, "accuracy": score.accuracy, "accuracy_inherited": score.accuracy,
                                   "comm_bytes": down + up, "download_bytes": down, "upload_bytes": up}
        if pipeline.needs_post(self.config):
            metrics.update(pipeline.post_metrics(score.model, candidate, self.data))
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        if built.latency is not None:
            trial.set_user_attr("latency", built.latency)
        trial.set_user_attr("mode", "supernet")
        trial.set_user_attr("supernet_round", self.config.supernet.rounds)
        trial.set_user_attr("tiers", runs_on)
        trial.set_user_attr("bn_nodes", score.nodes)
        trial.set_user_attr("bn_exchange_bytes", score.download_bytes + score.upload_bytes)
        trial.set_user_attr("client_epochs", 0)
        return metrics, score.model.state_dict()


def finetune_front(study: optuna.Study, config: StudyConfig, store: Any, reporter: Progress) -> int:
    """Phase 3: fine-tune the members of the final fronts (overall and per tier) not fine-tuned yet.

    Returns how many were fine-tuned now.
    """
    from safetensors.torch import load_file, save_file

    rounds = config.supernet.finetune_rounds
    if not rounds:
        return 0
    view = read_study(config.storage, config.study.name)
    members = {t.number: t for t in view.front()}
    for front in tier_fronts(view).values():
        members.update({t.number: t for t in front})
    done = dict(study.user_attrs.get(FINETUNE_ATTR) or {})
    tiers = config.federation.tier_list()
    count = 0
    for number in sorted(members):
        if str(number) in done:
            continue
        checkpoint()
        t = members[number]
        candidate = pipeline.Candidate.of(t.arch, t.labels)
        macs, params = int(t.metrics["macs"]), int(t.metrics["params"])
        ids = admitting_nodes([1001 + i for i in range(config.federation.num_clients)],  # the in-process grid's
                              tiers, macs, params)
        fed = replace(config.federation, rounds=rounds, min_train_nodes=min(config.federation.min_train_nodes,
                                                                            len(ids)))
        spec = candidate.spec(config.data, fed, config.study.seed)
        initial = load_file(str(weights_path(view, t)))
        try:
            outcome = run_federation(spec, initial=initial, nodes=ids)
        except FederationError as exc:
            done[str(number)] = {"error": f"{type(exc).__name__}: {exc}"}
            study.set_user_attr(FINETUNE_ATTR, done)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{number}-finetuned.safetensors"
            save_file({k: v.contiguous() for k, v in outcome.arrays.to_torch_state_dict().items()}, str(path),
                      metadata={"arch": json.dumps(t.arch)})
            artifact = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study,
                                       mimetype="application/octet-stream")
        done[str(number)] = {
            "accuracy": outcome.accuracy, "rounds": rounds, "nodes": len(ids),
            "comm_bytes": outcome.comm_bytes, "download_bytes": outcome.download_bytes,
            "upload_bytes": outcome.upload_bytes, "seconds": outcome.seconds, "weights_artifact": artifact,
            "client_epochs": sum(r.replies for r in outcome.rounds) * fed.local_epochs,
        }
        study.set_user_attr(FINETUNE_ATTR, done)
        count += 1
        reporter.note(f"fine-tuned trial {number} for {rounds} rounds: accuracy {t.metrics.get('accuracy', 0):.4f} "
                      f"inherited -> {outcome.accuracy:.4f}")
    return count
