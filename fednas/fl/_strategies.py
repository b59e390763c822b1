"""Building the Flower strategy of a run from the strategy registry (``fednas.strategies``).

The class comes from the registry entry of ``federation.strategy``; its keyword arguments
are fednas's sampling settings plus the strategy's options (``federation.strategy_options``),
bound against the class's own constructor. With an update codec configured
(``CompressionSettings.uplink_codec`` / ``downlink_codec``) the class is wrapped by
``fednas.compress.compressed``; with federated pruning, by ``fednas.fl._pruning.pruning``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import FedAvg, Strategy

from fednas.config import FederationConfig, PrivacyConfig
from fednas.strategies import STRATEGIES, get_strategy
from search_spaces import CompressionSettings

__all__ = ["STRATEGIES", "make_strategy", "sampling_kwargs", "strategy_kwargs"]


def sampling_kwargs(fed: FederationConfig) -> dict[str, Any]:
    # Evaluation is server-side on the held-out split, so no client-side evaluate round.
    return {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": fed.min_train_nodes,
        "min_evaluate_nodes": 0,
        "min_available_nodes": fed.min_train_nodes,
    }


def strategy_kwargs(fed: FederationConfig) -> tuple[type[FedAvg], dict[str, Any]]:
    """The strategy class of ``fed.strategy`` and its keyword arguments, checked against its constructor.

    Raises:
        ValueError: unknown strategy, or an option the class's constructor does not take.
    """
    spec = get_strategy(fed.strategy)
    cls = spec.load()
    options = {k: int(v) if k in spec.options and spec.options[k].integer else v
               for k, v in {**spec.defaults(), **fed.strategy_options}.items()}
    kwargs = {**sampling_kwargs(fed), **options}
    params = _init_keywords(cls)
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        raise ValueError(f"federation.{fed.strategy}: {cls.__name__} takes no option(s) {unknown}")
    return cls, kwargs


def _init_keywords(cls: type) -> set[str]:
    """The keywords ``cls(...)`` takes: its ``__init__``'s, and its bases' while each passes ``**kwargs`` on."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names - {"self"}


def make_strategy(fed: FederationConfig, compression: CompressionSettings | None = None, *, seed: int = 0,
                  prune_fn: Callable[..., Any] | None = None, privacy: PrivacyConfig | None = None) -> Strategy:
    """The strategy named by ``fed.strategy``, wrapped for compression when a codec is on.

    With ``privacy.central``, the strategy averages with equal weights and is wrapped by Flower's
    central-DP wrapper (``fednas.fl._privacy.private``; the config refuses codecs and pruning
    beside it), at the noise multiplier of the ``dp_noise_multiplier`` label or ``privacy``.

    With ``fed.bucket_size > 1`` the replies are averaged in seeded random buckets before the
    rule sees them (``fednas.fl._bucketing``; decoding comes first).

    With ``compression.prune_on`` and a ``prune_fn`` (the server's prune step, see
    ``fednas.fl._pruning``), also wrapped by ``pruning``: the aggregate of round
    ``prune_round`` is pruned and later train configs carry the channel masks.

    Raises:
        ValueError: unknown strategy name (listing the valid ones), option or codec.
    """
    if compression is not None and compression.aggregation:  # the trial's own rule (``aggregation`` label)
        fed = fed.for_rule(compression.aggregation)
    cls, kwargs = strategy_kwargs(fed)
    if getattr(cls, "takes_seed", False):  # a rule with seeded randomness of its own (DnC's coordinate subsets)
        kwargs = {**kwargs, "rule_seed": seed}
    if fed.bucket_size > 1:
        from fednas.fl._bucketing import bucketed

        cls, kwargs = bucketed(cls), {**kwargs, "bucket_size": fed.bucket_size, "bucket_seed": seed}
    if compression is not None and compression.codecs_on:
        from fednas.compress import codecs_for, compressed

        cls, kwargs = compressed(cls), {**kwargs, **codecs_for(compression), "seed": seed}
    if compression is not None and compression.prune_on and prune_fn is not None:
        from fednas.fl._pruning import pruning

        cls, kwargs = pruning(cls), {**kwargs, "prune_round": compression.prune_round, "prune_fn": prune_fn}
    if privacy is None or not privacy.central:
        return cls(**kwargs)
    from fednas.fl._privacy import DP_WEIGHT_KEY, private

    noise = compression.dp_noise_multiplier if compression and compression.dp_noise_multiplier is not None else None
    return private(cls(**{**kwargs, "weighted_by_key": DP_WEIGHT_KEY}), privacy, fed,
                   noise_multiplier=privacy.noise_multiplier if noise is None else noise, seed=seed)
