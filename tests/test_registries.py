"""Each catalogue is one registry, and what names it is what runs."""

from __future__ import annotations

import inspect

import pytest

from fednas.config import ConfigError, load_config, parse_config
from fednas.objectives import OBJECTIVES, objective_names
from fednas.strategies import LEGACY_KEYS, STRATEGIES
from search_spaces.compression import CODEC_CHOICES, PRUNE_METHODS


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_options_are_constructor_keywords(name: str) -> None:
    cls = STRATEGIES[name].load()
    params = inspect.signature(cls.__init__).parameters
    assert set(STRATEGIES[name].options) <= set(params), name
    from flwr.serverapp.strategy import FedAvg

    assert issubclass(cls, FedAvg)


def test_every_strategy_builds_with_its_defaults() -> None:
    from fednas.config import FederationConfig
    from fednas.fl import make_strategy

    for name, spec in STRATEGIES.items():
        strategy = make_strategy(FederationConfig(strategy=name, strategy_options=spec.defaults()))
        for key, value in spec.defaults().items():
            attr = {"server_learning_rate": "server_learning_rate"}.get(key, key)
            assert getattr(strategy, attr) == pytest.approx(value), (name, key)


def test_codec_and_pruning_labels_have_implementations() -> None:
    from fednas.compress import CODECS, PRUNING_METHODS

    for side, names in CODEC_CHOICES.items():
        assert set(names) - {"none"} <= set(CODECS), side
    assert set(PRUNE_METHODS) - {"none"} == set(PRUNING_METHODS)


def test_config_choices_come_from_the_objective_registry() -> None:
    assert objective_names("static") == ("macs", "params", "bytes", "latency_ms")
    assert {o.phase for o in OBJECTIVES.values()} == {"static", "trained", "post"}
    with pytest.raises(ConfigError, match="objectives.latency: unknown objective; valid: accuracy, macs"):
        parse_config({"objectives": {"latency": "minimize"}})


def test_strategy_sub_table_and_flat_keys(tiny_config, capsys) -> None:
    config = load_config(tiny_config, ["federation.strategy=fedadam", "federation.fedadam.eta=0.05"])
    assert config.federation.strategy_options == {"eta": 0.05, "eta_l": 0.1, "tau": 0.001, "beta_1": 0.9, "beta_2": 0.99}
    assert capsys.readouterr().err == ""
    old = load_config(tiny_config, ["federation.strategy=fedprox", "federation.proximal_mu=0.2", "federation.eta=0.3"])
    assert old.federation.strategy_options == {"proximal_mu": 0.2}
    err = capsys.readouterr().err
    assert "federation.proximal_mu is deprecated; use [federation.fedprox] proximal_mu" in err
    assert "federation.eta is deprecated" in err and "ignored: strategy is 'fedprox'" in err
    for bad, needle in (("federation.fedprox.mu=1", "federation.fedprox.mu: unknown option of strategy 'fedprox'"),
                        ("federation.fedavgm.server_momentum=1.5", "federation.fedavgm.server_momentum"),
                        ("federation.fedprox=3", "federation.fedprox: expected a table")):
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
            load_config(tiny_config, ["federation.strategy=fedavgm" if "fedavgm" in bad else "federation.strategy=fedprox", bad])
    assert set(LEGACY_KEYS) == {"proximal_mu", "server_lr", "server_momentum", "eta", "eta_l", "tau"}


def test_stored_config_round_trips_with_strategy_options(tiny_config) -> None:
    from fednas.study import config_from_stored

    config = load_config(tiny_config, ["federation.strategy=fedavgm", "federation.fedavgm.server_momentum=0.5"])
    again = config_from_stored(config.to_dict())
    assert again is not None and again.federation == config.federation
