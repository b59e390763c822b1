"""Study configuration: one TOML document, validated once, at the edge.

Every section is a frozen dataclass; ``load_config`` reads the file, applies ``--set``
overrides, and checks every key, type and value before anything is written. Errors are
``ConfigError`` with one line naming the file and the dotted key.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fednas._errors import ConfigError
from fednas.objectives import DIRECTIONS, OBJECTIVES
from fednas.attacks import ATTACKS
from fednas.runtimes import RUNTIMES
from fednas.samplers import SAMPLERS
from fednas.strategies import LEGACY_KEYS, MIN_REPLIES, STRATEGIES
from search_spaces import MAX_RESOLUTION

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DEFAULT_CONFIG",
    "DIRECTIONS",
    "OBJECTIVES",
    "ConfigError",
    "ConstraintsConfig",
    "DataConfig",
    "FederationConfig",
    "LatencyConfig",
    "PrivacyConfig",
    "SpaceConfig",
    "StudyConfig",
    "StudySection",
    "SupernetConfig",
    "Tier",
    "apply_overrides",
    "default_storage",
    "load_config",
    "needs_latency",
    "parse_config",
]

DEFAULT_CONFIG = "studies/quickstart.toml"  # the study `fednas search`/`train` use when given none
BN_MODES = ("final", "every_round", "off")
MODES = ("scratch", "supernet")
FIDELITIES = ("none", "halving")
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")  # whether it exists here is checked with torch (``check_study``)
SUBNET_RULES = ("sandwich", "random")
PRIVACY_MODES = ("off", "central", "local")
CLIPPING_MODES = ("fixed", "adaptive")
# strategies whose aggregation is FedAvg's own mean, the one central DP's sensitivity (clip / clients) holds for
DP_STRATEGIES = ("fedavg", "fedprox")
# privacy.secure_aggregation: how the server sums the round's updates without reading them one by one
SECURE_AGGREGATIONS = ("off", "secagg+", "ckks")
SECURE_STRATEGIES = DP_STRATEGIES  # the rules that are a weighted mean of the updates (all a secure sum gives)
# compression labels that change how a candidate is trained: a supernet study inherits weights instead
TRAINING_LABELS = {"uplink_codec": "none", "downlink_codec": "none", "lowrank_ratio": 1.0, "tucker_ratio": 1.0,
                   "kd_weight": 0.0,
                   "prune_method": "none", "aggregation": ""}


@dataclass(frozen=True, kw_only=True)
class StudySection:
    name: str = "quickstart"
    storage: str = ""
    trials: int = 10
    seed: int = 0
    sampler: str = "nsga2"
    population_size: int = 8
    max_attempts: int = 0
    artifacts: str = ""
    heartbeat: int = 10
    mode: str = "scratch"
    fidelity: str = "none"
    halving_eta: int = 3
    halving_min_rounds: int = 2
    halving_bracket: int = 0
    warm_start: str = ""
    warm_start_study: str = ""
    warm_start_trials: int = 10

    def check(self) -> None:
        _require(self.name.strip() != "" and "/" not in self.name, "study.name", "a non-empty name without '/'", self.name)
        _require(self.trials >= 1, "study.trials", "an integer >= 1", self.trials)
        _require(self.sampler in SAMPLERS, "study.sampler", f"one of {list(SAMPLERS)}", self.sampler)
        _require(self.population_size >= 2, "study.population_size", "an integer >= 2", self.population_size)
        _require(self.heartbeat >= 0, "study.heartbeat", "seconds >= 0 (0: off)", self.heartbeat)
        _require(self.max_attempts >= 0, "study.max_attempts", "an integer >= 0 (0: 3 x trials + 10)", self.max_attempts)
        _require(self.mode in MODES, "study.mode", f"one of {list(MODES)}", self.mode)
        _require(self.fidelity in FIDELITIES, "study.fidelity", f"one of {list(FIDELITIES)}", self.fidelity)
        _require(self.halving_eta >= 2, "study.halving_eta", "an integer >= 2", self.halving_eta)
        _require(self.halving_min_rounds >= 1, "study.halving_min_rounds", "an integer >= 1", self.halving_min_rounds)
        _require(self.halving_bracket >= 0, "study.halving_bracket", "an integer >= 0 (0: eta ** number of rungs)",
                 self.halving_bracket)
        _require(self.warm_start_trials >= 1, "study.warm_start_trials", "an integer >= 1", self.warm_start_trials)
        _require(not self.warm_start_study or bool(self.warm_start), "study.warm_start_study",
                 "a study name together with study.warm_start (the storage that holds it)", self.warm_start_study)

    def rungs(self, rounds: int) -> list[int]:
        """Successive halving's rungs: ``halving_min_rounds`` times powers of ``halving_eta``, up to ``rounds``."""
        out, r = [], self.halving_min_rounds
        while r < rounds:
            out.append(r)
            r *= self.halving_eta
        return out + [rounds]

    def bracket(self, rounds: int) -> int:
        """Candidates started together in one bracket of successive halving."""
        return self.halving_bracket or self.halving_eta ** len(self.rungs(rounds))


@dataclass(frozen=True, kw_only=True)
class SupernetConfig:
    """``[supernet]``: the weight-sharing supernet of ``study.mode = "supernet"``.

    Attributes:
        rounds: federated rounds that train the supernet (phase 1; checkpointed every round).
        sampling: which subnet each node trains per round: "sandwich" (in each device tier the
            largest, the smallest, random others; rotating over the nodes) or "random".
        eval_every: evaluate the largest and smallest subnets (batch-norm statistics pooled from
            the clients) every this many rounds for the training curve (0: only after the last).
        finetune_rounds: federated rounds that fine-tune each member of the final Pareto front
            from its inherited weights (phase 3; 0: off).
        distill: in-place distillation: a node also trains the space's smallest subnet, inside
            the one it was sent and sharing its weights, on that subnet's soft targets.
    """

    rounds: int = 24
    sampling: str = "sandwich"
    eval_every: int = 4
    finetune_rounds: int = 2
    distill: bool = False

    def check(self) -> None:
        _require(self.rounds >= 1, "supernet.rounds", "an integer >= 1", self.rounds)
        _require(self.sampling in SUBNET_RULES, "supernet.sampling", f"one of {list(SUBNET_RULES)}", self.sampling)
        _require(self.eval_every >= 0, "supernet.eval_every", "an integer >= 0 (0: after the last round)",
                 self.eval_every)
        _require(self.finetune_rounds >= 0, "supernet.finetune_rounds", "an integer >= 0 (0: off)",
                 self.finetune_rounds)


@dataclass(frozen=True)
class Tier:
    """One device tier of ``federation.tiers``: a share of the nodes and a budget (0: no bound)."""

    name: str
    share: float
    max_macs: int = 0
    max_params: int = 0

    def admits(self, macs: int, params: int) -> bool:
        return (not self.max_macs or macs <= self.max_macs) and (not self.max_params or params <= self.max_params)

    def describe(self) -> str:
        bounds = [f"max_macs {self.max_macs:,}" if self.max_macs else "",
                  f"max_params {self.max_params:,}" if self.max_params else ""]
        return f"{self.name!r} ({self.share:.0%} of nodes" + "".join(f", {b}" for b in bounds if b) + ")"


def tier_counts(shares: list[float], num_nodes: int) -> list[int]:
    """Nodes per tier: ``share x num_nodes`` rounded by largest remainder (the counts sum to ``num_nodes``)."""
    exact = [sh * num_nodes for sh in shares]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)[: num_nodes - sum(counts)]:
        counts[i] += 1
    return counts


def _tiers(value: Any, num_clients: int) -> list[dict[str, Any]]:
    """``federation.tiers``: a list of tables {name, share, max_macs, max_params}, shares summing to 1."""
    if not isinstance(value, list):
        raise ConfigError(f"federation.tiers: expected a list of tables (e.g. [[federation.tiers]]), got {_show(value)}")
    out: list[dict[str, Any]] = []
    for i, t in enumerate(value):
        key = f"federation.tiers[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(f"{key}: expected a table {{name, share, max_macs, max_params}}, got {_show(t)}")
        tier = _build(Tier, t, key) if set(t) >= {"name", "share"} else None
        if tier is None:
            raise ConfigError(f"{key}: expected keys name and share (and max_macs and/or max_params)")
        _require(tier.name.strip() != "", f"{key}.name", "a non-empty name", tier.name)
        _require(0.0 < tier.share <= 1.0, f"{key}.share", "a fraction in (0, 1]", tier.share)
        _require(tier.max_macs >= 0, f"{key}.max_macs", "an integer >= 0 (0: no bound)", tier.max_macs)
        _require(tier.max_params >= 0, f"{key}.max_params", "an integer >= 0 (0: no bound)", tier.max_params)
        if tier.name in (o["name"] for o in out):
            raise ConfigError(f"{key}.name: tier {tier.name!r} is named twice")
        out.append(asdict(tier))
    if out:
        total = sum(t["share"] for t in out)
        _require(abs(total - 1.0) < 1e-6, "federation.tiers", "shares that sum to 1", round(total, 6))
        for t, n in zip(out, tier_counts([t["share"] for t in out], num_clients) if num_clients else []):
            if n == 0:
                raise ConfigError(f"federation.tiers: tier {t['name']!r} (share {t['share']}) gets none of the "
                                  f"{num_clients} clients; expected a share of at least one client")
    return out


@dataclass(frozen=True, kw_only=True)
class ConstraintsConfig:
    """Upper bounds; 0 means no bound."""

    max_macs: int = 0
    max_params: int = 0
    max_bytes: int = 0
    max_comm_bytes: int = 0
    max_epsilon: float = 0.0  # the privacy loss at privacy.delta ([privacy])
    max_latency_ms: float = 0.0  # latency_ms ([latency]): measured, or predicted from a table
    max_weight_bytes: int = 0  # weight_bytes: the weights packed at the candidate's weight_bits / s{i}_wbits

    def check(self) -> None:
        for f in fields(self):
            kind = "a number" if f.type == "float" else "an integer"
            _require(getattr(self, f.name) >= 0, f"constraints.{f.name}", f"{kind} >= 0", getattr(self, f.name))

    def active(self) -> dict[str, float]:
        """Objective name -> bound, for the bounds that are set."""
        return {f.name[4:]: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


@dataclass(frozen=True, kw_only=True)
class LatencyConfig:
    """``[latency]``: where ``latency_ms`` (objective, ``constraints.max_latency_ms``) comes from.

    Without ``table``, each candidate is measured on this machine: ``runtime``
    (``fednas.runtimes``; ONNX Runtime by default) with ``threads`` intra-op threads pinned to
    CPUs, ``warmup`` untimed runs, then the median of ``repeats`` single-image runs (the
    quartiles are stored as its spread). With ``table`` (a file written by ``fednas latency
    profile``, on this machine or on the target device; relative to the working directory),
    it is predicted from the table's unit latencies instead, and the runtime and threads are
    the table's.
    """

    runtime: str = "onnxruntime"
    threads: int = 1
    warmup: int = 10
    repeats: int = 50
    table: str = ""

    def check(self) -> None:
        _require(self.runtime in RUNTIMES, "latency.runtime", f"one of {list(RUNTIMES)}", self.runtime)
        _require(1 <= self.threads <= 256, "latency.threads", "an integer in [1, 256]", self.threads)
        _require(0 <= self.warmup <= 100_000, "latency.warmup", "an integer in [0, 100000]", self.warmup)
        _require(1 <= self.repeats <= 100_000, "latency.repeats", "an integer in [1, 100000]", self.repeats)

    def describe(self) -> str:
        if self.table:
            return f"predicted from latency table {self.table}"
        return f"measured on {self.runtime}, {self.threads} thread(s), median of {self.repeats} runs"


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """``[privacy]``: user-level central differential privacy of the released global model.

    ``mode = "central"``: each sampled client clips its model update (the difference to the
    model it received) to ``clipping_norm`` in L2 before it is sent, the server averages
    the clipped updates with equal weights and adds Gaussian noise of standard deviation
    ``noise_multiplier * clipping_norm / clients per round`` (Flower's
    ``DifferentialPrivacyClientSide{Fixed,Adaptive}Clipping`` and the client mods that
    go with them). ``clipping = "adaptive"`` moves the clipping norm each round towards
    the ``target_clipped_quantile`` of the update norms (Andrew et al., 2021), from a
    noised count of clipped clients (noise ``clipped_count_stddev``; 0: the smallest
    value that keeps the update's effective noise multiplier at ``noise_multiplier``
    within a factor 1.5). Each released round is composed in an RDP accountant; a trial
    stores (epsilon, delta) at ``delta`` (``fednas.fl.privacy_spent``).

    ``secure_aggregation = "secagg+"``: each round's weighted mean is computed by Flower's
    SecAgg+ protocol (``fednas.fl._secure``), so the server learns only the sum of the
    clients' updates: each client's key is split into shares for a fraction
    ``secagg_num_shares`` of the round's clients, any ``secagg_threshold`` of those shares
    recover it (for a client that drops after the key exchange), and the weighted models are
    clipped to +-``secagg_clipping_range`` and quantized to ``2**secagg_quantization_bits``
    levels before masking.
    """

    mode: str = "off"
    clipping: str = "fixed"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    delta: float = 1e-5
    target_clipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2
    clipped_count_stddev: float = 0.0
    secure_aggregation: str = "off"
    secagg_num_shares: float = 1.0
    secagg_threshold: float = 0.67
    secagg_clipping_range: float = 8.0
    secagg_quantization_bits: int = 22

    @property
    def on(self) -> bool:
        """Differential privacy is on (``mode``; secure aggregation is ``secure``)."""
        return self.mode != "off"

    @property
    def central(self) -> bool:
        return self.mode == "central"

    @property
    def local(self) -> bool:
        return self.mode == "local"

    @property
    def secure(self) -> bool:
        return self.secure_aggregation != "off"

    def describe(self) -> str:
        """One line for ``fednas pareto`` and the report: what the run's privacy settings promise ("" when off)."""
        parts = []
        if self.central:
            clip = f"{self.clipping} clipping at {self.clipping_norm:g}"
            parts.append(f"central DP (user level; {clip}, noise multiplier {self.noise_multiplier:g} unless "
                         f"searched, epsilon at delta {self.delta:g})")
        elif self.local:
            parts.append(f"local DP-SGD (record level; per-example clipping at {self.clipping_norm:g}, noise "
                         f"multiplier {self.noise_multiplier:g} unless searched, epsilon at delta {self.delta:g})")
        if self.secure:
            parts.append(f"secure aggregation {self.secure_aggregation} (the server sees only each round's sum)")
        return "; ".join(parts)

    def check(self) -> None:
        _require(self.mode in PRIVACY_MODES, "privacy.mode", f"one of {list(PRIVACY_MODES)}", self.mode)
        _require(self.clipping in CLIPPING_MODES, "privacy.clipping", f"one of {list(CLIPPING_MODES)}", self.clipping)
        _require(0 < self.noise_multiplier <= MAX_NOISE and math.isfinite(self.noise_multiplier),
                 "privacy.noise_multiplier", f"a number in (0, {MAX_NOISE:g}]", self.noise_multiplier)
        _require(self.clipping_norm > 0 and math.isfinite(self.clipping_norm), "privacy.clipping_norm",
                 "a number > 0", self.clipping_norm)
        _require(0 < self.delta < 1, "privacy.delta", "a probability in (0, 1)", self.delta)
        _require(0 < self.target_clipped_quantile < 1, "privacy.target_clipped_quantile", "a fraction in (0, 1)",
                 self.target_clipped_quantile)
        _require(self.clip_norm_lr > 0 and math.isfinite(self.clip_norm_lr), "privacy.clip_norm_lr", "a number > 0",
                 self.clip_norm_lr)
        _require(self.clipped_count_stddev >= 0 and math.isfinite(self.clipped_count_stddev),
                 "privacy.clipped_count_stddev", "a number >= 0 (0: from noise_multiplier)", self.clipped_count_stddev)
        _require(self.secure_aggregation in SECURE_AGGREGATIONS, "privacy.secure_aggregation",
                 f"one of {list(SECURE_AGGREGATIONS)}", self.secure_aggregation)
        _require(_number(self.secagg_num_shares) and 0 < self.secagg_num_shares <= 1, "privacy.secagg_num_shares",
                 "a fraction in (0, 1] of the round's clients", self.secagg_num_shares)
        _require(_number(self.secagg_threshold) and 0 < self.secagg_threshold <= 1, "privacy.secagg_threshold",
                 "a fraction in (0, 1] of the shares", self.secagg_threshold)
        _require(_number(self.secagg_clipping_range) and 0 < self.secagg_clipping_range <= 1e6,
                 "privacy.secagg_clipping_range", "a number in (0, 1e6]", self.secagg_clipping_range)
        _require(isinstance(self.secagg_quantization_bits, int) and not isinstance(self.secagg_quantization_bits, bool)
                 and 8 <= self.secagg_quantization_bits <= 30, "privacy.secagg_quantization_bits",
                 "an integer in [8, 30]", self.secagg_quantization_bits)

    def count_stddev(self, noise_multiplier: float) -> float:
        """The clipped count's noise (adaptive clipping): the configured one, or 1.5 x the multiplier.

        The update then gets the effective multiplier ``(z^-2 - (2 sigma_b)^-2)^-1/2`` = 1.05 z
        (Andrew et al., Theorem 1), the part of the budget the count spends.
        """
        return self.clipped_count_stddev or 1.5 * noise_multiplier


MAX_NOISE = 1000.0  # a noise multiplier beyond this buries any update


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    name: str = "mobilenet"
    options: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    source: str = "mnist5k"
    path: str = ""
    name: str = ""
    test_fraction: float = 0.2
    limit: int = 0
    resolution: int = 0
    partition: str = "dirichlet"
    alpha: float = 0.5
    shards_per_client: int = 2

    def check(self) -> None:
        _require(0.0 < self.test_fraction < 1.0, "data.test_fraction", "a number in (0, 1)", self.test_fraction)
        _require(self.limit >= 0, "data.limit", "an integer >= 0 (0: all)", self.limit)
        _require(0 <= self.resolution <= MAX_RESOLUTION, "data.resolution",
                 f"an integer in [0, {MAX_RESOLUTION}] (0: source default)", self.resolution)
        _require(self.alpha > 0 and math.isfinite(self.alpha), "data.alpha", "a number > 0", self.alpha)
        _require(self.shards_per_client >= 1, "data.shards_per_client", "an integer >= 1", self.shards_per_client)
        if self.source in ("idx", "npz", "imagefolder", "leaf", "torchvision"):
            _require(self.path != "", "data.path", f"a file or folder for source {self.source!r}", self.path)

    def datasets(self, seed: int) -> tuple[Any, Any]:
        """The (train, test) datasets this section names, read once per process (``shared_dataset``).

        Raises:
            DataError: a missing or malformed source.
        """
        from fednas.data._load import shared_dataset

        return shared_dataset(self.source, path=self.path or None, test_fraction=self.test_fraction, seed=seed,
                              limit=self.limit or None, resolution=self.resolution or None, name=self.name or None)


@dataclass(frozen=True, kw_only=True)
class FederationConfig:
    num_clients: int = 8
    rounds: int = 5
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    bn_recalibration: str = "final"
    client_failure_rate: float = 0.0
    client_dropout_rate: float = 0.0
    # malicious clients (fednas.attacks): which attack, the seeded share of clients, its strength (0: the default)
    attack: str = "none"
    attack_fraction: float = 0.0
    attack_strength: float = 0.0
    # replies per bucket before the aggregation rule (fednas.fl._bucketing; 1: off): robust rules see bucket means
    bucket_size: int = 1
    device: str = "auto"
    # constructor keywords of the strategy (``[federation.<strategy>]``), defaults filled in
    strategy_options: dict[str, float] = field(default_factory=dict)
    # every ``[federation.<strategy>]`` sub-table given, for the rules a trial's ``aggregation`` label may pick
    rule_options: dict[str, dict[str, float]] = field(default_factory=dict)
    # device tiers (``[[federation.tiers]]``, supernet studies): dicts of ``Tier``'s fields
    tiers: list[dict[str, Any]] = field(default_factory=list)

    def tier_list(self) -> tuple[Tier, ...]:
        return tuple(Tier(**t) for t in self.tiers)

    def check(self) -> None:
        for key in ("client_failure_rate", "client_dropout_rate"):
            _require(0.0 <= getattr(self, key) < 1.0, f"federation.{key}", "a fraction in [0, 1)", getattr(self, key))
        _require(self.num_clients >= 0, "federation.num_clients",
                 "an integer >= 1 (0: one client per user of the data, partition 'natural')", self.num_clients)
        _require(self.rounds >= 1, "federation.rounds", "an integer >= 1", self.rounds)
        _require(self.strategy in STRATEGIES, "federation.strategy", f"one of {list(STRATEGIES)}", self.strategy)
        spec = STRATEGIES[self.strategy]
        for key, value in self.strategy_options.items():
            if key not in spec.options:
                valid = ", ".join(spec.options) or "none"
                raise ConfigError(f"federation.{self.strategy}.{key}: unknown option of strategy "
                                  f"{self.strategy!r}; valid: {valid}")
            why = spec.options[key].check(value)
            if why:
                raise ConfigError(f"federation.{self.strategy}.{key}: {why}")
        _require(0.0 < self.fraction_train <= 1.0, "federation.fraction_train", "a number in (0, 1]", self.fraction_train)
        if self.num_clients:  # 0: checked once the data has said how many users it has
            _require(
                1 <= self.min_train_nodes <= self.num_clients,
                "federation.min_train_nodes",
                f"an integer in [1, num_clients={self.num_clients}]",
                self.min_train_nodes,
            )
        _require(self.min_train_nodes >= 1, "federation.min_train_nodes", "an integer >= 1", self.min_train_nodes)
        _require(self.local_epochs >= 1, "federation.local_epochs", "an integer >= 1", self.local_epochs)
        _require(self.local_steps >= 0, "federation.local_steps", "an integer >= 0 (0: no limit)", self.local_steps)
        _require(self.batch_size >= 2, "federation.batch_size", "an integer >= 2", self.batch_size)
        _require(self.lr > 0 and math.isfinite(self.lr), "federation.lr", "a number > 0", self.lr)
        _require(0.0 <= self.momentum < 1.0, "federation.momentum", "a number in [0, 1)", self.momentum)
        _require(self.weight_decay >= 0, "federation.weight_decay", "a number >= 0", self.weight_decay)
        _require(DEVICE_NAME.fullmatch(self.device) is not None, "federation.device",
                 "'auto', 'cpu', 'cuda' or 'cuda:N'", self.device)
        _require(self.bn_recalibration in BN_MODES, "federation.bn_recalibration", f"one of {list(BN_MODES)}", self.bn_recalibration)
        _require(self.bucket_size >= 1, "federation.bucket_size", "an integer >= 1 (1: no bucketing)", self.bucket_size)
        self._check_attack()
        self._check_robust_rule()

    def attackers(self) -> int:
        """How many clients are malicious: ``attack_fraction`` of ``num_clients``, rounded, at least one."""
        if self.attack == "none" or not self.num_clients:
            return 0
        return max(1, round(self.attack_fraction * self.num_clients))

    def strength(self) -> float:
        return self.attack_strength or ATTACKS[self.attack].default_strength

    def _check_attack(self) -> None:
        _require(self.attack in ATTACKS, "federation.attack", f"one of {list(ATTACKS)}", self.attack)
        _require(0.0 <= self.attack_fraction < 1.0, "federation.attack_fraction", "a fraction in [0, 1)",
                 self.attack_fraction)
        _require(self.attack_strength >= 0 and math.isfinite(self.attack_strength), "federation.attack_strength",
                 "a number >= 0 (0: the attack's default)", self.attack_strength)
        if self.attack == "none":
            _require(self.attack_fraction == 0, "federation.attack_fraction", "0 without federation.attack",
                     self.attack_fraction)
            return
        _require(self.attack_fraction > 0, "federation.attack_fraction",
                 f"a fraction in (0, 1) with federation.attack = {self.attack!r}", self.attack_fraction)
        if self.attack == "label_flip":
            _require(self.strength() <= 1.0, "federation.attack_strength",
                     "a fraction of labels in (0, 1] for label_flip", self.attack_strength)
        if self.num_clients:
            _require(self.attackers() < self.num_clients, "federation.attack_fraction",
                     f"a share that leaves at least one honest client of {self.num_clients}", self.attack_fraction)

    def for_rule(self, name: str) -> FederationConfig:
        """This federation aggregated by strategy ``name`` (a trial's ``aggregation`` label), with its options
        from its ``[federation.<name>]`` sub-table or its defaults.

        Raises:
            ConfigError: an unknown name, or options the federation cannot meet (as for ``strategy``).
        """
        from dataclasses import replace

        if not name or name == self.strategy:
            return self
        _require(name in STRATEGIES, "space.labels.aggregation", f"strategy names from {list(STRATEGIES)}", name)
        options = {**STRATEGIES[name].defaults(), **self.rule_options.get(name, {})}
        other = replace(self, strategy=name, strategy_options=options)
        try:
            other.check()
        except ConfigError as exc:
            raise ConfigError(f"space.labels.aggregation = {name!r}: {exc}") from None
        return other

    def sampled_per_round(self) -> int:
        """Nodes a round samples when all are up (Flower's FedAvg: the fraction, at least ``min_train_nodes``)."""
        return max(int(self.fraction_train * self.num_clients), self.min_train_nodes)

    def _check_robust_rule(self) -> None:
        if self.strategy not in MIN_REPLIES or not self.num_clients:
            return
        options = {**STRATEGIES[self.strategy].defaults(), **self.strategy_options}
        f = int(options["num_malicious_nodes"])
        sampled = self.sampled_per_round()
        n, need = math.ceil(sampled / self.bucket_size), MIN_REPLIES[self.strategy](f)
        inputs = "replies" if self.bucket_size == 1 else f"buckets of federation.bucket_size={self.bucket_size}"
        if n < need:
            raise ConfigError(f"federation.{self.strategy}.num_malicious_nodes: {f} needs at least {need} {inputs} "
                              f"per round; a round has {n} (federation.num_clients={self.num_clients}, "
                              f"fraction_train={self.fraction_train:g}, min_train_nodes={self.min_train_nodes})")
        select = options.get("num_nodes_to_select")
        if self.strategy == "multikrum" and select is not None and select > n - f:
            raise ConfigError(f"federation.multikrum.num_nodes_to_select: {select:g} is more than the {n - f} "
                              f"updates left after {f} malicious ones of the {n} {inputs} a round has")


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """The whole study: what to search, on which data, federated how, judged by what."""

    study: StudySection = field(default_factory=StudySection)
    objectives: dict[str, str] = field(default_factory=lambda: {"accuracy": "maximize", "macs": "minimize"})
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    source: str = ""  # the file it came from, for messages and default paths

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def storage(self) -> str:
        return self.study.storage or default_storage(self.study.name, self.source)

    def replace_study(self, **changes: Any) -> StudyConfig:
        """Copy with fields of the [study] section changed (CLI flags)."""
        from dataclasses import replace

        return replace(self, study=replace(self.study, **changes))


def default_storage(study_name: str, config_path: str | Path = "") -> str:
    """SQLite file named after the study, beside the config file (studies/ by default)."""
    folder = Path(config_path).parent if config_path else Path("studies")
    return f"sqlite:///{folder / (study_name + '.db')}"


# --------------------------------------------------------------------------- parsing

_SECTIONS = {
    "study": StudySection,
    "constraints": ConstraintsConfig,
    "data": DataConfig,
    "federation": FederationConfig,
    "supernet": SupernetConfig,
    "privacy": PrivacyConfig,
    "latency": LatencyConfig,
}
_TOP_LEVEL = ("study", "objectives", "constraints", "space", "data", "federation", "supernet", "privacy", "latency")


MAX_CONFIG_BYTES = 1_000_000  # a study TOML is a few kB


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read, override and validate a study TOML file.

    Deprecated keys (the flat strategy options of earlier versions) are read and a line
    naming the new key is printed to stderr.

    Raises:
        ConfigError: one line naming the file and key.
    """
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; expected a study TOML file of at most "
                              f"{MAX_CONFIG_BYTES:,} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; expected a study TOML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    notes: list[str] = []
    try:
        apply_overrides(doc, overrides)
        config = parse_config(doc, source=str(path), deprecations=notes)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for note in notes:
        print(f"fednas: warning: {path}: {note}", file=sys.stderr)
    if config.federation.num_clients == 0:
        config = _clients_from_data(doc, config, path)
    return config


def _clients_from_data(doc: dict[str, Any], config: StudyConfig, path: Path) -> StudyConfig:
    """``num_clients = 0`` (partition "natural"): one client per user of the training split."""
    from fednas.data import DataError

    d = config.data
    try:
        train, _ = d.datasets(config.study.seed)
    except DataError as exc:
        raise ConfigError(f"{path}: data: {exc}") from None
    if train.groups is None:
        raise ConfigError(f"{path}: data.partition: 'natural' needs a source with users (e.g. leaf); "
                          f"source {d.source!r} has none")
    users = len(set(train.groups.tolist()))
    doc = {**doc, "federation": {**_table(doc, "federation"), "num_clients": users}}
    try:
        return parse_config(doc, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc} (federation.num_clients = {users}: the data's users, "
                          "partition 'natural')") from None


def apply_overrides(doc: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``dotted.key=value`` strings in place; values are TOML literals or bare strings."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        parts = key.split(".")
        node = doc
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a table")
        node[parts[-1]] = value


def parse_config(doc: dict[str, Any], *, source: str = "", deprecations: list[str] | None = None) -> StudyConfig:
    """Validate a parsed TOML document into a ``StudyConfig``.

    Args:
        doc: the TOML document (or a stored ``StudyConfig.to_dict()``).
        source: the file it came from, for default paths.
        deprecations: receives one line per deprecated key that was read (else they are
            read silently, as for configs stored by earlier versions).

    Raises:
        ConfigError: naming the dotted key and what was expected.
    """
    unknown = sorted(set(doc) - set(_TOP_LEVEL))
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}; valid: {', '.join(_TOP_LEVEL)}")
    parts: dict[str, Any] = {}
    natural = _table(doc, "data").get("partition") == "natural"
    for name, cls in _SECTIONS.items():
        table = _table(doc, name)
        if name == "federation":
            table = _strategy_options(table, deprecations if deprecations is not None else [])
            if natural and "num_clients" not in table:
                table = {**table, "num_clients": 0}  # one client per user: counted from the data
        parts[name] = _build(cls, table, name)
        parts[name].check()
    parts["objectives"] = _objectives(_table(doc, "objectives") or {"accuracy": "maximize", "macs": "minimize"})
    parts["space"] = _space(_table(doc, "space"))
    config = StudyConfig(**parts, source=source)
    _cross_check(config)
    return config


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table, got {_show(value)}")
    return value


def _build(cls: type, table: dict[str, Any], section: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key; valid: {', '.join(_public(known))}")
        if key in ("strategy_options", "rule_options"):
            kwargs[key] = value
        elif key == "tiers":
            clients = table.get("num_clients", FederationConfig.num_clients)
            kwargs[key] = _tiers(value, clients if isinstance(clients, int) and clients >= 0 else 1)
        else:
            kwargs[key] = _coerce(value, known[key].type, f"{section}.{key}")
    return cls(**kwargs)


def _public(known: dict[str, Any]) -> list[str]:
    return [k for k in known if k not in ("strategy_options", "rule_options")] + (
        ["<strategy> (a sub-table)"] if "strategy_options" in known
                                                             else [])


def _strategy_options(table: dict[str, Any], deprecations: list[str]) -> dict[str, Any]:
    """Fold ``[federation.<strategy>]`` sub-tables (and the old flat keys) into ``strategy_options``.

    Only the chosen strategy's options are kept, with defaults filled in; sub-tables of the
    other registered strategies are checked for unknown keys and otherwise ignored.
    """
    table = dict(table)
    strategy = table.get("strategy", "fedavg")
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ConfigError(f"federation.strategy: expected one of {list(STRATEGIES)}, got {_show(strategy)}")
    chosen: dict[str, Any] = {}
    rules: dict[str, dict[str, Any]] = {}
    stored_rules = table.pop("rule_options", None)  # a config stored by this version
    if isinstance(stored_rules, dict):
        rules.update({k: dict(v) for k, v in stored_rules.items() if k in STRATEGIES and isinstance(v, dict)})
    stored = table.pop("strategy_options", None)  # a config stored by this version
    if stored is not None:
        if not isinstance(stored, dict):
            raise ConfigError(f"federation.strategy_options: expected a table, got {_show(stored)}")
        chosen.update(stored)
    for key, (owner, option) in LEGACY_KEYS.items():
        if key not in table:
            continue
        value = table.pop(key)
        applies = owner == strategy or (owner == "fedadam" and option in STRATEGIES[strategy].options)
        deprecations.append(
            f"federation.{key} is deprecated; use [federation.{strategy if applies else owner}] {option} = ..."
            + ("" if applies else f" (ignored: strategy is {strategy!r})"))
        if applies:
            chosen.setdefault(option, value)
    for name, spec in STRATEGIES.items():
        sub = table.pop(name, None)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConfigError(f"federation.{name}: expected a table of {name} options, got {_show(sub)}")
        for key in sub:
            if key not in spec.options:
                raise ConfigError(f"federation.{name}.{key}: unknown option of strategy {name!r}; valid: "
                                  f"{', '.join(spec.options) or 'none'}")
        rules[name] = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in sub.items()}
        if name == strategy:
            chosen.update(sub)
    for key, value in list(chosen.items()):
        if key in STRATEGIES[strategy].options and (isinstance(value, int) and not isinstance(value, bool)):
            chosen[key] = float(value)
    table["strategy_options"] = {**STRATEGIES[strategy].defaults(), **chosen}
    table["rule_options"] = rules
    return table


def _coerce(value: Any, type_name: Any, key: str) -> Any:
    t = type_name if isinstance(type_name, str) else type_name.__name__
    if t == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
    if t == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**62:
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
    if t == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{key}: expected a finite number, got {_show(value)}")
    if t == "str":
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_show(value)}")
    raise ConfigError(f"{key}: unsupported field type {t}")  # pragma: no cover - schema bug


def _objectives(table: dict[str, Any]) -> dict[str, str]:
    if not table:
        raise ConfigError("objectives: expected at least one objective")
    out = {}
    for name, direction in table.items():
        if name not in OBJECTIVES:
            raise ConfigError(f"objectives.{name}: unknown objective; valid: {', '.join(OBJECTIVES)}")
        if direction not in DIRECTIONS:
            raise ConfigError(f"objectives.{name}: expected 'maximize' or 'minimize', got {_show(direction)}")
        out[name] = direction
    return out


def _space(table: dict[str, Any]) -> SpaceConfig:
    from search_spaces import domain_from_config, get_search_space, with_compression

    table = dict(table)
    name = table.pop("name", "mobilenet")
    if not isinstance(name, str):
        raise ConfigError(f"space.name: expected a string, got {_show(name)}")
    labels = table.pop("labels", {})
    if not isinstance(labels, dict):
        raise ConfigError(f"space.labels: expected a table, got {_show(labels)}")
    try:
        space = with_compression(get_search_space(name, table))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"space: {exc}") from None
    domains = {}
    for label, value in labels.items():
        try:
            domains[label] = domain_from_config(value, f"space.labels.{label}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    try:
        space.resolve(domains)
    except ValueError as exc:
        raise ConfigError(f"space.labels: {exc}") from None
    return SpaceConfig(name=name, options=table, labels=labels)


def _cross_check(config: StudyConfig) -> None:
    from fednas.data import LOADERS, PARTITIONERS

    if config.data.source not in LOADERS:
        raise ConfigError(f"data.source: expected one of {sorted(LOADERS)}, got {config.data.source!r}")
    if config.data.partition not in PARTITIONERS:
        raise ConfigError(f"data.partition: expected one of {sorted(PARTITIONERS)}, got {config.data.partition!r}")
    if config.data.source == "torchvision" and not config.data.name:
        raise ConfigError("data.name: expected a torchvision dataset class name (e.g. 'MNIST') for source 'torchvision'")
    if config.federation.num_clients == 0 and config.data.partition != "natural":
        raise ConfigError(f"federation.num_clients: 0 (one client per user) needs data.partition = 'natural'; "
                          f"got partition {config.data.partition!r}")
    _check_pruning(config)
    _check_policy(config)
    for rule in _label_values(config.space.labels.get("aggregation")):
        if isinstance(rule, str):
            config.federation.for_rule(rule)  # each rule a trial may pick can run this federation
    _check_mode(config)
    _check_privacy(config)
    _check_secure(config)
    _check_latency(config)
    bad = [name for name in config.constraints.active() if name not in OBJECTIVES]
    if bad:  # pragma: no cover - the schema only has known names
        raise ConfigError(f"constraints: unknown bound(s) {bad}")


def needs_latency(config: StudyConfig) -> bool:
    """Whether the study scores ``latency_ms`` (an objective or a bound)."""
    return "latency_ms" in config.objectives or bool(config.constraints.max_latency_ms)


def _check_latency(config: StudyConfig) -> None:
    if not needs_latency(config):
        return
    lat = config.latency
    if lat.table:
        path = Path(lat.table)
        if not path.is_file():
            raise ConfigError(f"latency.table: {lat.table!r} is not a file; expected a table written by "
                              "fednas latency profile")
        return
    missing = RUNTIMES[lat.runtime].missing()
    if missing:
        raise ConfigError(f"latency.runtime: {lat.runtime!r} needs {missing}, which is not installed "
                          f"(pip install 'fednas[{RUNTIMES[lat.runtime].extra}]')")


def _label_values(value: Any) -> list[Any]:
    """The values a label's config entry names: a scalar, a list of choices, or a range's ends."""
    if value is None:
        return []
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return [value.get("low"), value.get("high")]
    return [value]


def _check_policy(config: StudyConfig) -> None:
    """A greedy/DP ``compression_policy`` re-spends the bytes of the labels' uniform widths: a study whose weights
    always stay float32 gives it nothing to spend."""
    labels = config.space.labels
    policies = [p for p in _label_values(labels.get("compression_policy")) if p != "uniform"]
    if not policies:
        return
    bits = [*_label_values(labels.get("weight_bits")),
            *[v for k, val in labels.items() if k.endswith("_wbits") for v in _label_values(val)]]
    if all(b in (32, 0) for b in bits):
        raise ConfigError(f"space.labels.compression_policy: {policies[0]!r} spends the packed bytes of the "
                          "weight_bits / s{i}_wbits widths by layer sensitivity; expected some weight_bits below 32 "
                          "(the weights stay float32 here)")


def _check_pruning(config: StudyConfig) -> None:
    """Federated pruning: ``prune_round`` inside the run, no downlink codec beside it, and every method a trial may
    draw able to rank every granularity it may draw."""
    labels = config.space.labels
    methods = _label_values(labels.get("prune_method")) or ["none"]
    if all(m == "none" for m in methods):
        return
    rounds = config.federation.rounds
    for r in _label_values(labels.get("prune_round")) or [1]:
        if isinstance(r, (int, float)) and not isinstance(r, bool) and r >= rounds:
            raise ConfigError(f"space.labels.prune_round: {r} must be < federation.rounds ({rounds}): the server "
                              "prunes after that round and later rounds train the pruned model")
    if any(c not in ("none", None) for c in _label_values(labels.get("downlink_codec"))):
        raise ConfigError("space.labels.prune_method: pruning cannot be combined with a downlink_codec (the "
                          "downlink delta's reference model changes shape when the server prunes)")
    from search_spaces.compression import GRANULARITY_METHODS

    for g in _label_values(labels.get("prune_granularity")) or ["channel"]:
        allowed = GRANULARITY_METHODS.get(g, ())
        bad = [m for m in methods if m != "none" and m not in allowed]
        if bad:
            raise ConfigError(f"space.labels.prune_method: {bad[0]!r} cannot rank prune_granularity = {g!r}; expected "
                              f"one of {list(allowed)} for it (a trial may draw both)")


def _check_mode(config: StudyConfig) -> None:
    """A supernet study needs an elastic family and no training-time compression; tiers need a supernet;
    successive halving trains from scratch, without federated pruning (its round would repeat per rung)."""
    if config.study.fidelity == "halving":
        if config.study.mode != "scratch":
            raise ConfigError("study.fidelity: 'halving' works on from-scratch trials (study.mode = 'scratch'); a "
                              "supernet study does not train its candidates")
        if any(m != "none" for m in _label_values(config.space.labels.get("prune_method"))):
            raise ConfigError("space.labels.prune_method: federated pruning cannot be combined with "
                              "study.fidelity = 'halving' (each rung continues from stored weights)")
    if config.study.mode != "supernet":
        if config.federation.tiers:
            raise ConfigError("federation.tiers: device tiers need study.mode = 'supernet' (each tier trains the "
                              "subnets within its budget; a from-scratch trial trains one model on every node)")
        return
    from search_spaces import domain_from_config, get_search_space

    space = get_search_space(config.space.name, config.space.options)
    own = space.domains()
    try:
        space.supernet({k: domain_from_config(v, k) for k, v in config.space.labels.items() if k in own})
    except ValueError as exc:
        raise ConfigError(f"study.mode: {exc}") from None
    if config.federation.bucket_size != 1:
        raise ConfigError(f"federation.bucket_size: expected 1 with study.mode = 'supernet' (subnets are aggregated "
                          f"element by element, not by a rule that buckets could help), got "
                          f"{config.federation.bucket_size}")
    if any(v == "group" for v in _label_values(config.space.labels.get("norm"))):
        raise ConfigError("space.labels.norm: 'group' cannot share weights in a supernet (its groups change with "
                          "the width); expected 'batch' with study.mode = 'supernet'")
    for label, off in TRAINING_LABELS.items():
        if any(v != off for v in _label_values(config.space.labels.get(label))):
            raise ConfigError(f"space.labels.{label}: study.mode = 'supernet' evaluates subnets with inherited "
                              f"weights, so compression applied while training is not searched there; expected "
                              f"{off!r} (post-training int8 objectives are fine)")


def _check_privacy(config: StudyConfig) -> None:
    """Central DP holds for FedAvg's equal-weight mean of clipped updates, released as they are: the
    strategies, labels and federation settings that would change what the server releases are refused."""
    privacy, fed, labels = config.privacy, config.federation, config.space.labels
    noise = [v for v in _label_values(labels.get("dp_noise_multiplier")) if v is not None]
    if not privacy.on:
        if noise:
            raise ConfigError("space.labels.dp_noise_multiplier: needs privacy.mode = 'central' or 'local' (privacy "
                              "is off)")
        if "epsilon" in config.objectives:
            raise ConfigError("objectives.epsilon: needs privacy.mode = 'central' or 'local' (privacy is off)")
        if config.constraints.max_epsilon:
            raise ConfigError("constraints.max_epsilon: needs privacy.mode = 'central' or 'local' (privacy is off)")
        return
    why = f"with privacy.mode = {privacy.mode!r}"
    for z in noise:
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not 0 < z <= MAX_NOISE:
            raise ConfigError(f"space.labels.dp_noise_multiplier: expected numbers in (0, {MAX_NOISE:g}], got {z!r}")
    if privacy.local:
        _check_local_dp(config, why)
        return
    if config.study.fidelity == "halving":
        raise ConfigError(f"study.fidelity: 'halving' cannot be combined {why} (each rung would continue a run "
                          "whose privacy spent is not carried over); use 'none'")
    if config.study.mode == "supernet":
        raise ConfigError(f"privacy.mode: {privacy.mode!r} is not supported in supernet studies (study.mode = "
                          "'supernet' aggregates subnets element by element); train candidates from scratch")
    _require_plain_mean(config, why, DP_STRATEGIES,
                        "the noise is calibrated to an equal-weight mean of clipped updates",
                        "the server must release the plain mean of clipped updates for the accountant to hold")
    _refuse_bn_pooling(fed, why, "unprotected")
    if privacy.clipping == "adaptive" and privacy.clipped_count_stddev:
        for z in noise or [privacy.noise_multiplier]:
            if z >= 2 * privacy.clipped_count_stddev:
                raise ConfigError(f"privacy.clipped_count_stddev: {privacy.clipped_count_stddev:g} must exceed half "
                                  f"the noise multiplier {z:g} (adaptive clipping spends part of the budget on the "
                                  "clipped count); set it higher or 0 for the default")


def _check_local_dp(config: StudyConfig, why: str) -> None:
    """DP-SGD on the clients (Opacus): per-example gradients of a plain cross-entropy loss, Poisson-sampled
    batches, no batch norm, and nothing else that reads a client's data outside it."""
    fed, labels = config.federation, config.space.labels
    if importlib.util.find_spec("opacus") is None:
        raise ConfigError("privacy.mode: 'local' needs Opacus, which is not installed (pip install 'fednas[privacy]')")
    if config.study.mode == "supernet":
        raise ConfigError(f"privacy.mode: {config.privacy.mode!r} is not supported in supernet studies (study.mode = "
                          "'supernet'); train candidates from scratch")
    if config.study.fidelity == "halving":
        raise ConfigError(f"study.fidelity: 'halving' cannot be combined {why} (each rung would continue a run "
                          "whose clients' privacy spent is not carried over); use 'none'")
    norms = _label_values(labels.get("norm"))
    if not norms or any(v != "group" for v in norms):
        raise ConfigError(f"space.labels.norm: expected 'group' {why} (Opacus cannot compute per-example gradients "
                          f"through batch norm), got {labels.get('norm', 'batch')!r}")
    if config.privacy.clipping != "fixed":
        raise ConfigError(f"privacy.clipping: expected 'fixed' {why} (DP-SGD clips each example's gradient at "
                          "privacy.clipping_norm)")
    rules = [fed.strategy, *(r for r in _label_values(labels.get("aggregation")) if r)]
    if "fedprox" in rules:
        raise ConfigError(f"federation.strategy: 'fedprox' cannot be used {why} (its proximal term has no "
                          "per-example gradient for DP-SGD to clip)")
    if any(v for v in _label_values(labels.get("kd_weight"))):
        raise ConfigError(f"space.labels.kd_weight: expected 0 {why} (DP-SGD trains the plain cross-entropy loss)")
    if "taylor" in _label_values(labels.get("prune_method")):
        raise ConfigError(f"space.labels.prune_method: 'taylor' cannot be used {why} (it scores channels on each "
                          "client's data in the clear); the data-free l1, l2 and fpgm can")
    if "weight" in _label_values(labels.get("prune_granularity")) and any(
            m != "none" for m in _label_values(labels.get("prune_method"))):
        raise ConfigError(f"space.labels.prune_granularity: 'weight' cannot be used {why} (keeping the pruned "
                          "weights at zero reparametrizes them, which Opacus's per-example gradients do not see)")
    _refuse_bn_pooling(fed, why, "unprotected")


def _require_plain_mean(config: StudyConfig, why: str, rules: tuple[str, ...], rule_reason: str,
                        label_reason: str) -> None:
    """What central DP and secure aggregation share: the run's rule (and every rule the ``aggregation`` label
    allows) is one of ``rules``, and no update codec or federated pruning changes the mean."""
    fed, labels = config.federation, config.space.labels
    if fed.bucket_size != 1:
        raise ConfigError(f"federation.bucket_size: expected 1 {why} ({rule_reason}), got {fed.bucket_size}")
    for rule in [fed.strategy, *(r for r in _label_values(labels.get("aggregation")) if r)]:
        if rule not in rules:
            key = "federation.strategy" if rule == fed.strategy else "space.labels.aggregation"
            raise ConfigError(f"{key}: {rule!r} cannot be used {why}; expected one of {list(rules)} ({rule_reason})")
    for label, off in (("uplink_codec", "none"), ("downlink_codec", "none"), ("prune_method", "none")):
        if any(v != off for v in _label_values(labels.get(label))):
            raise ConfigError(f"space.labels.{label}: expected {off!r} {why} ({label_reason})")


def _refuse_bn_pooling(fed: FederationConfig, why: str, how: str) -> None:
    """The batch-norm pooling round trip sends each client's moments ``how`` (unprotected, in the clear)."""
    if fed.bn_recalibration != "off":
        raise ConfigError(f"federation.bn_recalibration: expected 'off' {why} (pooling batch-norm statistics sends "
                          f"each client's moments {how}), got {fed.bn_recalibration!r}")


def _check_secure(config: StudyConfig) -> None:
    """A secure sum gives the server the weighted mean and nothing else: rules, codecs and protocols that need
    each client's update (or change it after the client masked it) are refused beside it."""
    privacy, fed = config.privacy, config.federation
    if not privacy.secure:
        return
    why = f"with privacy.secure_aggregation = {privacy.secure_aggregation!r}"
    if privacy.secure_aggregation == "ckks" and importlib.util.find_spec("tenseal") is None:
        raise ConfigError("privacy.secure_aggregation: 'ckks' needs TenSEAL, which is not installed "
                          "(pip install 'fednas[secure]')")
    if privacy.on:
        raise ConfigError(f"privacy.mode: {privacy.mode!r} cannot yet be combined {why} (the central-DP wrapper noises "
                          "the plain mean of clipped updates); set one of them to 'off'")
    if config.study.mode == "supernet":
        raise ConfigError(f"privacy.secure_aggregation: not supported in supernet studies (study.mode = 'supernet' "
                          "aggregates subnets element by element); train candidates from scratch")
    _require_plain_mean(config, why, SECURE_STRATEGIES,
                        "a secure sum gives the server the weighted mean, not each update",
                        "the protocol quantizes and masks the model itself; pruning ranks the plain aggregate's "
                        "channels with client queries")
    _refuse_bn_pooling(fed, why, "in the clear")
    sampled = max(int(fed.num_clients * fed.fraction_train), fed.min_train_nodes)
    if sampled < 3:
        raise ConfigError(f"federation.fraction_train: {why} a round needs at least 3 clients (with 2, the sum "
                          f"reveals the other client's update), but {sampled} of {fed.num_clients} are sampled")
    if privacy.secure_aggregation == "secagg+" and fed.num_clients * 2 ** privacy.secagg_quantization_bits > 2**32:
        raise ConfigError(f"privacy.secagg_quantization_bits: {privacy.secagg_quantization_bits} bits for "
                          f"{fed.num_clients} clients overflow the protocol's 32-bit modulus; expected at most "
                          f"{32 - math.ceil(math.log2(fed.num_clients))}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {_show(got)}")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)

