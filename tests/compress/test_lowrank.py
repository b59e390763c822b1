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


# ----------------------------------------------------------------------------- Tucker-2 of k x k convolutions


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 10, 3, padding=1, bias=True),
    nn.Conv2d(8, 5, 5, stride=2, padding=2, bias=False),
    nn.Conv2d(4, 7, 3, dilation=2, padding=2),
])
def test_tucker2_at_full_ranks_reproduces_the_layer(conv: nn.Conv2d) -> None:
    from fednas.compress import tucker2

    torch.manual_seed(0)
    x = torch.randn(2, conv.in_channels, 11, 11)
    factors = tucker2(conv.eval(), conv.out_channels, conv.in_channels)
    assert [type(m) for m in factors] == [nn.Conv2d] * 3
    assert factors[0].kernel_size == (1, 1) and factors[1].kernel_size == conv.kernel_size
    assert factors[1].stride == conv.stride and (factors[2].bias is not None) == (conv.bias is not None)
    with torch.no_grad():
        assert torch.allclose(factors(x), conv(x), atol=1e-5)


def test_tucker2_error_shrinks_with_the_ranks_and_matches_the_reconstructed_kernel() -> None:
    from fednas.compress import tucker2

    torch.manual_seed(1)
    conv = nn.Conv2d(12, 16, 3, padding=1)
    x = torch.randn(4, 12, 9, 9)
    errors = []
    for r in (2, 4, 8, 12):
        f = tucker2(conv, min(r, 16), r)
        with torch.no_grad():
            errors.append(float((f(x) - conv(x)).norm()))
            # the three layers equal one convolution with the kernel C x_0 U_out x_1 U_in
            kernel = torch.einsum("or,rskl,si->oikl", f[2].weight[:, :, 0, 0], f[1].weight, f[0].weight[:, :, 0, 0])
            assert torch.allclose(nn.functional.conv2d(x, kernel, conv.bias, padding=1), f(x), atol=1e-5)
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 2


def test_tucker_factorizes_dense_kxk_convs_only_and_the_model_shrinks() -> None:
    from fednas.compress import tucker
    from fednas.cost import measure
    from fednas.models import build_run_model
    from search_spaces import CompressionSettings, build_model, preset

    resnet = build_model(preset("resnet_micro"), num_classes=10, in_channels=3)
    half = tucker(resnet, 0.5)
    dense = [n for n, m in resnet.named_modules() if type(m) is nn.Conv2d and m.kernel_size != (1, 1) and m.groups == 1]
    replaced = [n for n in dense if isinstance(half.get_submodule(n), nn.Sequential)]
    assert replaced and set(replaced) <= set(dense)
    mobilenet = build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=3)
    depthwise = [n for n, m in mobilenet.named_modules() if type(m) is nn.Conv2d and m.groups > 1]
    assert all(type(tucker(mobilenet, 0.5).get_submodule(n)) is nn.Conv2d for n in depthwise)
    full = measure(build_run_model(preset("resnet_micro"), num_classes=10, in_channels=3), in_channels=3, resolution=32)
    small = measure(build_run_model(preset("resnet_micro"), CompressionSettings(tucker_ratio=0.5), num_classes=10,
                                    in_channels=3), in_channels=3, resolution=32)
    assert small.params < full.params and small.macs < full.macs
    assert CompressionSettings(tucker_ratio=0.5).describe() == "tucker 0.5"
    with pytest.raises(ValueError, match="ratio"):
        tucker(resnet, 0.0)
    with pytest.raises(TypeError):
        from fednas.compress import tucker2

        tucker2(nn.Conv2d(4, 4, 1), 2, 2)


def test_a_federation_trains_and_sends_the_tucker_factorized_model() -> None:
    from fednas.config import DataConfig, FederationConfig
    from fednas.fl import RunSpec, run_federation
    from search_spaces import CompressionSettings

    fed = FederationConfig(num_clients=2, rounds=1, bn_recalibration="off")
    base = RunSpec(DataConfig(limit=120), fed, 0, preset("resnet_micro").to_dict())
    full = run_federation(base)
    small = run_federation(RunSpec(base.data, fed, 0, base.arch, CompressionSettings(tucker_ratio=0.5)))
    assert 0 < small.upload_bytes < 0.8 * full.upload_bytes
    assert any(".1.weight" in k and v.ndim == 4 for k, v in small.arrays.to_torch_state_dict().items())
