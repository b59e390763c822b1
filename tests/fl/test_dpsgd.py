"""Local DP (privacy.mode = "local"): DP-SGD with Opacus on each client, accounted per client."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fednas.config import ConfigError, DataConfig, FederationConfig, PrivacyConfig, parse_config
from fednas.fl import RunSpec, run_federation
from fednas.train import TrainConfig, train
from search_spaces import build_model, preset

pytest.importorskip("opacus")
from fednas.fl._dpsgd import local_epsilon, train_dpsgd  # noqa: E402


def _model_and_data(n: int = 24):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(preset("mobilenet_micro"), norm="group"), num_classes=10, in_channels=1)
    x, y = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
    return model, x, y


def _delta(before: torch.nn.Module, after: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(a.detach() - b.detach()).flatten() for a, b in zip(after.parameters(), before.parameters())])


def test_without_clipping_or_noise_a_full_batch_step_is_plain_sgd() -> None:
    model, x, y = _model_and_data()
    config = TrainConfig(epochs=1, batch_size=len(y), lr=0.1, momentum=0.0, weight_decay=0.0, max_steps=1)
    plain, private = copy.deepcopy(model), copy.deepcopy(model)
    train(plain, x, y, config, seed=0)
    result, rate = train_dpsgd(private, x, y, config, seed=0, noise_multiplier=0.0, max_grad_norm=1e6)
    assert rate == 1.0 and result.steps == 1 and result.examples == len(y)  # Poisson at rate 1: every example
    assert torch.allclose(_delta(model, private), _delta(model, plain), atol=1e-5)
    assert not any(m._forward_hooks or m._backward_hooks for m in private.modules())  # Opacus's hooks are gone


def test_each_examples_gradient_is_clipped() -> None:
    model, x, y = _model_and_data()
    config = TrainConfig(epochs=1, batch_size=len(y), lr=1.0, momentum=0.0, weight_decay=0.0, max_steps=1)
    private = copy.deepcopy(model)
    train_dpsgd(private, x, y, config, seed=0, noise_multiplier=0.0, max_grad_norm=0.01)
    step = _delta(model, private).norm().item()  # mean of per-example gradients each of norm <= C, times lr
    assert 0 < step <= 0.01 * 1.0 + 1e-6


def test_local_epsilon_matches_googles_dp_accounting() -> None:
    import dp_accounting

    q, z, steps, delta = 0.05, 1.1, 300, 1e-5
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    reference = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta)
    assert local_epsilon([(z, q, steps)], delta) == pytest.approx(reference, rel=0.02)
    assert local_epsilon([(z, q, 100), (z, q, 200)], delta) == pytest.approx(local_epsilon([(z, q, 300)], delta))
    assert local_epsilon([], delta) == 0.0


def test_a_local_dp_run_grows_epsilon_per_round_reproducibly() -> None:
    arch = dataclasses.replace(preset("mobilenet_micro"), norm="group")
    fed = FederationConfig(num_clients=3, rounds=2, bn_recalibration="off", min_train_nodes=3)
    spec = RunSpec(DataConfig(limit=240), fed, 5, arch.to_dict(),
                   privacy=PrivacyConfig(mode="local", noise_multiplier=1.0, clipping_norm=1.0))
    a, b = run_federation(spec), run_federation(spec)
    eps = [r.epsilon for r in a.rounds]
    assert 0 < eps[0] < eps[1] == a.privacy["epsilon"] and a.privacy["mode"] == "local"
    state_a, state_b = a.arrays.to_torch_state_dict(), b.arrays.to_torch_state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # sampling and noise are seeded
    noisier = run_federation(dataclasses.replace(spec, privacy=dataclasses.replace(spec.privacy, noise_multiplier=3.0)))
    assert noisier.privacy["epsilon"] < a.privacy["epsilon"]
    from fednas.export._card import _privacy

    assert "DP-SGD" in _privacy({"privacy": a.privacy})


def _local(**sections) -> dict:
    doc = {"privacy": {"mode": "local"}, "federation": {"bn_recalibration": "off"},
           "space": {"labels": {"norm": "group"}}}
    for k, v in sections.items():
        doc[k] = {**doc.get(k, {}), **v}
    return doc


@pytest.mark.parametrize(("doc", "key"), [
    (_local(space={"labels": {"norm": ["batch", "group"]}}), "space.labels.norm"),
    (_local(space={"labels": {}}), "space.labels.norm"),
    (_local(federation={"strategy": "fedprox"}), "federation.strategy"),
    (_local(space={"labels": {"norm": "group", "kd_weight": 0.5}}), "space.labels.kd_weight"),
    (_local(space={"labels": {"norm": "group", "prune_method": "taylor"}}), "space.labels.prune_method"),
    (_local(privacy={"clipping": "adaptive"}), "privacy.clipping"),
    (_local(study={"fidelity": "halving"}), "study.fidelity"),
    (_local(federation={"bn_recalibration": "final"}), "federation.bn_recalibration"),
    (_local(privacy={"secure_aggregation": "secagg+"}), "privacy.mode"),
])
def test_impossible_local_dp_combinations_name_the_key(doc: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert str(err.value).startswith(key), str(err.value)


def test_local_dp_accepts_robust_rules_and_codecs_as_post_processing() -> None:
    config = parse_config(_local(federation={"strategy": "fedmedian"},
                                 space={"labels": {"norm": "group", "uplink_codec": "quantize",
                                                   "dp_noise_multiplier": [0.5, 2.0]}},
                                 objectives={"accuracy": "maximize", "epsilon": "minimize"}))
    assert config.privacy.local and not config.privacy.central
