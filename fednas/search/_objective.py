"""One trial: sample a candidate, run it through the candidate pipeline, store everything.

The pipeline (``fednas.pipeline``) builds, costs, federates and scores the candidate; this
module adds what only a search does between those steps: claiming a slot among several
workers, skipping duplicates and candidates over a static bound, and storing the trial's
attributes, constraint values and weights in Optuna.
"""

from __future__ import annotations

import json
import signal
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact

from fednas import pipeline
from fednas._cores import LocalWorkers
from fednas.config import StudyConfig
from fednas.fl import FederatedData, FederationError
from fednas.objectives import objective_names
from fednas.pipeline import Candidate, CandidateError
from fednas.search._progress import Progress
from fednas.search._recovery import WORKER_ATTR, beating, this_worker
from fednas.train import TrainingDiverged, resolve_device
from search_spaces import SearchSpace, domain_from_config, with_compression

__all__ = ["CandidateError", "TrialFailed", "TrialRunner", "metric_names"]

# Failures that end one trial (stored as FAIL with the reason) but not the search.
TrialFailed = (TrainingDiverged, FederationError, CandidateError)


def metric_names() -> tuple[str, ...]:
    """The metrics a trial stores as user attributes: every registered objective."""
    return objective_names()


class TrialRunner:
    """The Optuna objective of a fednas study."""

    def __init__(
        self,
        config: StudyConfig,
        space: SearchSpace,
        data: FederatedData,
        store: optuna.artifacts.FileSystemArtifactStore,
        progress: Progress,
        cores: LocalWorkers | None = None,
    ) -> None:
        self.config = config
        self.space = with_compression(space)
        self.data = data
        self.store = store
        self.progress = progress
        self.overrides = {k: domain_from_config(v, k) for k, v in config.space.labels.items()}
        self.interrupted: int | None = None  # number of the trial a Ctrl-C/SIGTERM stopped
        self.cores = cores  # this machine's cores, shared with the other workers on it
        self.threads_used: set[int] = set()  # torch thread counts of the current trial

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            with beating(trial, self.config.study.heartbeat):
                return self._run(trial)
        except KeyboardInterrupt as exc:  # also while building or costing, not only while training
            self.interrupted = trial.number
            how = "SIGTERM" if getattr(exc, "signum", None) == signal.SIGTERM else "Ctrl-C"
            trial.set_user_attr("fail_reason", f"interrupted ({how})")
            raise

    def _on_round(self, record: Any) -> None:
        if self.cores is not None:  # workers may have started or stopped since the last round
            self.threads_used.add(self.cores.share())
        self.progress.round_done(record)

    def _run(self, trial: optuna.Trial) -> tuple[float, ...]:
        self.threads_used = {self.cores.share()} if self.cores is not None else {torch.get_num_threads()}
        trial.set_user_attr(WORKER_ATTR, this_worker())
        trial.set_user_attr("device", str(resolve_device(self.config.federation.device)))
        self._claim_slot(trial)
        self.progress.trial_started(trial.number)
        labels = self.space.suggest(trial, self.overrides)
        candidate = Candidate(self.space.decode(labels), self.space.settings(labels), labels)
        trial.set_user_attr("labels", labels)
        trial.set_user_attr("arch", candidate.arch.to_dict())
        self._check_duplicate(trial, labels)
        try:
            built = pipeline.build(candidate, self.data, pipeline.latency_config(self.config))
        except CandidateError as exc:
            trial.set_user_attr("fail_reason", str(exc).splitlines()[0])
            raise
        for k, v in built.static.items():
            trial.set_user_attr(k, v)
        if built.latency is not None:
            trial.set_user_attr("latency", built.latency)
        self._check_static(trial, built.static)
        metrics, state = self._score(trial, candidate, built)
        self._set_constraints(trial, metrics)
        self._store_weights(trial, state)
        return tuple(float(metrics[name]) for name in self.config.objectives)

    def _score(self, trial: optuna.Trial, candidate: Candidate,
               built: pipeline.Built) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Train and score the candidate (from scratch, by a whole federation); its metrics and final weights."""
        try:
            outcome = pipeline.federate(candidate, self.config, on_round=self._on_round)
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        int8 = pipeline.needs_post(self.config)
        result = pipeline.finish(candidate, built, outcome, self.data, int8=int8,
                                 latency=pipeline.latency_config(self.config))
        self._store_result(trial, result, int8)
        return result.metrics, result.state

    def _store_result(self, trial: optuna.Trial, result: pipeline.CandidateResult, int8: bool) -> None:
        """The trial's user attributes: metrics, per-round records, pruning, what reproduces it.

        For a run the server pruned, ``macs``/``params``/``bytes`` are those of the pruned
        model and the costs measured before training stay as ``*_before_pruning``; unstructured
        pruning stores the ``sparsity`` reached, block pruning ``pruned_blocks`` and ``pruned_depths``.
        """
        outcome, metrics = result.outcome, result.metrics
        if outcome.prune_masks:
            for k, v in result.before_pruning.items():
                trial.set_user_attr(f"{k}_before_pruning", v)
            for k in ("macs", "params", "bytes", "latency_ms", "latency"):
                if k in metrics:
                    trial.set_user_attr(k, metrics[k])
            trial.set_user_attr("prune_masks", outcome.prune_masks)
        for k in pipeline.PRUNING_METRICS:  # unstructured sparsity, or the blocks removed and the depths left
            if k in metrics:
                trial.set_user_attr(k, metrics[k])
        for k in ("accuracy", "comm_bytes", "upload_bytes", "download_bytes"):
            trial.set_user_attr(k, metrics[k])
        if outcome.privacy:  # central DP: epsilon is a metric; how it was spent is kept beside it
            trial.set_user_attr("epsilon", metrics["epsilon"])
            trial.set_user_attr("privacy", outcome.privacy)
        if outcome.secure:  # secure aggregation: the protocol and what it cost
            trial.set_user_attr("secure_aggregation", outcome.secure)
        trial.set_user_attr("rounds", [asdict(r) for r in outcome.rounds])
        trial.set_user_attr("client_epochs", sum(r.replies for r in outcome.rounds) * self.config.federation.local_epochs)
        trial.set_user_attr("client_failures", sum(r.failures for r in outcome.rounds))
        trial.set_user_attr("client_dropouts", sum(r.dropped for r in outcome.rounds))
        trial.set_user_attr("train_seconds", outcome.seconds)
        # CPU kernels round differently with other thread counts: what reproduces this trial
        trial.set_user_attr("torch_threads", sorted(self.threads_used))
        if int8:
            for k in pipeline.POST_METRICS:
                trial.set_user_attr(k, metrics[k])

    def _set_constraints(self, trial: optuna.Trial, metrics: dict[str, Any]) -> None:
        """Optuna constraint values (``Trial.set_constraint``; <= 0 is feasible): value minus bound.

        Optuna 5 samplers (NSGA-II, TPE) and ``Study.best_trials`` read these; the older
        ``constraints_func`` argument is deprecated there.
        """
        for name, bound in self.config.constraints.active().items():
            if name in metrics:
                trial.set_constraint(f"max_{name}", float(metrics[name] - bound))

    def _claim_slot(self, trial: optuna.Trial) -> None:
        """With several workers, only the lowest-numbered running trials fill the remaining slots.

        Two workers that both saw a free slot start two trials; the higher-numbered one
        stops here (PRUNED, "surplus"), so the study does not overshoot its target.
        """
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        trials = trial.study.get_trials(deepcopy=False, states=states)
        complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        running = sorted(t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING)
        slots = max(self.config.study.trials - complete, 0)
        if trial.number not in running[:slots]:
            trial.set_user_attr("pruned_reason", "surplus: other workers are completing the study")
            raise optuna.TrialPruned("surplus trial")

    def _check_duplicate(self, trial: optuna.Trial, labels: dict[str, Any]) -> None:
        """A candidate already trained, or being trained by another worker, is not trained again.

        Runs are deterministic, so a repeat would only reproduce the same numbers. Two
        workers that draw the same candidate at the same moment may both step back; that
        costs an attempt, never a doubled trial.
        """
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        for other in trial.study.get_trials(deepcopy=False, states=states):
            if other.number != trial.number and other.user_attrs.get("labels") == labels:
                trial.set_user_attr("pruned_reason", f"duplicate of trial {other.number}")
                raise optuna.TrialPruned(f"duplicate of trial {other.number}")

    def _check_static(self, trial: optuna.Trial, static: dict[str, int]) -> None:
        """Skip training a candidate whose size already breaks a bound (stored as PRUNED)."""
        broken = [
            f"{name} {static[name]:,} > max_{name} {bound:,}"
            for name, bound in self.config.constraints.active().items()
            if name in static and static[name] > bound
        ]
        if broken:
            self._set_constraints(trial, static)
            trial.set_user_attr("pruned_reason", "; ".join(broken))
            raise optuna.TrialPruned("constraint violated before training: " + "; ".join(broken))

    def _store_weights(self, trial: optuna.Trial, state: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number}.safetensors"
            tensors = {k: v.contiguous() for k, v in state.items()}
            metadata = {"arch": json.dumps(trial.user_attrs["arch"])}
            if trial.user_attrs.get("prune_masks"):
                metadata["prune_masks"] = trial.user_attrs["prune_masks"]
            save_file(tensors, str(path), metadata=metadata)
            artifact_id = upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=trial, mimetype="application/octet-stream"
            )
        trial.set_user_attr("weights_artifact", artifact_id)
