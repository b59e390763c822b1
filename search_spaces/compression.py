"""Compression knobs as search-space labels, and the joint (architecture + compression) space.

Every knob is a flat label, like an architecture's: a study may search it (list of
choices / ``{low, high}`` range) or fix it (scalar) under ``[space.labels]``. All knobs
default to a fixed "off" value, so a study that names none of them trains exactly as
before. ``CompressionSpace.domains()`` holds those defaults; ``allowed_domains()`` the
widest domain each label accepts, which ``SearchSpace.resolve`` checks overrides against.

Decoding gives a frozen ``CompressionSettings`` (JSON round-trip), which the federation
carries in its ``RunSpec``. Plain data: no PyTorch, no Flower here.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from ._base import Choice, Domain, Fixed, Range, SearchSpace, TrialLike

__all__ = ["CODEC_CHOICES", "COMPRESSION_POLICIES", "GRANULARITY_METHODS", "KD_KINDS", "PRUNE_GRANULARITIES", "PRUNE_METHODS", "WEIGHT_BITS", "CompressionSettings", "CompressionSpace", "JointSpace", "with_compression"]

CODEC_CHOICES = {"uplink": ("none", "quantize", "topk"), "downlink": ("none", "quantize")}
BITS = (16, 8, 4, 2)
# Weight precision after training (fednas.compress._precision): float32, float16, 8/6/4-bit integers.
WEIGHT_BITS = (32, 16, 8, 6, 4)
_STAGE_BITS = re.compile(r"s([1-9][0-9]*)_wbits")
# How those bytes are spent per layer (fednas.compress._policy): every layer at the labels' widths (uniform), or
# the packed bytes of that uniform plan re-allocated by per-layer sensitivity, greedily or by a knapsack DP.
COMPRESSION_POLICIES = ("uniform", "greedy", "dp")
# l1/l2/fpgm rank channels on the server (data-free); taylor by Taylor scores the clients compute.
PRUNE_METHODS = ("none", "l1", "l2", "fpgm", "taylor")
# What the server removes (fednas.fl.server_app._ServerPruning): output channels of convs and hidden linears,
# neurons of hidden linears only, single weights (unstructured, by magnitude), or whole residual blocks.
# Distillation by soft targets, by stage feature maps (FitNets hints) or by attention maps (attention transfer).
KD_KINDS = ("soft", "feature", "attention")
PRUNE_GRANULARITIES = ("channel", "neuron", "weight", "block")
# The rankings each granularity can use: a single weight has no filter to take a geometric median of, nor
# one Taylor score the clients compute (theirs are per channel); a block is ranked by the norm of its residual
# branch's output (l1/l2) or by the sum of its layers' channel Taylor scores.
GRANULARITY_METHODS = {"channel": ("l1", "l2", "fpgm", "taylor"), "neuron": ("l1", "l2", "fpgm", "taylor"),
                       "weight": ("l1", "l2"), "block": ("l1", "l2", "taylor")}


@dataclass(frozen=True, kw_only=True)
class CompressionSettings:
    """The compression of one trial; every field is the label of the same name.

    Attributes:
        uplink_codec: client -> server update codec: "none", "quantize" or "topk".
        uplink_bits: quantizer bits (16, 8, 4, 2).
        uplink_per_channel: one quantization scale per output channel.
        uplink_topk: fraction of update entries top-k keeps.
        downlink_codec: server -> client codec for the global-model delta: "none" or "quantize".
        downlink_bits / downlink_per_channel: as for the uplink.
        lowrank_ratio: SVD rank of pointwise convs and linears as a fraction of full rank (1.0: off).
        tucker_ratio: Tucker-2 core widths of dense k x k convs as a fraction of their channels (1.0: off).
        kd_weight: weight of the distillation term in local training (0: off).
        kd_temperature: distillation temperature.
        kd_teacher: a ``fednas export`` bundle folder used as teacher ("" : the received global model).
        kd_kind: what is distilled: "soft" (the teacher's softened logits), "feature" (stage
            outputs through 1x1 regressors, FitNets) or "attention" (spatial attention maps of
            the stage outputs, attention transfer).
        prune_method: structured pruning of the global model during the federation: "none", "l1", "l2"
            or "fpgm" (data-free rankings on the server), or "taylor" (first-order Taylor
            scores computed by the clients on their data and summed by the server).
        prune_granularity: what pruning removes: "channel" (output channels of convs and hidden
            linears), "neuron" (output neurons of hidden linear layers only), "weight" (single
            weights by magnitude, per layer: unstructured, the model keeps its shape and its zeros)
            or "block" (whole residual blocks: a stage loses blocks after its first, i.e. its depth
            shrinks; see ``GRANULARITY_METHODS`` for the rankings each allows).
        prune_sparsity: share removed: of output channels (neurons, weights) per layer, or of the
            removable blocks of the network, in (0, 0.9].
        prune_round: the server prunes after aggregating this round (1 <= prune_round < rounds).
        aggregation: the ``federation.strategy`` that aggregates this candidate's run ("": the
            study's own), e.g. a Byzantine-robust rule; its options come from its
            ``[federation.<name>]`` sub-table.
        dp_noise_multiplier: the Gaussian noise multiplier of this candidate's central DP run
            (None: ``privacy.noise_multiplier``); searched, it puts the privacy budget on the front.
        weight_bits: precision of the final model's conv and linear weights after training: 32
            (float32, off), 16 (float16), or 8, 6, 4 (integers with a float16 scale per output channel).
        stage_weight_bits: per stage, the precision of its blocks' weights (0: ``weight_bits``); the
            labels ``s1_wbits``, ``s2_wbits``, ... of a space whose family has stages.
        compression_policy: how the weights' bytes are spent: "uniform" (each layer at the width
            ``weight_bits`` / ``s{i}_wbits`` give it), or "greedy" / "dp": the packed bytes of that
            uniform plan are the budget, and each layer gets a width from ``POLICY_WIDTHS`` by its
            measured sensitivity (``fednas.compress.policy_plan``). Off while the weights stay float32.
    """

    uplink_codec: str = "none"
    uplink_bits: int = 8
    uplink_per_channel: bool = False
    uplink_topk: float = 0.01
    downlink_codec: str = "none"
    downlink_bits: int = 8
    downlink_per_channel: bool = False
    lowrank_ratio: float = 1.0
    tucker_ratio: float = 1.0
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    kd_teacher: str = ""
    kd_kind: str = "soft"
    prune_method: str = "none"
    prune_granularity: str = "channel"
    prune_sparsity: float = 0.5
    prune_round: int = 1
    aggregation: str = ""
    dp_noise_multiplier: float | None = None
    weight_bits: int = 32
    stage_weight_bits: tuple[int, ...] = ()
    compression_policy: str = "uniform"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_weight_bits", tuple(int(b) for b in self.stage_weight_bits))

    @classmethod
    def from_labels(cls, labels: dict[str, Any]) -> CompressionSettings:
        """The settings among ``labels`` (others are ignored; missing ones are off); ``s{i}_wbits`` labels
        make ``stage_weight_bits``."""
        types = {f.name: f.type for f in fields(cls)}
        values = {k: _CAST.get(types[k], _same)(v) for k, v in labels.items() if k in types}
        stages = {int(m.group(1)): int(v) for k, v in labels.items() if (m := _STAGE_BITS.fullmatch(k))}
        if any(stages.values()):
            values["stage_weight_bits"] = tuple(stages.get(i, 0) for i in range(1, max(stages) + 1))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionSettings:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown compression setting(s) {unknown}; valid: {', '.join(sorted(names))}")
        return cls(**data)

    @property
    def precision_on(self) -> bool:
        """Weights stored below float32 somewhere (``weight_bits`` or a stage's ``s{i}_wbits``)."""
        return self.weight_bits != 32 or any(b not in (0, 32) for b in self.stage_weight_bits)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CompressionSettings:
        return cls.from_dict(json.loads(text))

    @property
    def codecs_on(self) -> bool:
        return self.uplink_codec != "none" or self.downlink_codec != "none"

    @property
    def lowrank_on(self) -> bool:
        return self.lowrank_ratio < 1.0

    @property
    def tucker_on(self) -> bool:
        return self.tucker_ratio < 1.0

    @property
    def kd_on(self) -> bool:
        return self.kd_weight > 0

    @property
    def prune_on(self) -> bool:
        return self.prune_method != "none"

    def describe(self) -> str:
        """Compact form for tables, e.g. ``q4 up, q8 down, rank 0.5, kd 0.3, prune l1 50% @r2``; ``-`` when all
        are off (``c``: per-channel scales; ``kd ... bundle``: an exported teacher)."""
        parts = []
        for side, short in (("uplink", "up"), ("downlink", "down")):
            codec = getattr(self, f"{side}_codec")
            if codec == "quantize":
                pc = "c" if getattr(self, f"{side}_per_channel") else ""
                parts.append(f"q{getattr(self, f'{side}_bits')}{pc} {short}")
            elif codec == "topk":
                parts.append(f"top{_num(100 * self.uplink_topk)}% {short}")
        if self.lowrank_on:
            parts.append(f"rank {_num(self.lowrank_ratio)}")
        if self.tucker_on:
            parts.append(f"tucker {_num(self.tucker_ratio)}")
        if self.kd_on:
            kind = "" if self.kd_kind == "soft" else f" {self.kd_kind}"
            parts.append(f"kd {_num(self.kd_weight)}{kind}" + (" bundle" if self.kd_teacher else ""))
        if self.prune_on:
            kind = "" if self.prune_granularity == "channel" else f" {self.prune_granularity}"
            parts.append(f"prune {self.prune_method}{kind} {_num(100 * self.prune_sparsity)}% @r{self.prune_round}")
        if self.aggregation:
            parts.append(f"agg {self.aggregation}")
        if self.dp_noise_multiplier is not None:
            parts.append(f"dp z={_num(self.dp_noise_multiplier)}")
        if self.precision_on:
            stages = "/".join(str(b or self.weight_bits) for b in self.stage_weight_bits)
            policy = "" if self.compression_policy == "uniform" else f" {self.compression_policy}"
            parts.append(f"w{self.weight_bits}" + (f" stages {stages}" if stages else "") + policy)
        return ", ".join(parts) or "-"


def _same(v: Any) -> Any:
    return v


# Optuna and TOML may give 8.0 for a choice of 8, or 1 for a ratio of 1.0.
_CAST = {"int": int, "float": float, "float | None": lambda v: None if v is None else float(v)}


def _num(v: float) -> str:
    return f"{v:.3g}"


@dataclass(frozen=True)
class _Text(Domain):
    """Any string (a path); used only as an allowed domain."""

    def suggest(self, trial: TrialLike, label: str) -> Any:  # pragma: no cover - never a default
        raise TypeError("a text label must be fixed or given as choices")

    def contains(self, value: Any) -> bool:
        return isinstance(value, str)

    def values_ok(self, allowed: Domain) -> str | None:  # pragma: no cover - never an override
        return None

    def describe(self) -> str:
        return "a string"


@dataclass(frozen=True)
class _OpenLowRange(Range):
    """``(low, high]``: a range whose low end is excluded; used only as an allowed domain."""

    def contains(self, value: Any) -> bool:
        return super().contains(value) and value > self.low

    def describe(self) -> str:
        return f"({_num(self.low)}, {_num(self.high)}]"


@dataclass(frozen=True)
class _OptionalRange(Range):
    """A range, or None (the default: the study's own setting); used only as an allowed domain."""

    def contains(self, value: Any) -> bool:
        return value is None or super().contains(value)

    def describe(self) -> str:
        return f"[{_num(self.low)}, {_num(self.high)}] (unset: the study's own)"


class CompressionSpace(SearchSpace):
    """The compression knobs as labels: every default is a fixed "off" value."""

    name = "compression"

    def domains(self) -> dict[str, Domain]:
        return {f.name: Fixed(f.default) for f in fields(CompressionSettings) if f.name != "stage_weight_bits"}

    def allowed_domains(self) -> dict[str, Domain]:
        return {
            "uplink_codec": Choice(CODEC_CHOICES["uplink"]),
            "uplink_bits": Choice(BITS),
            "uplink_per_channel": Choice((False, True)),
            "uplink_topk": Range(1e-4, 1.0),
            "downlink_codec": Choice(CODEC_CHOICES["downlink"]),
            "downlink_bits": Choice(BITS),
            "downlink_per_channel": Choice((False, True)),
            "lowrank_ratio": Range(0.01, 1.0),
            "tucker_ratio": Range(0.01, 1.0),
            "kd_weight": Range(0.0, 1.0),
            "kd_temperature": Range(0.1, 100.0),
            "kd_teacher": _Text(),
            "kd_kind": Choice(KD_KINDS),
            "prune_method": Choice(PRUNE_METHODS),
            "prune_granularity": Choice(PRUNE_GRANULARITIES),
            "prune_sparsity": _OpenLowRange(0.0, 0.9),
            "prune_round": Range(1, 1_000_000),
            "aggregation": _Text(),
            "dp_noise_multiplier": _OptionalRange(0.01, 1000.0),
            "weight_bits": Choice(WEIGHT_BITS),
            "compression_policy": Choice(COMPRESSION_POLICIES),
        }

    def decode(self, values: dict[str, Any]) -> CompressionSettings:
        return CompressionSettings.from_labels(values)


class JointSpace(SearchSpace):
    """An architecture space and the compression knobs, addressed by one flat label dict.

    ``decode`` gives the architecture (as the wrapped space does); ``settings`` gives the
    ``CompressionSettings`` of the same labels.
    """

    def __init__(self, arch: SearchSpace, compression: CompressionSpace | None = None) -> None:
        self.arch = arch
        self.compression = compression or CompressionSpace()
        self.name = arch.name
        clash = sorted(set(arch.domains()) & set(self.compression.domains()))
        if clash:
            raise ValueError(f"search space {arch.name!r} defines compression label(s) {clash}")

    def _stage_bits(self) -> list[str]:
        """``s{i}_wbits`` for each stage of the architecture space (its ``s{i}_depth`` labels)."""
        stages = sorted(int(m.group(1)) for k in self.arch.domains() if (m := re.fullmatch(r"s([0-9]+)_depth", k)))
        return [f"s{i}_wbits" for i in stages]

    def domains(self) -> dict[str, Domain]:
        return {**self.arch.domains(), **self.compression.domains(), **dict.fromkeys(self._stage_bits(), Fixed(0))}

    def allowed_domains(self) -> dict[str, Domain]:
        per_stage = Choice((0, *WEIGHT_BITS))  # 0: the stage keeps weight_bits
        return {**self.arch.allowed_domains(), **self.compression.allowed_domains(),
                **dict.fromkeys(self._stage_bits(), per_stage)}

    def decode(self, values: dict[str, Any]) -> Any:
        own = self.arch.domains()
        return self.arch.decode({k: v for k, v in values.items() if k in own})

    def settings(self, values: dict[str, Any]) -> CompressionSettings:
        return self.compression.decode(values)


def with_compression(space: SearchSpace) -> JointSpace:
    """``space`` plus the compression labels (idempotent)."""
    return space if isinstance(space, JointSpace) else JointSpace(space)
