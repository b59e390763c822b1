"""Successive halving over rounds for from-scratch studies (``study.fidelity = "halving"``).

Optuna cannot prune multi-objective trials (``Trial.should_prune`` raises, optuna#3450), so
the brackets use ask/tell. A bracket asks ``study.bracket(rounds)`` trials at once and trains
every candidate to the first rung (``study.rungs``: e.g. 2, 6, 18 rounds with eta = 3). At
each rung the candidates are ranked by non-dominated sorting with crowding distance
(``fednas.study.select_by_rank``) on the objectives known there: accuracy after the rung's
rounds, the static costs, and the bytes sent so far (every candidate at a rung has had the
same rounds); the best ``ceil(n / eta)`` continue from their weights to the next rung, the
others end PRUNED with the rounds they reached (``halving_rounds``) and their per-rung
accuracies (``halving_accuracy``). Candidates that reach the last rung (``federation.rounds``)
end COMPLETE as in a plain study. In this mode ``study.trials`` counts candidates (COMPLETE
plus PRUNED by halving), so a halving study evaluates as many candidates as a plain one.

A bracket's trials are RUNNING together; a killed worker's are failed and enqueued again by
the usual recovery, and the next bracket starts with them.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from fednas import pipeline
from fednas._interrupt import checkpoint
from fednas.fl import ServerOutcome
from fednas.objectives import OBJECTIVES
from fednas.pipeline import Candidate, CandidateError
from fednas.search._objective import TrialFailed, TrialRunner
from fednas.search._progress import objective_text
from fednas.search._recovery import WORKER_ATTR, beating, enqueue_retry, this_worker
from fednas.study import select_by_rank
from fednas.train import resolve_device

__all__ = ["HALVING_ATTR", "HalvingRunner", "count_evaluated", "merge_outcomes"]

HALVING_ATTR = "halving_rounds"  # rounds a candidate reached (COMPLETE: federation.rounds)


@dataclass
class _Member:
    trial: optuna.Trial
    candidate: Candidate
    built: pipeline.Built
    outcomes: list[ServerOutcome] = field(default_factory=list)
    accuracy: dict[int, float] = field(default_factory=dict)
    comm: dict[int, int] = field(default_factory=dict)

    @property
    def state(self) -> dict[str, torch.Tensor] | None:
        return self.outcomes[-1].arrays.to_torch_state_dict() if self.outcomes else None


def merge_outcomes(outcomes: list[ServerOutcome]) -> ServerOutcome:
    """One outcome for a candidate trained in segments: rounds renumbered, bytes and seconds summed."""
    from dataclasses import replace as dc_replace

    last = outcomes[-1]
    rounds, offset = [], 0
    for o in outcomes:
        rounds += [dc_replace(r, round=r.round + offset) for r in o.rounds]
        offset += len(o.rounds)
    merged = ServerOutcome(arrays=last.arrays, rounds=rounds, download_bytes=sum(o.download_bytes for o in outcomes),
                           upload_bytes=sum(o.upload_bytes for o in outcomes), seconds=sum(o.seconds for o in outcomes))
    for o in outcomes:
        for kind, ways in o.bytes_by_type.items():
            into = merged.bytes_by_type.setdefault(kind, {"download_bytes": 0, "upload_bytes": 0})
            for way, n in ways.items():
                into[way] += n
    return merged


def count_evaluated(study: optuna.Study) -> int:
    """Candidates a halving study has evaluated: COMPLETE trials and those halving stopped."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
               if t.state == TrialState.COMPLETE or HALVING_ATTR in t.user_attrs)


@contextlib.contextmanager
def _asking() -> Iterator[None]:
    """``study.ask``/``tell`` without Optuna's warning that heartbeats need ``study.optimize``: brackets beat
    for their asked trials themselves (``beating(asked=True)``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


class HalvingRunner:
    """Runs brackets of successive halving with a ``TrialRunner``'s space, data, storage and checks."""

    def __init__(self, runner: TrialRunner) -> None:
        self.runner = runner
        self.config = runner.config
        self.rungs = self.config.study.rungs(self.config.federation.rounds)
        self.eta = self.config.study.halving_eta
        self.running: list[int] = []  # numbers of this bracket's RUNNING trials (for an interrupt)

    def bracket(self, study: optuna.Study, size: int) -> None:
        """Ask ``size`` trials, train them rung by rung, keep the best 1/eta at each rung, tell every one."""
        r, cfg = self.runner, self.config
        members: list[_Member] = []
        self.running = []
        with contextlib.ExitStack() as beats:
            for _ in range(size):
                checkpoint()
                with _asking():
                    trial = study.ask()
                self.running.append(trial.number)
                beats.enter_context(beating(trial, cfg.study.heartbeat, asked=True))
                trial.set_user_attr("halving_bracket", self.running[0])
                member = self._start(study, trial)
                if member is not None:
                    members.append(member)
            done = 0
            for k, rung in enumerate(self.rungs):
                fed = replace(cfg.federation, rounds=rung - done)
                seg = replace(cfg, federation=fed)
                for m in list(members):
                    r.progress.trial_started(m.trial.number, first_round=done + 1)
                    try:
                        outcome = pipeline.federate(m.candidate, seg, on_round=r._on_round, initial=m.state)
                    except TrialFailed as exc:
                        m.trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
                        self._tell(study, m.trial, TrialState.FAIL, f"{type(exc).__name__}: {exc}")
                        members.remove(m)
                        continue
                    m.outcomes.append(outcome)
                    m.accuracy[rung] = outcome.accuracy
                    m.comm[rung] = merge_outcomes(m.outcomes).comm_bytes
                done = rung
                if k == len(self.rungs) - 1 or not members:
                    break
                keep = max(1, math.ceil(len(members) / self.eta))
                chosen = set(select_by_rank([self._known(m) for m in members], self._directions(), keep))
                for i, m in enumerate(list(members)):
                    if i in chosen:
                        continue
                    self._record(m, rung)
                    why = (f"halving: not among the best {keep} of {len(members)} after {rung} rounds "
                           f"(non-dominated rank, crowding distance)")
                    m.trial.set_user_attr("pruned_reason", why)
                    self._tell(study, m.trial, TrialState.PRUNED, why, evaluated=True)
                members = [m for i, m in enumerate(members) if i in chosen]
            for m in members:
                self._finish(study, m)
        self.running = []

    def _start(self, study: optuna.Study, trial: optuna.Trial) -> _Member | None:
        """Sample, check and cost one candidate; None when it ended already (duplicate, bound, unbuildable)."""
        r = self.runner
        trial.set_user_attr(WORKER_ATTR, this_worker())
        trial.set_user_attr("device", str(resolve_device(self.config.federation.device)))
        labels = r.space.suggest(trial, r.overrides)
        candidate = Candidate(r.space.decode(labels), r.space.settings(labels), labels)
        trial.set_user_attr("labels", labels)
        trial.set_user_attr("arch", candidate.arch.to_dict())
        try:
            r._check_duplicate(trial, labels)
            built = pipeline.build(candidate, r.data, pipeline.latency_config(self.config))
            for k, v in built.static.items():
                trial.set_user_attr(k, v)
            r._check_static(trial, built.static)
        except optuna.TrialPruned as exc:
            self._tell(study, trial, TrialState.PRUNED, str(trial.user_attrs.get("pruned_reason", exc)))
            return None
        except CandidateError as exc:
            trial.set_user_attr("fail_reason", str(exc).splitlines()[0])
            self._tell(study, trial, TrialState.FAIL, str(exc).splitlines()[0])
            return None
        return _Member(trial, candidate, built)

    def _directions(self) -> list[str]:
        return [d for n, d in self.config.objectives.items() if OBJECTIVES[n].phase != "post"]

    def _known(self, m: _Member) -> list[float]:
        """The objectives known after a rung (post-training ones are not): accuracy, static costs, bytes so far."""
        out = []
        for name in self.config.objectives:
            if OBJECTIVES[name].phase == "post":
                continue
            if name in m.built.static:
                out.append(float(m.built.static[name]))
            elif name == "accuracy":
                out.append(m.outcomes[-1].accuracy)
            else:
                merged = merge_outcomes(m.outcomes)
                out.append(float({"comm_bytes": merged.comm_bytes, "upload_bytes": merged.upload_bytes,
                                  "download_bytes": merged.download_bytes}[name]))
        return out

    def _record(self, m: _Member, rounds: int) -> None:
        merged = merge_outcomes(m.outcomes)
        m.trial.set_user_attr(HALVING_ATTR, rounds)
        m.trial.set_user_attr("halving_accuracy", {str(k): v for k, v in m.accuracy.items()})
        m.trial.set_user_attr("halving_comm_bytes", {str(k): v for k, v in m.comm.items()})
        m.trial.set_user_attr("accuracy", merged.accuracy)
        m.trial.set_user_attr("comm_bytes", merged.comm_bytes)
        m.trial.set_user_attr("client_epochs", sum(x.replies for x in merged.rounds) * self.config.federation.local_epochs)

    def _finish(self, study: optuna.Study, m: _Member) -> None:
        r = self.runner
        merged = merge_outcomes(m.outcomes)
        int8 = pipeline.needs_post(self.config)
        result = pipeline.finish(m.candidate, m.built, merged, r.data, int8=int8,
                                 latency=pipeline.latency_config(self.config))
        r._store_result(m.trial, result, int8)
        self._record(m, self.rungs[-1])
        r._set_constraints(m.trial, result.metrics)
        r._store_weights(m.trial, result.state)
        values = [float(result.metrics[name]) for name in self.config.objectives]
        with _asking():
            study.tell(m.trial, values)
        self.running.remove(m.trial.number)
        r.progress.trial_finished("COMPLETE", objective_text(dict(zip(self.config.objectives, values))),
                                  number=m.trial.number)

    def _tell(self, study: optuna.Study, trial: optuna.Trial, state: TrialState, why: str, *,
              evaluated: bool = False) -> None:
        """End ``trial``; ``evaluated``: halving stopped it, so it counts towards the target."""
        with _asking():
            study.tell(trial, state=state)
        self.running.remove(trial.number)
        self.runner.progress.trial_finished(state.name, why, number=trial.number, counted=evaluated)

    def requeue(self, study: optuna.Study) -> list[int]:
        """After an interrupt: fail this bracket's RUNNING trials and enqueue their candidates again."""
        storage, out = study._storage, []
        for number in self.running:
            trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
            if trial.state == TrialState.RUNNING:
                storage.set_trial_user_attr(trial._trial_id, "fail_reason", "interrupted (halving bracket)")
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                trial = storage.get_trial(trial._trial_id)
            if trial.state == TrialState.FAIL and enqueue_retry(study, trial):
                out.append(number)
        self.running = []
        return out


def run_brackets(study: optuna.Study, halving: HalvingRunner, reporter: Any) -> None:
    """Brackets until ``study.trials`` candidates are evaluated (or ``study.max_attempts`` trials are used)."""
    from fednas.search._recovery import recover_dead_workers

    cfg = halving.config
    target = cfg.study.trials
    attempts = cfg.study.max_attempts or 3 * target + 10
    while True:
        checkpoint()
        recover_dead_workers(study)
        evaluated = count_evaluated(study)
        if evaluated >= target:
            return
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.PRUNED,
                                                                   TrialState.COMPLETE)))
        if finished >= attempts:
            reporter.note(f"stopping: {attempts} attempts made (study.max_attempts), {evaluated} evaluated")
            return
        halving.bracket(study, min(cfg.study.bracket(cfg.federation.rounds), target - evaluated))
