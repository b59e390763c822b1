"""User-level central differential privacy of a run: Flower's DP wrappers and mods, seeded, accounted.

The server side is Flower's ``DifferentialPrivacyClientSideFixedClipping`` (and
``...AdaptiveClipping``) around the run's FedAvg/FedProx: the train config carries the
clipping norm, the mean of the clipped updates gets Gaussian noise of standard deviation
``z * C / n`` (``n`` clients sampled per round), and each released round is composed in
Flower's ``RdpAccountant`` (``flwr[dp]``, Google's dp-accounting). The client side is
Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod``, applied by ``privacy_mod`` only
to train messages that carry a clipping norm, innermost, so the update is clipped before
anything else touches the reply.

What fednas adds around them:

* **Seeded noise.** Flower draws its noise from NumPy's global generator; each round's
  aggregation runs with that generator seeded from the run seed and the round (and its
  state restored after), so a run's noise is reproducible.
* **Equal weights, exact counts.** The accountant holds for an equal-weight mean over the
  ``n`` clients the round sampled: clients report a weight of 1 (``DP_WEIGHT_KEY``) that
  the strategy averages by, and a round with a failed or missing reply is not released
  (the global model stays as it was; Flower's strict mode). No amplification by
  sampling is claimed (``SamplingMethod.NO_AMPLIFICATION``): the epsilon is an upper
  bound also when ``fraction_train`` < 1.
* **Integer buffers.** Flower's clipping multiplies every array of the update in place,
  which integer arrays (batch norm's ``num_batches_tracked``) refuse; clients send those
  back as received, as floats, so their update is zero. Batch-norm running statistics
  are part of the clipped, noised update; ``repair_batchnorm`` clamps running variances
  that noise made negative (post-processing, free under DP).
* **Adaptive clipping, accounted.** Flower's adaptive wrapper has no accountant, and it
  adds the round's noise with the clipping norm it has just updated rather than the one
  the clients clipped to; ``AdaptiveClipping`` noises with the latter, and composes each
  release at the effective multiplier of update and clipped-count noise together
  (``adaptive_effective_multiplier``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    Strategy,
)

from fednas._seeds import derive_seed
from fednas.config import FederationConfig, PrivacyConfig

__all__ = ["AdaptiveClipping", "DP_WEIGHT_KEY", "FixedClipping", "PrivacyReport", "adaptive_effective_multiplier",
           "make_accountant", "private", "privacy_mod", "repair_batchnorm"]

DP_WEIGHT_KEY = "dp-weight"  # each client's weight in the mean: 1 (equal weights)
CLIPPING_KEY = "dp-clipping"  # "fixed" | "adaptive": which Flower mod clips the reply
KEY_CLIPPING_NORM = "clipping_norm"  # Flower's own key (flwr.supercore.differential_privacy)


@dataclass(frozen=True)
class PrivacyReport:
    """What a run spent: (epsilon, delta) after ``releases`` noised rounds, and how."""

    mode: str
    clipping: str
    noise_multiplier: float
    clipping_norm: float  # the last round's (adaptive clipping moves it)
    delta: float
    epsilon: float
    releases: int
    clients_per_round: int
    population: int
    accountant: str = "rdp (no sampling amplification)"

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def make_accountant(privacy: PrivacyConfig, population: int) -> Any:
    """Flower's RDP accountant for user-level DP over ``population`` clients, without sampling amplification.

    Raises:
        ImportError: naming the extra when dp-accounting is not installed.
    """
    try:
        from flwr.serverapp import RdpAccountant
        from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig as FlowerPrivacy, SamplingMethod

        return RdpAccountant(FlowerPrivacy(target_delta=privacy.delta, population_size=population,
                                           neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                           sampling_method=SamplingMethod.NO_AMPLIFICATION))
    except ImportError as exc:  # flwr imports dp-accounting lazily
        raise ImportError(f"privacy.mode = 'central' needs the dp-accounting package: pip install 'fednas[privacy]' "
                          f"({exc})") from exc


def adaptive_effective_multiplier(update_multiplier: float, count_stddev: float) -> float:
    """The multiplier a Gaussian mechanism must have to cost what one adaptive-clipping round costs.

    A round releases the noised mean (sensitivity C, noise ``update_multiplier * C``) and
    the noised count of clipped clients (sensitivity 1 under adding or removing a client,
    noise ``count_stddev``); the two compose as one Gaussian mechanism of multiplier
    ``(z_update^-2 + sigma_count^-2)^-1/2`` (RDP of Gaussians adds their 1/z^2). Flower
    chooses ``z_update`` from the user's ``z`` as if the count's sensitivity were 1/2
    (Andrew et al.'s centred bits), which this does not assume.
    """
    return float((update_multiplier ** -2 + count_stddev ** -2) ** -0.5)


@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """NumPy's global generator seeded for the block (Flower's noise draws from it), then restored."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


class FixedClipping(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping wrapper with seeded noise and fednas's mod key."""

    def __init__(self, strategy: Strategy, noise_multiplier: float, clipping_norm: float, num_sampled_clients: int,
                 *, accountant: Any, seed: int) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients, accountant=accountant)
        self.seed = seed

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[CLIPPING_KEY] = "fixed"
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        with _seeded_numpy(derive_seed(self.seed, "dp-noise", server_round)):
            return super().aggregate_train(server_round, replies)

    def report(self, privacy: PrivacyConfig, population: int) -> PrivacyReport:
        spent = self.accountant.get_privacy_spent()
        return PrivacyReport("central", "fixed", self.noise_multiplier, self.clipping_norm, spent.delta,
                             float(spent.epsilon) if spent.num_releases else 0.0, spent.num_releases,
                             self.num_sampled_clients, population)


class AdaptiveClipping(DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive-clipping wrapper, accounted, with the noise of the norm clients clipped to.

    Like the fixed wrapper's accounted mode, a round is released only when all ``n`` sampled
    clients replied, and their weights are equal.
    """

    def __init__(self, strategy: Strategy, noise_multiplier: float, num_sampled_clients: int, *,
                 initial_clipping_norm: float, target_clipped_quantile: float, clip_norm_lr: float,
                 clipped_count_stddev: float, accountant: Any, seed: int) -> None:
        super().__init__(strategy, noise_multiplier, num_sampled_clients, initial_clipping_norm=initial_clipping_norm,
                         target_clipped_quantile=target_clipped_quantile, clip_norm_lr=clip_norm_lr,
                         clipped_count_stddev=clipped_count_stddev)
        self.user_noise_multiplier = noise_multiplier
        # what one round costs: the update's noise (Flower's adjusted multiplier) and the count's together
        self.effective_multiplier = adaptive_effective_multiplier(self.noise_multiplier, self.clipped_count_stddev)
        self.accountant, self.seed = accountant, seed
        self._sent_norm = initial_clipping_norm

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[CLIPPING_KEY] = "adaptive"
        self._sent_norm = self.clipping_norm
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if messages and len(messages) != self.num_sampled_clients:
            raise ValueError(f"round {server_round}: {len(messages)} clients sampled, expected "
                             f"{self.num_sampled_clients} (the noise is calibrated to that many)")
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        if len(ok) != len(replies) or len(ok) != self.num_sampled_clients:
            return None, None  # not released: a missing reply would change the mean's sensitivity
        weights = {float(next(iter(r.content.metric_records.values())).get(DP_WEIGHT_KEY, -1)) for r in ok}
        if weights != {1.0}:
            raise ValueError(f"round {server_round}: accounted aggregation needs equal client weights, got {weights}")
        with _seeded_numpy(derive_seed(self.seed, "dp-noise", server_round)):
            arrays, metrics = self.strategy.aggregate_train(server_round, ok)
            self._update_clip_norm_from_replies(ok)
            if arrays:
                clipped_to, self.clipping_norm = self.clipping_norm, self._sent_norm  # noise the norm clients used
                try:
                    arrays = self._add_noise_to_aggregated_arrays(arrays)
                finally:
                    self.clipping_norm = clipped_to
                self._compose()
        return arrays, metrics

    def _compose(self) -> None:
        from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

        self.accountant.compose(GaussianPrivacyEvent(noise_multiplier=self.effective_multiplier,
                                                     sample_size=self.num_sampled_clients,
                                                     population_size=self.accountant.config.population_size))

    def report(self, privacy: PrivacyConfig, population: int) -> PrivacyReport:
        spent = self.accountant.get_privacy_spent()
        return PrivacyReport("central", "adaptive", self.user_noise_multiplier, self.clipping_norm, spent.delta,
                             float(spent.epsilon) if spent.num_releases else 0.0, spent.num_releases,
                             self.num_sampled_clients, population,
                             accountant=f"rdp (no sampling amplification; effective multiplier "
                                        f"{self.effective_multiplier:.4g} with the clipped count)")


def private(strategy: Strategy, privacy: PrivacyConfig, fed: FederationConfig, *, noise_multiplier: float,
            seed: int) -> FixedClipping | AdaptiveClipping:
    """``strategy`` (a FedAvg or FedProx averaging by ``DP_WEIGHT_KEY``) wrapped for central DP, with its accountant."""
    n, population = fed.sampled_per_round(), fed.num_clients
    accountant = make_accountant(privacy, population)
    if privacy.clipping == "adaptive":
        return AdaptiveClipping(strategy, noise_multiplier, n, initial_clipping_norm=privacy.clipping_norm,
                                target_clipped_quantile=privacy.target_clipped_quantile,
                                clip_norm_lr=privacy.clip_norm_lr,
                                clipped_count_stddev=privacy.count_stddev(noise_multiplier),
                                accountant=accountant, seed=seed)
    return FixedClipping(strategy, noise_multiplier, privacy.clipping_norm, n, accountant=accountant, seed=seed)


def privacy_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Client mod: clip the update of a train message that carries a clipping norm (else pass through).

    Flower's ``fixedclipping_mod`` or ``adaptiveclipping_mod`` (the latter also reports
    whether it clipped) does the clipping; around the app, integer arrays go back as
    received (as floats: Flower's clipping scales every array) and the reply gets the
    equal weight the server averages by.
    """
    if msg.metadata.message_type != "train" or "config" not in msg.content.config_records:
        return call_next(msg, context)
    config = msg.content["config"]
    if KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    received = msg.content["arrays"]  # what the node holds (after the downlink mod, had there been one)

    def app(inner: Message, ctx: Context) -> Message:
        reply = call_next(inner, ctx)
        if reply.has_error():
            return reply
        arrays = reply.content["arrays"]
        fixed = {}
        for key in arrays.keys():
            if key in received and not np.issubdtype(arrays[key].numpy().dtype, np.floating):
                fixed[key] = Array(received[key].numpy().astype(np.float32))  # a counter: no update
        if fixed:
            reply.content["arrays"] = ArrayRecord({k: fixed.get(k, arrays[k]) for k in arrays.keys()})
        reply.content["metrics"][DP_WEIGHT_KEY] = 1.0
        return reply

    mod = adaptiveclipping_mod if str(config.get(CLIPPING_KEY, "fixed")) == "adaptive" else fixedclipping_mod
    return mod(msg, context, app)


def repair_batchnorm(model: Any, eps: float = 1e-5) -> None:
    """Clamp batch-norm running variances that the noise made negative (or zero)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            m.running_var.clamp_(min=eps)
