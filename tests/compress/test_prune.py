from __future__ import annotations

import pytest
import torch

from fednas.compress import prune_channels
from fednas.cost import measure
from search_spaces import build_model, preset

pytest.importorskip("nni")


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(2)]


@pytest.mark.parametrize("method", ["l1", "l2", "fpgm", "taylor"])
def test_pruning_keeps_the_output_shape_and_cuts_measured_macs(tiny: torch.nn.Module, method: str) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    pruned = prune_channels(tiny, 0.5, method=method, example_input=x, batches=_batches)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())  # input untouched
    assert pruned.training == tiny.training
    with torch.no_grad():
        assert pruned.eval()(x).shape == (4, 10)
    full = measure(tiny, in_channels=1, resolution=28)
    small = measure(pruned, in_channels=1, resolution=28)
    assert small.macs < 0.5 * full.macs and small.params < 0.5 * full.params
    assert pruned.classifier[-1].out_features == 10  # the classifier keeps its classes


def test_l1_keeps_the_filters_with_the_largest_norms(tiny: torch.nn.Module) -> None:
    pruned = prune_channels(tiny, 0.5, method="l1", example_input=torch.randn(2, 1, 28, 28))
    # the SE squeeze conv is a dependency group of its own: it keeps its own top-L1 filters,
    # whose biases are unaffected by the pruning of its input channels
    fc1 = tiny.blocks[2].block[2].fc1
    top = fc1.weight.detach().abs().sum((1, 2, 3)).topk(fc1.out_channels // 2).indices.sort().values
    torch.testing.assert_close(pruned.blocks[2].block[2].fc1.bias, fc1.bias[top])


def test_bad_arguments() -> None:
    model = build_model(preset("mobilenet_micro"), num_classes=10, in_channels=1)
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="valid: l1, l2, fpgm, taylor"):
        prune_channels(model, 0.5, method="random", example_input=x)
    with pytest.raises(ValueError, match="sparsity"):
        prune_channels(model, 1.0, example_input=x)
    with pytest.raises(ValueError, match="needs batches"):
        prune_channels(model, 0.5, method="taylor", example_input=x)
