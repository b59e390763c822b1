"""One trial: sample a candidate, cost it, train it federatedly, store everything."""

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

from fednas._cores import LocalWorkers
from fednas.config import StudyConfig
from fednas.cost import measure
from fednas.fl import FederatedData, FederationError, RunSpec, run_federation
from fednas.fl._spec import build_run_model
from fednas.search._progress import Progress
from fednas.search._recovery import WORKER_ATTR, beating, this_worker
from fednas.train import TrainingDiverged
from search_spaces import SearchSpace, domain_from_config, with_compression

__all__ = ["CandidateError", "TrialFailed", "TrialRunner", "metric_names"]



class CandidateError(RuntimeError):
    """The sampled architecture cannot be built or costed for this data."""


# Failures that end one trial (stored as FAIL with the reason) but not the search.
TrialFailed = (TrainingDiverged, FederationError, CandidateError)


def metric_names() -> tuple[str, ...]:
    return ("accuracy", "macs", "params", "bytes", "comm_bytes", "upload_bytes", "download_bytes", "model_bytes",
            "accuracy_int8")


INT8_OBJECTIVES = ("model_bytes", "accuracy_int8")
CALIBRATION_SAMPLES = 256


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
        self._claim_slot(trial)
        self.progress.trial_started(trial.number)
        labels = self.space.suggest(trial, self.overrides)
        arch = self.space.decode(labels)
        compression = self.space.settings(labels)
        trial.set_user_attr("labels", labels)
        trial.set_user_attr("arch", arch.to_dict())
        self._check_duplicate(trial, labels)
        train = self.data.train
        try:
            model = build_run_model(arch, compression, num_classes=train.num_classes, in_channels=train.in_channels)
            cost = measure(model, in_channels=train.in_channels, resolution=train.resolution)
        except (RuntimeError, ValueError) as exc:
            reason = f"cannot build the model for {train.in_channels}x{train.resolution}x{train.resolution} inputs: {exc}"
            trial.set_user_attr("fail_reason", reason.splitlines()[0])
            raise CandidateError(reason) from exc
        static = {"macs": cost.macs, "params": cost.params, "bytes": cost.bytes}
        for k, v in static.items():
            trial.set_user_attr(k, v)
        self._check_static(trial, static)
        spec = RunSpec(self.config.data, self.config.federation, self.config.study.seed, arch.to_dict(), compression)
        try:
            outcome = run_federation(spec, on_round=self._on_round)
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        if outcome.prune_masks:
            model, static = self._pruned(trial, model, static, outcome.prune_masks)
        metrics: dict[str, Any] = {
            **static,
            "accuracy": outcome.accuracy,
            "comm_bytes": outcome.comm_bytes,
            "upload_bytes": outcome.upload_bytes,
            "download_bytes": outcome.download_bytes,
        }
        for k in ("accuracy", "comm_bytes", "upload_bytes", "download_bytes"):
            trial.set_user_attr(k, metrics[k])
        trial.set_user_attr("rounds", [asdict(r) for r in outcome.rounds])
        trial.set_user_attr("client_failures", sum(r.failures for r in outcome.rounds))
        trial.set_user_attr("client_dropouts", sum(r.dropped for r in outcome.rounds))
        trial.set_user_attr("train_seconds", outcome.seconds)
        # CPU kernels round differently with other thread counts: what reproduces this trial
        trial.set_user_attr("torch_threads", sorted(self.threads_used))
        if any(name in self.config.objectives for name in INT8_OBJECTIVES):
            model.load_state_dict(outcome.arrays.to_torch_state_dict())
            metrics.update(self._int8_metrics(model))
            for k in INT8_OBJECTIVES:
                trial.set_user_attr(k, metrics[k])
        self._set_constraints(trial, metrics)
        self._store_weights(trial, outcome.arrays.to_torch_state_dict())
        return tuple(float(metrics[name]) for name in self.config.objectives)

    def _pruned(self, trial: optuna.Trial, model: torch.nn.Module, static: dict[str, int],
                masks: str) -> tuple[torch.nn.Module, dict[str, int]]:
        """The final, sped-up structure of a run the server pruned, and its re-measured cost.

        ``macs``/``params``/``bytes`` (attributes and objective values) become those of the
        pruned model; the costs measured before training stay as ``*_before_pruning``.
        """
        from fednas.compress import apply_channel_masks, decode_channel_masks
        from fednas.fl._pruning import example_input

        train = self.data.train
        pruned = apply_channel_masks(model, decode_channel_masks(masks),
                                     example_input(train.in_channels, train.resolution))
        cost = measure(pruned, in_channels=train.in_channels, resolution=train.resolution)
        after = {"macs": cost.macs, "params": cost.params, "bytes": cost.bytes}
        for k, v in static.items():
            trial.set_user_attr(f"{k}_before_pruning", v)
        for k, v in after.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("prune_masks", masks)
        return pruned, after

    def _int8_metrics(self, model: torch.nn.Module) -> dict[str, Any]:
        """Post-training int8 of the final model: calibrated on training data, scored on the held-out split."""
        from fednas.compress import evaluate_int8, quantize_int8

        calibration = self.data.train.x[:CALIBRATION_SAMPLES]
        q = quantize_int8(model, calibration)
        _, acc = evaluate_int8(q, self.data.test.x, self.data.test.y)
        return {"model_bytes": q.bytes, "accuracy_int8": acc}

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
