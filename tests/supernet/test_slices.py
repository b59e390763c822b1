"""Weight sharing in the MobileNet family: a subnet is an ordinary module holding boxes of the supernet.

The sliced forward here is written independently of ``weight_slices``: it reads the supernet
module's own parameters (first channels, centre of the kernel, first blocks of each stage)
and runs ``torch.nn.functional`` on them.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from fednas.cost import count_macs, count_params
from fednas.supernet import RandomTrial, Supernet
from search_spaces import (Choice, Fixed, MobileNetArch, MobileNetSpace, Range, Stage, build_model,
                           domain_from_config)
from search_spaces._arch import make_divisible
from search_spaces._mobilenet_nn import SqueezeExcite

ACT = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish}
QUICKSTART_LABELS = {
    "stem_width": [0.5, 1.0], "s1_depth": 1, "s1_width": [0.5, 1.0], "s1_expansion": [1, 2],
    "s2_depth": {"low": 1, "high": 2}, "s2_width": [0.5, 1.0], "s2_expansion": [2, 3, 4],
    "s3_depth": {"low": 1, "high": 2}, "s3_width": [0.5, 1.0], "s3_expansion": [2, 3, 4],
    "s1_kernel": [3, 5], "s2_kernel": [3, 5], "s3_kernel": [3, 5],
}


def _space(head: int = 0, labels: dict | None = None):
    space = MobileNetSpace(base_channels=(16, 24, 40), strides=(1, 2, 2), head_channels=head)
    overrides = {k: domain_from_config(v, k) for k, v in (QUICKSTART_LABELS if labels is None else labels).items()}
    return space, overrides


def _conv_bn(seq, x, cout, cin, k, stride, groups, act):
    conv, bn = seq[0], seq[1]
    off = (conv.kernel_size[0] - k) // 2
    w = conv.weight[:cout, :cin, off:off + k, off:off + k]
    x = F.conv2d(x, w, None, stride, (k - 1) // 2, 1, groups)
    x = F.batch_norm(x, bn.running_mean[:cout], bn.running_var[:cout], bn.weight[:cout], bn.bias[:cout], False, 0.0,
                     bn.eps)
    return ACT[act](x) if act else x


def _parts(block):
    """expand / depthwise / se / project modules of one supernet block, found by their types."""
    kids = list(block.block)
    dw = next(i for i, m in enumerate(kids) if not isinstance(m, SqueezeExcite) and m[0].groups > 1)
    se = next((m for m in kids if isinstance(m, SqueezeExcite)), None)
    return (kids[0] if dw == 1 else None), kids[dw], se, kids[-1]


def sliced_forward(sup_model, sup: MobileNetArch, sub: MobileNetArch, x: torch.Tensor, in_ch: int) -> torch.Tensor:
    x = _conv_bn(sup_model.stem, x, sub.stem_channels, in_ch, 3, sub.stem_stride, 1, sub.stem_activation)
    cin, first = sub.stem_channels, 0
    for st, sst in zip(sub.stages, sup.stages):
        for j in range(st.depth):
            expand, dw, se, project = _parts(sup_model.blocks[first + j])
            stride = st.stride if j == 0 else 1
            hidden = make_divisible(cin * st.expansion)
            h = x
            if hidden != cin:
                h = _conv_bn(expand, h, hidden, cin, 1, 1, 1, st.activation)
            h = _conv_bn(dw, h, hidden, 1, st.kernel, stride, hidden, st.activation)
            if st.se:
                sq = make_divisible(hidden * sub.se_ratio)
                s = F.adaptive_avg_pool2d(h, 1)
                s = F.relu(F.conv2d(s, se.fc1.weight[:sq, :hidden], se.fc1.bias[:sq]))
                s = F.conv2d(s, se.fc2.weight[:hidden, :sq], se.fc2.bias[:hidden])
                h = h * (F.hardsigmoid(s) if sub.se_gate == "hardsigmoid" else torch.sigmoid(s))
            h = _conv_bn(project, h, st.channels, hidden, 1, 1, 1, None)
            x = x + h if stride == 1 and cin == st.channels else h
            cin = st.channels
        first += sst.depth
    if sub.head_channels:
        x = _conv_bn(sup_model.head, x, sub.head_channels, cin, 1, 1, 1, sub.head_activation)
        cin = sub.head_channels
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    linear = sup_model.classifier[-1]
    return F.linear(x, linear.weight[:, :cin], linear.bias)


def _trained_looking(sup: Supernet) -> None:
    """Random running statistics, so that batch-norm slices matter in the comparison."""
    g = torch.Generator().manual_seed(1)
    for k, v in sup.state.items():
        if k.endswith("running_mean"):
            sup.state[k] = torch.randn(v.shape, generator=g).numpy()
        elif k.endswith("running_var"):
            sup.state[k] = (torch.rand(v.shape, generator=g) + 0.5).numpy()


@pytest.mark.parametrize("head", [0, 64])
def test_subnets_equal_build_model_and_the_sliced_supernet(head: int) -> None:
    space, overrides = _space(head)
    sup_arch = space.supernet(overrides)
    sup = Supernet.initial(sup_arch, num_classes=10, in_channels=1, seed=0)
    _trained_looking(sup)
    sup_model = build_model(sup_arch, num_classes=10, in_channels=1)
    sup_model.load_state_dict({k: torch.from_numpy(v) for k, v in sup.state.items()})
    sup_model.eval()
    rng = random.Random(0)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    archs = [space.decode(space.corner("low", overrides)), sup_arch]
    archs += [space.decode(space.suggest(RandomTrial(rng), overrides)) for _ in range(12)]
    for sub in archs:
        model = sup.subnet(sub).eval()
        reference = build_model(sub, num_classes=10, in_channels=1)
        assert type(model) is type(reference)
        assert count_params(model) == count_params(reference)
        assert count_macs(model, in_channels=1, resolution=28) == count_macs(reference, in_channels=1, resolution=28)
        with torch.no_grad():
            torch.testing.assert_close(model(x), sliced_forward(sup_model, sup_arch, sub, x, 1), rtol=1e-4,
                                       atol=1e-5)


def test_the_largest_subnet_is_the_whole_supernet() -> None:
    space, overrides = _space()
    sup_arch = space.supernet(overrides)
    sup = Supernet.initial(sup_arch, num_classes=10, in_channels=1, seed=0)
    whole = sup.extract(sup_arch)
    assert whole.keys() == sup.state.keys()
    assert all((whole[k] == sup.state[k]).all() for k in whole)


def test_expansion_one_skips_the_expand_conv_and_shares_the_depthwise() -> None:
    space, overrides = _space()
    sup_arch = space.supernet(overrides)
    sup = Supernet.initial(sup_arch, num_classes=10, in_channels=1, seed=0)
    labels = space.corner("low", overrides)  # s1_expansion = 1: no expand conv in block 0
    sub = space.decode(labels)
    out = sup.extract(sub)
    assert "blocks.0.block.0.0.weight" in out and out["blocks.0.block.0.0.weight"].shape[1] == 1  # depthwise first
    boxes = {s.key: s for s in sup.slices(sub)}
    assert boxes["blocks.0.block.0.0.weight"].source == "blocks.0.block.1.0.weight"  # the supernet's depthwise


def test_a_subnet_outside_the_supernet_is_refused_by_name() -> None:
    sup = MobileNetArch(stem_channels=16, stages=(Stage(channels=24, depth=2, stride=2, expansion=3, kernel=5, se=False,
                                                        activation="relu6"),))
    too_wide = MobileNetArch(stem_channels=16, stages=(Stage(channels=32, depth=1, stride=2, expansion=3, kernel=3,
                                                             se=False, activation="relu6"),))
    se = MobileNetArch(stem_channels=16, stages=(Stage(channels=24, depth=1, stride=2, expansion=3, kernel=3, se=True,
                                                       activation="relu6"),))
    other_stride = MobileNetArch(stem_channels=16, stages=(Stage(channels=24, depth=1, stride=1, expansion=3, kernel=3,
                                                                 se=False, activation="relu6"),))
    for sub, part in ((too_wide, "stages[0].channels"), (se, "stages[0].se"), (other_stride, "stages[0].stride")):
        with pytest.raises(ValueError, match=part.replace("[", r"\[").replace("]", r"\]")):
            sub.weight_slices(sup, num_classes=10, in_channels=1)


def test_supernet_of_a_space_takes_the_high_end_of_every_label() -> None:
    space, overrides = _space()
    sup = space.supernet(overrides)
    assert [s.depth for s in sup.stages] == [1, 2, 2]
    assert [s.kernel for s in sup.stages] == [5, 5, 5]
    assert [s.expansion for s in sup.stages] == [2, 4, 4]
    assert all(s.se for s in sup.stages)  # s{i}_se defaults to [false, true]
    fixed = {**overrides, "s1_se": Fixed(False)}
    assert not space.supernet(fixed).stages[0].se


def test_resnet_has_no_supernet() -> None:
    from search_spaces import get_search_space

    with pytest.raises(ValueError, match="no weight-sharing supernet"):
        get_search_space("resnet", {}).supernet()


def test_random_trial_draws_inside_domains() -> None:
    rng = random.Random(3)
    trial = RandomTrial(rng)
    for _ in range(50):
        assert Choice((1, 2)).suggest(trial, "a") in (1, 2)
        assert 1 <= Range(1, 4).suggest(trial, "b") <= 4
        v = Range(0.5, 1.0, 0.25).suggest(trial, "c")
        assert v in (0.5, 0.75, 1.0)
