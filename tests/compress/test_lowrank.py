from __future__ import annotations

import pytest
import torch
from torch import nn

from fednas.compress import factorize, low_rank, low_rank_rank
from fednas.cost import count_params, measure
from search_spaces import build_model, preset


def _trained_like(name: str = "mobilenet_tiny") -> nn.Module:
    torch.manual_seed(0)
    model = build_model(preset(name), num_classes=10, in_channels=1)
    for m in model.modules():  # larger logits than the 0.01-std init, so errors show
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.5)
    return model.eval()


def test_full_rank_reproduces_the_outputs() -> None:
    model = _trained_like()
    x = torch.randn(8, 1, 28, 28)
    factored = low_rank(model, 1.0, only_if_smaller=False).eval()
    replaced = [m for m in factored.modules() if isinstance(m, nn.Sequential) and len(m) == 2
                and all(isinstance(c, (nn.Conv2d, nn.Linear)) for c in m)]
    pointwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1]
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(replaced) == len(pointwise) + len(linear)
    with torch.no_grad():
        torch.testing.assert_close(factored(x), model(x), rtol=1e-4, atol=1e-5)
    # by default full rank is not smaller, so nothing is replaced
    assert count_params(low_rank(model, 1.0)) == count_params(model)


def test_half_rank_drops_parameters_and_keeps_the_input_intact() -> None:
    model = _trained_like()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    half = low_rank(model, 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    full = measure(model, in_channels=1, resolution=28)
    small = measure(half, in_channels=1, resolution=28)
    assert small.params < 0.9 * full.params and small.macs < full.macs
    with torch.no_grad():
        assert half.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_factorize_is_the_best_rank_r_approximation_with_bias_on_the_second_layer() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(12, 9)
    two = factorize(layer, 3)
    assert two[0].bias is None and torch.equal(two[1].bias, layer.bias)
    product = two[1].weight @ two[0].weight
    u, s, vh = torch.linalg.svd(layer.weight.detach().double())
    best = (u[:, :3] * s[:3]) @ vh[:3]
    torch.testing.assert_close(product.double(), best, rtol=1e-5, atol=1e-5)
    conv = nn.Conv2d(16, 8, 1, stride=2, bias=False)
    two = factorize(conv, 4)
    assert two[0].stride == (2, 2) and two[1].bias is None
    assert low_rank_rank(0.5, 8, 16) == 4 and low_rank_rank(0.01, 8, 16) == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ratio"):
        low_rank(nn.Linear(4, 4), 0.0)
    with pytest.raises(TypeError):
        factorize(nn.Conv2d(4, 4, 3), 2)
    with pytest.raises(ValueError, match="rank"):
        factorize(nn.Linear(4, 3), 4)
