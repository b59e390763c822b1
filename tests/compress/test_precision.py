"""Mixed-precision weights: the bit plan per stage, the packed bytes decoding bit for bit, labels, and a study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fednas.compress import pack_bits, quantize_weights, unpack_bits, unpack_weight, weight_plan
from search_spaces import CompressionSettings, build_model, get_search_space, preset, with_compression


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_codes_of_any_width_pack_into_ceil_n_bits_over_8_bytes_and_back(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 2**bits, 997)
    packed = pack_bits(codes, bits)
    assert packed.nbytes == math.ceil(997 * bits / 8)
    assert np.array_equal(unpack_bits(packed, bits, 997), codes)


def _model(name: str = "mobilenet_tiny") -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    arch = preset(name)
    return build_model(arch, num_classes=10, in_channels=1), arch


def test_stage_bits_apply_to_that_stages_blocks_and_the_rest_takes_weight_bits() -> None:
    model, arch = _model()
    plan = weight_plan(model, arch, 8, (4, 0, 6))
    first = sum(s.depth for s in arch.stages[:1])
    third = range(sum(s.depth for s in arch.stages[:2]), sum(s.depth for s in arch.stages[:3]))
    for name, bits in plan.items():
        if name.startswith("blocks."):
            k = int(name.split(".")[1])
            assert bits == (4 if k < first else 6 if k in third else 8), name
        else:
            assert bits == 8, name  # stem, head, classifier
    convs_and_linears = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(plan) == sorted(f"{n}.weight" for n in convs_and_linears)
    with pytest.raises(ValueError, match="expected one of"):
        weight_plan(model, arch, 5)
    with pytest.raises(ValueError, match=f"s{len(arch.stages) + 1}_wbits: the architecture has"):
        weight_plan(model, arch, 8, (0,) * len(arch.stages) + (4,))


def test_resnet_stages_map_to_their_blocks_too() -> None:
    model, arch = _model("resnet_micro")
    plan = weight_plan(model, arch, 32, (16,))
    assert {b for n, b in plan.items() if n.startswith("blocks.0.")} == {16}
    assert {b for n, b in plan.items() if not n.startswith("blocks.")} == {32}


@pytest.mark.parametrize("bits", [32, 16, 8, 6, 4])
def test_the_packed_weights_decode_to_the_quantized_model_bit_for_bit(bits: int) -> None:
    model, arch = _model()
    plan = weight_plan(model, arch, bits)
    quantized, packed = quantize_weights(model, plan)
    params, original = dict(quantized.named_parameters()), dict(model.named_parameters())
    expected = 0
    for name in plan:
        w, q = original[name].detach(), params[name].detach()
        assert torch.equal(unpack_weight(packed.tensors[name]), q), name
        n, out = w.numel(), w.shape[0]
        if bits == 32:
            assert torch.equal(q, w)
            expected += 4 * n
        elif bits == 16:
            assert torch.equal(q, w.half().float())
            expected += 2 * n
        else:
            top = 2 ** (bits - 1) - 1
            scale = torch.from_numpy(np.frombuffer(packed.tensors[name]["scales"], np.float16).astype(np.float32))
            assert (w - q).reshape(out, -1).abs().amax(1).le(scale / 2 + 1e-7).all()  # round to nearest
            assert ((q.reshape(out, -1) / scale[:, None]).round().abs() <= top).all()
            expected += math.ceil(n * bits / 8) + 2 * out
    rest = sum(t.numel() * 4 for k, t in model.state_dict().items() if k not in plan and t.is_floating_point())
    assert packed.nbytes == expected + rest
    assert quantized is not model and torch.equal(dict(model.named_parameters())[next(iter(plan))], original[next(iter(plan))])


def test_precision_labels_per_stage_of_the_space() -> None:
    space = with_compression(get_search_space("mobilenet", {"base_channels": [8, 16, 24], "strides": [2, 2, 2]}))
    domains = space.domains()
    assert domains["weight_bits"].value == 32 and [f"s{i}_wbits" for i in (1, 2, 3)] == [
        k for k in domains if k.endswith("_wbits")]
    space.resolve({"s3_wbits": _choice((0, 4, 8))})
    with pytest.raises(ValueError, match="unknown label 's4_wbits'"):
        space.resolve({"s4_wbits": _choice((4, 8))})
    with pytest.raises(ValueError, match="s1_wbits"):
        space.resolve({"s1_wbits": _choice((3,))})
    c = CompressionSettings.from_labels({"weight_bits": 8, "s1_wbits": 0, "s2_wbits": 4, "s3_wbits": 0})
    assert c.stage_weight_bits == (0, 4, 0) and c.precision_on and c.describe() == "w8 stages 8/4/8"
    assert CompressionSettings.from_json(c.to_json()) == c
    assert not CompressionSettings.from_labels({"s1_wbits": 0, "s2_wbits": 32}).precision_on


def _choice(values: tuple) -> object:
    from search_spaces import Choice

    return Choice(values)


PRECISION = ("study.trials=4", "objectives={accuracy_quantized='maximize', weight_bytes='minimize'}",
             "space.labels.weight_bits=[32, 8, 4]", "space.labels.s2_wbits=[0, 4]", "federation.rounds=1",
             "constraints.max_weight_bytes=20000")


def test_a_study_searches_precision_and_its_export_holds_the_quantized_weights(tiny_study_factory,
                                                                                 tmp_path: Path) -> None:
    import optuna
    from safetensors.torch import load_file

    from fednas.export import source_from_trial, write_bundle

    _, config, result = tiny_study_factory("precision", PRECISION)
    study = optuna.load_study(study_name="precision", storage=config.storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    for t in done:
        p = t.user_attrs["precision"]
        assert t.values == [t.user_attrs["accuracy_quantized"], t.user_attrs["weight_bytes"]]
        assert p["weight_bits"] == t.params["weight_bits"]
        assert t.constraints == {"max_weight_bytes": t.user_attrs["weight_bytes"] - 20000}
        assert p["stage_weight_bits"] == ([0, 4] if t.params["s2_wbits"] == 4 else [])
        if p["weight_bits"] == 32 and not p["stage_weight_bits"]:
            assert t.user_attrs["accuracy_quantized"] == t.user_attrs["accuracy"]
    low = min(done, key=lambda t: t.user_attrs["weight_bytes"])
    quantized = next((t for t in done if t.user_attrs["precision"]["weight_bits"] != 32
                      or t.user_attrs["precision"]["stage_weight_bits"]), None)
    if quantized is None:
        pytest.skip("the sampler drew only float32 candidates")  # seeded: does not happen with this config
    bundle = write_bundle(source_from_trial(config.storage, "precision", trial=quantized.number), tmp_path / "b",
                          formats=[])
    weights = load_file(str(bundle.out / "model.safetensors"))
    convs = [k for k, v in weights.items() if k.endswith("weight") and v.dim() == 4]
    bits = quantized.user_attrs["precision"]
    if bits["weight_bits"] in (8, 4):  # integer codes: each channel takes at most 2^b - 1 distinct values
        w = weights[convs[0]]
        assert max(len(torch.unique(c)) for c in w.reshape(w.shape[0], -1)) <= 2 ** bits["weight_bits"] - 1
    card = (bundle.out / "README.md").read_text()
    assert "Weights at the chosen precision" in card and "The exported files hold these weight values" in card
    doc = json.loads((bundle.out / "metrics.json").read_text())
    assert doc["metrics"]["weight_bytes"] == quantized.user_attrs["weight_bytes"] >= low.user_attrs["weight_bytes"]


POLICY = ("study.trials=1", "objectives={accuracy_quantized='maximize', weight_bytes='minimize'}",
          "space.labels.weight_bits=4", "space.labels.compression_policy='dp'", "federation.rounds=1")


def test_a_dp_policy_trial_stores_its_plan_and_the_bundle_holds_those_widths(tiny_study_factory,
                                                                             tmp_path: Path) -> None:
    import optuna
    from safetensors.torch import load_file

    from fednas.compress import check_plan
    from fednas.export import source_from_trial, write_bundle
    from fednas.export._bundle import _model

    _, config, _ = tiny_study_factory("policy", POLICY)
    study = optuna.load_study(study_name="policy", storage=config.storage)
    (t,) = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    p = t.user_attrs["precision"]
    assert p["policy"] == "dp" and p["spent"] <= p["budget"]
    source = source_from_trial(config.storage, "policy", trial=t.number)
    plan = check_plan(_model(source, 10, 1), p["plan"], "stored")
    assert set(plan.values()) != {4}  # the knapsack moved bytes between layers (strictly better than uniform)
    counts: dict[str, int] = {}
    for name, bits in plan.items():
        counts[str(bits)] = counts.get(str(bits), 0) + source.state[name].numel()
    assert counts == p["weights_by_bits"]  # the stored plan is the one the trial was scored with
    bundle = write_bundle(source, tmp_path / "b", formats=[])
    weights = load_file(str(bundle.out / "model.safetensors"))
    for name, bits in plan.items():  # integer codes: each output channel holds at most 2^b - 1 distinct values
        if bits <= 8:
            w = weights[name].reshape(weights[name].shape[0], -1)
            assert max(len(torch.unique(c)) for c in w) <= 2 ** bits - 1, name
    doc = json.loads((bundle.out / "metrics.json").read_text())
    assert doc["metrics"]["precision"]["plan"] == p["plan"]
    assert doc["metrics"]["weight_bytes"] == t.user_attrs["weight_bytes"]
    assert "'dp' compression policy" in (bundle.out / "README.md").read_text()
    # a stored plan that does not fit the model is refused, naming the trial
    bad = dict(source.metrics["precision"], plan={"nope.weight": 4})
    from dataclasses import replace

    from fednas.config import ConfigError
    with pytest.raises(ConfigError, match=f"trial {t.number}: stored precision.plan"):
        _model(replace(source, metrics={**source.metrics, "precision": bad}), 10, 1)
