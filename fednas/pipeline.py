"""One candidate, start to finish: build -> cost -> federate -> post-training metrics. No Optuna.

The search's trial runner, ``fednas train`` (``fednas.export.train_architecture``) and, for
the parts a federation needs, the ``flwr run`` apps all go through here, so a candidate's
architecture *and* its compression labels (codecs, low-rank, distillation, pruning) are
applied the same way wherever it is trained::

    candidate = Candidate.of(arch, labels)                  # labels: the trial's, or a bundle's
    built = build(candidate, data)                          # model + cost before training
    outcome = federate(candidate, config, on_round=...)     # the Flower run
    result = finish(candidate, built, outcome, data, int8=True)

``run_candidate`` chains the three. The search puts its own steps between them (bounds on
the static cost, duplicate checks, storing), which is why they are separate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fednas.config import DataConfig, FederationConfig, LatencyConfig, PrivacyConfig, StudyConfig
from fednas.cost import Cost, measure
from fednas.fl import FederatedData, RoundRecord, RunSpec, ServerOutcome, run_federation
from fednas.models import build_run_model, example_input
from fednas.objectives import OBJECTIVES
from search_spaces import Architecture, CompressionSettings, arch_from_dict

__all__ = ["POST_METRICS", "PRUNING_METRICS", "Built", "Candidate", "CandidateError", "CandidateResult", "build",
           "federate", "finish", "int8_metrics", "latency_config", "needs_int8", "needs_post", "post_metrics",
           "precision_metrics", "pruning_metrics", "run_candidate"]


class CandidateError(RuntimeError):
    """The candidate's architecture cannot be built or costed for this data."""


@dataclass(frozen=True)
class Candidate:
    """What is trained: an architecture of any family and the compression of its labels.

    Attributes:
        arch: the architecture record.
        compression: the compression settings (all off by default).
        labels: every label the candidate came from (a trial's; empty for a bare architecture).
    """

    arch: Architecture
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    labels: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, arch: Architecture | dict[str, Any], labels: dict[str, Any] | None = None) -> Candidate:
        """The candidate of ``arch`` with the compression named by ``labels`` (others ignored)."""
        labels = dict(labels or {})
        return cls(arch_from_dict(arch), CompressionSettings.from_labels(labels), labels)

    def spec(self, data: DataConfig, federation: FederationConfig, seed: int,
             privacy: PrivacyConfig | None = None) -> RunSpec:
        return RunSpec(data, federation, seed, self.arch.to_dict(), self.compression,
                       privacy=privacy or PrivacyConfig())


@dataclass(frozen=True)
class Built:
    """A candidate's model before training and its cost (params, MACs, bytes; latency when asked) on the
    data's input."""

    model: nn.Module
    cost: Cost
    latency: dict[str, Any] | None = None  # fednas.latency.Latency.to_dict() when [latency] is scored

    @property
    def static(self) -> dict[str, Any]:
        """The metrics known before training, by objective name."""
        out: dict[str, Any] = {"macs": self.cost.macs, "params": self.cost.params, "bytes": self.cost.bytes}
        if self.latency is not None:
            out["latency_ms"] = self.latency["ms"]
        return out


@dataclass
class CandidateResult:
    """A trained candidate.

    Attributes:
        model: the final global model (pruned structure if the server pruned), weights loaded, eval mode.
        metrics: every objective-registry metric measured (accuracy, macs, params, bytes,
            comm/upload/download_bytes, epsilon with central DP, and model_bytes/accuracy_int8 when asked for).
        before_pruning: params/MACs/bytes before the server pruned ({} when it did not).
        outcome: the federation's outcome (rounds, prune masks, seconds).
    """

    candidate: Candidate
    model: nn.Module
    metrics: dict[str, Any]
    before_pruning: dict[str, int]
    outcome: ServerOutcome

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.outcome.arrays.to_torch_state_dict()


def build(candidate: Candidate, data: FederatedData, latency: LatencyConfig | None = None) -> Built:
    """Build the candidate's model for the data's input and measure it.

    ``latency``: also its single-image latency, measured or predicted as the section says
    (``fednas.latency.candidate_latency``; pass it only when the study scores ``latency_ms``).

    Raises:
        CandidateError: the architecture does not fit the input (too small, ...).
    """
    train = data.train
    try:
        model = build_run_model(candidate.arch, candidate.compression, num_classes=train.num_classes,
                                in_channels=train.in_channels)
        cost = measure(model, in_channels=train.in_channels, resolution=train.resolution)
    except (RuntimeError, ValueError) as exc:
        raise CandidateError(f"cannot build the model for {train.in_channels}x{train.resolution}x{train.resolution} "
                             f"inputs: {exc}") from exc
    return Built(model, cost, _latency(model, data, latency))


def _latency(model: nn.Module, data: FederatedData, config: LatencyConfig | None) -> dict[str, Any] | None:
    if config is None:
        return None
    from fednas.latency import candidate_latency

    train = data.train
    return candidate_latency(model, (train.in_channels, train.resolution, train.resolution), config).to_dict()


def federate(candidate: Candidate, config: StudyConfig, *,
             on_round: Callable[[RoundRecord], None] | None = None,
             initial: dict[str, torch.Tensor] | None = None) -> ServerOutcome:
    """Train the candidate with ``config``'s data and federation (fednas's apps on the in-process grid).

    ``initial``: weights to continue from (a state dict of the candidate's model).

    Raises:
        FederationError / TrainingDiverged: the run failed.
    """
    return run_federation(candidate.spec(config.data, config.federation, config.study.seed, config.privacy),
                          on_round=on_round,
                          initial=initial)


def needs_int8(objectives: dict[str, str] | list[str]) -> bool:
    """Whether any objective is known only after post-training quantization."""
    return any(OBJECTIVES[n].phase == "post" for n in objectives if n in OBJECTIVES)


def needs_post(config: StudyConfig) -> bool:
    """Whether the study's objectives or bounds need the post-training metrics (``post_metrics``)."""
    return needs_int8([*config.objectives, *config.constraints.active()])


def finish(candidate: Candidate, built: Built, outcome: ServerOutcome, data: FederatedData, *,
           int8: bool = False, latency: LatencyConfig | None = None) -> CandidateResult:
    """The trained model and its metrics: the pruned structure re-measured (its latency too, with
    ``latency``), int8 scored if asked."""
    train = data.train
    model, static, before = built.model, built.static, {}
    lat = built.latency
    if outcome.prune_masks:  # channel masks or a block plan: a smaller structure
        from fednas.compress import apply_prune_plan

        model = apply_prune_plan(model, outcome.prune_masks, example_input(train.in_channels, train.resolution))
        cost = measure(model, in_channels=train.in_channels, resolution=train.resolution)
        lat = _latency(model, data, latency) if built.latency is not None else None
        before, static = static, {"macs": cost.macs, "params": cost.params, "bytes": cost.bytes,
                                  **({"latency_ms": lat["ms"]} if lat else {})}
    model.load_state_dict(outcome.arrays.to_torch_state_dict())
    metrics: dict[str, Any] = {**static, "accuracy": outcome.accuracy, "comm_bytes": outcome.comm_bytes,
                               "upload_bytes": outcome.upload_bytes, "download_bytes": outcome.download_bytes}
    if outcome.privacy:
        metrics["epsilon"] = outcome.privacy["epsilon"]
    if lat is not None:
        metrics["latency"] = lat  # how latency_ms was obtained: runtime, threads, spread, measured or predicted
    metrics.update(pruning_metrics(model, candidate, outcome))
    if int8:
        metrics.update(post_metrics(model, candidate, data, prune_plan=outcome.prune_masks))
    return CandidateResult(candidate, model.eval(), metrics, before, outcome)


POST_METRICS = ("model_bytes", "accuracy_int8", "weight_bytes", "accuracy_quantized", "precision")


PRUNING_METRICS = ("sparsity", "pruned_blocks", "pruned_depths")


def pruning_metrics(model: nn.Module, candidate: Candidate, outcome: ServerOutcome) -> dict[str, Any]:
    """What the server's pruning left, beyond the re-measured cost: the weights' ``sparsity`` (unstructured
    pruning), or the removed blocks and the depths they leave (``pruned_blocks``, ``pruned_depths``)."""
    from fednas.compress import is_block_plan, plan_arch, plan_blocks, sparsity_of

    c = candidate.compression
    if not c.prune_on or not outcome.pruned_round:
        return {}
    if c.prune_granularity == "weight":
        return {"sparsity": round(sparsity_of(model), 6)}
    if c.prune_granularity == "block" and is_block_plan(outcome.prune_masks):
        arch = plan_arch(candidate.arch, outcome.prune_masks)
        return {"pruned_blocks": plan_blocks(outcome.prune_masks),
                "pruned_depths": [int(s.depth) for s in arch.stages]}
    return {}


def post_metrics(model: nn.Module, candidate: Candidate, data: FederatedData, *, prune_plan: str = "") -> dict[str, Any]:
    """What post-training quantization makes of the final model: ``int8_metrics`` and ``precision_metrics``
    (``prune_plan``: the server's block plan or channel masks, which the per-stage widths follow)."""
    return {**int8_metrics(model, data), **precision_metrics(model, candidate, data, prune_plan=prune_plan)}


def int8_metrics(model: nn.Module, data: FederatedData) -> dict[str, Any]:
    """Post-training int8 of the final model: calibrated on training data, scored on the held-out split.

    ``model_bytes`` is the serialized int8 model, less what a bitmap encoding of zero weights saves
    (``fednas.compress.sparse_saving`` at 8 bits; int8's symmetric weight quantization keeps zeros zero): an
    unstructured-pruned model is counted as it would be stored sparse, a dense one as before.
    """
    from fednas.compress import CALIBRATION_SAMPLES, evaluate_int8, quantize_int8, sparse_saving

    q = quantize_int8(model, data.train.x[:CALIBRATION_SAMPLES])
    _, acc = evaluate_int8(q, data.test.x, data.test.y)
    weights = {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return {"model_bytes": q.bytes - sparse_saving(weights, 8), "accuracy_int8": acc}


def precision_metrics(model: nn.Module, candidate: Candidate, data: FederatedData, *,
                      prune_plan: str = "") -> dict[str, Any]:
    """The final model's weights at the candidate's precision (``weight_bits``, ``s{i}_wbits``, spent per layer
    by its ``compression_policy``): their packed bytes (less what a bitmap encoding of the zero codes saves), the
    held-out accuracy with them, and per width how many weights (``precision``; with a greedy/DP policy also
    its budget, the bytes it spent and the per-layer ``plan``)."""
    from fednas.compress import POLICY_SAMPLES, plan_arch, policy_plan, quantize_weights, sparse_saving
    from fednas.train import evaluate

    c = candidate.compression
    try:
        chosen = policy_plan(model, plan_arch(candidate.arch, prune_plan), c.weight_bits, c.stage_weight_bits,
                             c.compression_policy, data.train.x[:POLICY_SAMPLES])
    except ValueError as exc:
        raise CandidateError(str(exc)) from None
    plan = chosen.plan
    quantized, packed = quantize_weights(model, plan)
    _, acc = evaluate(quantized, data.test.x, data.test.y)  # all float32: the float model's accuracy
    counts: dict[str, int] = {}
    for name, bits in plan.items():
        counts[str(bits)] = counts.get(str(bits), 0) + torch.Size(packed.tensors[name]["shape"]).numel()
    params = dict(quantized.named_parameters())
    saved = sparse_saving({n: params[n] for n in plan}, plan)
    precision = {"weight_bits": c.weight_bits, "stage_weight_bits": list(c.stage_weight_bits),
                 "weights_by_bits": counts, "float32_rest_bytes": packed.rest}
    if chosen.policy != "uniform":  # the widths came from measured sensitivities: kept, so a bundle rebuilds them
        precision.update(chosen.to_dict())
    return {"weight_bytes": packed.nbytes - saved, "accuracy_quantized": acc, "precision": precision}


def latency_config(config: StudyConfig) -> LatencyConfig | None:
    """The study's ``[latency]`` when it scores ``latency_ms``, else None (nothing is timed)."""
    from fednas.config import needs_latency

    return config.latency if needs_latency(config) else None


def run_candidate(candidate: Candidate, config: StudyConfig, data: FederatedData, *,
                  on_round: Callable[[RoundRecord], None] | None = None, int8: bool = False) -> CandidateResult:
    """``build`` -> ``federate`` -> ``finish``."""
    latency = latency_config(config)
    built = build(candidate, data, latency)
    return finish(candidate, built, federate(candidate, config, on_round=on_round), data, int8=int8,
                  latency=latency)
