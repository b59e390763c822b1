from __future__ import annotations

import pytest
import torch

from fednas.compress import evaluate_int8, quantize_int8, serialized_bytes
from fednas.data import load_dataset
from fednas.train import TrainConfig, evaluate, train
from search_spaces import build_model, preset


@pytest.fixture(scope="module")
def trained():
    train_set, test_set = load_dataset("mnist5k", limit=1000)
    torch.manual_seed(0)
    model = build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1)
    train(model, train_set.x, train_set.y, TrainConfig(batch_size=32, lr=0.1, max_steps=40), seed=0)
    return model, train_set, test_set


def test_int8_is_smaller_and_about_as_accurate(trained) -> None:
    model, train_set, test_set = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_int8(model, train_set.x[:256])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert q.float_bytes == serialized_bytes(model) and q.bytes < 0.75 * q.float_bytes
    _, acc32 = evaluate(model, test_set.x, test_set.y)
    _, acc8 = evaluate_int8(q, test_set.x, test_set.y)
    assert acc32 > 0.25  # trained well above chance (0.1), so the comparison means something
    assert abs(acc8 - acc32) <= 0.05
    with torch.no_grad():
        agree = (q(test_set.x).argmax(1) == model.eval()(test_set.x).argmax(1)).float().mean().item()
    assert agree > 0.85
    assert any(p.is_quantized for p in q.model.state_dict().values() if isinstance(p, torch.Tensor))


def test_unknown_backend_and_empty_calibration(trained) -> None:
    model, train_set, _ = trained
    with pytest.raises(ValueError, match="backend"):
        quantize_int8(model, train_set.x[:8], backend="tensorrt")
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(model, [])
