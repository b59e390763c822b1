from __future__ import annotations

import numpy as np
import pytest
import torch

from fednas.compress import (CODECS, Identity, Layout, Quantize, TopK, apply_update, codec_from_config,
                             encode_with_feedback, make_codec, pack_bits, payload_bytes, unpack_bits, wire_bytes)
from search_spaces import build_model, preset


def _state(name: str = "mobilenet_tiny") -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    model = build_model(preset(name), num_classes=10, in_channels=1)
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _update(state: dict[str, np.ndarray], seed: int = 1, scale: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(size=v.shape) * scale).astype(v.dtype) if v.dtype.kind == "f" else v
            for k, v in state.items()}


def _steps(codec: Quantize, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-element quantization step of ``codec`` for ``x``."""
    layout = Layout.of(x)
    _, step = codec.scales(layout.flatten(x), layout)
    per_element = np.repeat(step.astype(np.float64), layout.group_sizes(codec.per_channel))
    return {k: v.astype(np.float64) for k, v in layout.unflatten(per_element).items()}


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_decode_is_within_one_step_and_codes_are_packed(bits: int, per_channel: bool) -> None:
    x = _update(_state())
    codec = Quantize(bits=bits, per_channel=per_channel)
    encoded = codec.encode(x, rng=0)
    decoded = codec.decode(encoded, x)
    step = _steps(codec, x)
    for name, value in decoded.items():
        if name in step:
            assert value.dtype == x[name].dtype and value.shape == x[name].shape
            err = np.abs(value.astype(np.float64) - x[name])
            assert np.all(err <= step[name] * (1 + 1e-6) + 1e-12), name
        else:
            assert np.array_equal(value, x[name])  # raw int64 counters travel untouched
    n = Layout.of(x).total
    codes = encoded["q.codes"]
    assert codes.dtype == (np.uint16 if bits == 16 else np.uint8)
    assert codes.nbytes == (2 * n if bits == 16 else -(-n * bits // 8))


def test_stochastic_rounding_is_unbiased_and_error_shrinks_like_one_over_sqrt_n() -> None:
    rng = np.random.default_rng(3)
    x = {"w": rng.uniform(-1, 1, size=(4, 250)).astype(np.float32)}
    codec = Quantize(bits=2)
    step = float(_steps(codec, x)["w"][0, 0])

    def mean_of(n: int, seed: int) -> np.ndarray:
        gen = np.random.default_rng(seed)
        return np.mean([codec.decode(codec.encode(x, rng=gen), x)["w"].astype(np.float64) for _ in range(n)], axis=0)

    # rounding to a neighbour level has variance <= step**2 / 4, so the mean of n decodes has sd <= step / (2 sqrt n)
    err_small, err_large = mean_of(25, 10) - x["w"], mean_of(400, 11) - x["w"]
    assert np.abs(err_large).max() <= 6 * step / (2 * np.sqrt(400))
    assert abs(err_large.mean()) <= 6 * step / (2 * np.sqrt(400 * x["w"].size))  # no systematic bias
    ratio = np.sqrt(np.mean(err_large**2) / np.mean(err_small**2))
    assert 0.18 < ratio < 0.35  # sqrt(25 / 400) = 0.25


def test_per_channel_beats_per_tensor_when_channel_ranges_differ() -> None:
    rng = np.random.default_rng(0)
    scales = np.logspace(-3, 0, 16)[:, None, None, None]
    x = {"conv.weight": (rng.normal(size=(16, 8, 3, 3)) * scales).astype(np.float32)}
    errors = {}
    for per_channel in (False, True):
        codec = Quantize(bits=4, per_channel=per_channel)
        decoded = codec.decode(codec.encode(x, rng=1), x)["conv.weight"]
        # error relative to each channel's own spread, averaged over channels
        per_row = ((decoded - x["conv.weight"]) ** 2).mean(axis=(1, 2, 3)) / x["conv.weight"].var(axis=(1, 2, 3))
        errors[per_channel] = float(per_row.mean())
    assert errors[True] < errors[False] / 10


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_bit_packing_round_trips(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for n in (0, 1, 7, 1001):
        codes = rng.integers(0, 1 << bits, size=n)
        packed = pack_bits(codes, bits)
        assert packed.nbytes == (2 * n if bits == 16 else -(-n * bits // 8))
        assert np.array_equal(unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize("codec", [Identity(), Quantize(bits=8), Quantize(bits=2, per_channel=True), TopK(0.01)])
def test_payload_bytes_are_the_bytes_of_the_produced_arrays(codec) -> None:
    x = _update(_state())
    encoded = codec.encode(x, rng=0)
    assert all(isinstance(a, np.ndarray) for a in encoded.values())
    assert payload_bytes(encoded) == sum(a.nbytes for a in encoded.values())
    full = sum(a.nbytes for a in x.values())
    assert payload_bytes(encoded) <= full
    # Flower adds a .npy header (~128 bytes) and the key per array: few arrays keep that small
    assert payload_bytes(encoded) < wire_bytes(encoded) <= payload_bytes(encoded) + 200 * len(encoded)
    assert len(encoded) <= 4


def test_topk_sends_the_largest_entries_with_compact_indices() -> None:
    x = _update(_state())
    layout = Layout.of(x)
    codec = TopK(0.01)
    encoded = codec.encode(x)
    k = round(0.01 * layout.total)
    assert encoded["topk.values"].shape == (k,) and encoded["topk.gaps"].dtype == np.uint16
    flat = layout.flatten(codec.decode(encoded, x))
    assert np.count_nonzero(flat) == k
    threshold = np.sort(np.abs(layout.flatten(x)))[-k]
    assert np.all(np.abs(flat[flat != 0]) >= threshold)


def test_topk_error_feedback_eventually_sends_every_coordinate() -> None:
    rng = np.random.default_rng(0)
    n, steps = 200, 200
    codec = TopK(0.05)  # 10 of 200 per step
    base = rng.uniform(0.5, 1.0, size=n).astype(np.float32)
    base[0] = 0.2  # never among the top 10 of a single step on its own
    alone = codec.decode(codec.encode({"w": base}), {"w": base})["w"]
    assert alone[0] == 0
    residual, sent_total, first_sent_at = None, np.zeros(n), None
    for step in range(steps):
        update = {"w": base}
        encoded, residual = encode_with_feedback(codec, update, residual, rng=0)
        sent = codec.decode(encoded, update)["w"].astype(np.float64)
        if sent[0] != 0 and first_sent_at is None:
            first_sent_at = step
        sent_total += sent
    assert first_sent_at is not None  # its residual grew until it was among the largest
    # what was sent plus what is still owed is exactly what was meant
    np.testing.assert_allclose(sent_total + residual["w"], steps * base.astype(np.float64), rtol=1e-5)
    # the residual stays bounded, so the sum sent approaches the sum meant
    assert np.abs(residual["w"]).max() < 0.15 * steps * base.mean()
    assert abs(sent_total.sum() / (steps * base.sum()) - 1) < 0.05


def test_apply_update_keeps_raw_values_and_base_dtypes() -> None:
    base = _state("mobilenet_micro")
    update = _update(base)
    codec = Quantize(bits=8)
    layout = Layout.of(base)
    model = apply_update(base, codec.decode(codec.encode(update, rng=0, layout=layout), layout), layout)
    assert list(model) == list(base)
    for k, v in model.items():
        assert v.dtype == base[k].dtype and v.shape == base[k].shape
    counter = next(k for k in base if k.endswith("num_batches_tracked"))
    assert model[counter] == update[counter]


def test_registry_and_config_round_trip() -> None:
    with pytest.raises(ValueError, match="valid: identity, quantize, topk"):
        make_codec("gzip")
    with pytest.raises(ValueError, match="bits"):
        make_codec("quantize", bits=3)
    with pytest.raises(ValueError, match="unknown option"):
        make_codec("topk", ratio=0.1)
    for codec in (Identity(), Quantize(bits=4, per_channel=True), TopK(0.02, values="float16")):
        assert codec_from_config(codec.to_config("uplink"), "uplink") == codec
        assert isinstance(make_codec(codec.name), CODECS[codec.name])
    assert codec_from_config({}, "uplink") is None
    with pytest.raises(ValueError, match="uplink-codec"):
        codec_from_config({"uplink-codec": "zip"}, "uplink")


def test_layout_mismatch_is_an_error() -> None:
    x = _update(_state("mobilenet_micro"))
    encoded = Quantize(bits=8).encode(x, rng=0)
    other = dict(x)
    other.pop(next(iter(other)))
    with pytest.raises(ValueError):
        Quantize(bits=8).decode(encoded, other)
    with pytest.raises(ValueError, match="NaN"):
        Quantize(bits=8).encode({"w": np.array([1.0, np.nan], dtype=np.float32)})
