from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fednas.compress import distillation_loss, train_with_teacher
from fednas.train import TrainConfig, TrainingDiverged, train
from search_spaces import build_model, preset


def _logits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(8, 10, generator=gen) * 3, torch.randn(8, 10, generator=gen) * 3
    return student, teacher, torch.randint(0, 10, (8,), generator=gen)


def test_weight_zero_is_cross_entropy_and_weight_one_is_scaled_kl() -> None:
    s, t, y = _logits(0)
    torch.testing.assert_close(distillation_loss(s, t, y, temperature=4.0, weight=0.0), F.cross_entropy(s, y))
    for temp in (1.0, 2.0, 5.0):
        p_t = F.softmax(t / temp, dim=1)
        kl = (p_t * (p_t.log() - F.log_softmax(s / temp, dim=1))).sum(1).mean()
        torch.testing.assert_close(distillation_loss(s, t, y, temperature=temp, weight=1.0), temp**2 * kl)
    mixed = distillation_loss(s, t, y, temperature=2.0, weight=0.25)
    expected = 0.75 * F.cross_entropy(s, y) + 0.25 * distillation_loss(s, t, y, temperature=2.0, weight=1.0)
    torch.testing.assert_close(mixed, expected)
    assert distillation_loss(t, t, y, temperature=3.0, weight=1.0).abs() < 1e-6  # student == teacher


def test_gradients_reach_the_student_only_and_keep_their_scale_across_temperatures() -> None:
    s, t, y = _logits(1)
    s.requires_grad_(True)
    t.requires_grad_(True)
    distillation_loss(s, t, y, temperature=4.0, weight=1.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    # soft-target gradients scale as 1/T^2 (Hinton et al.); the T^2 factor makes them independent of T
    s_small = (torch.randn(64, 10, generator=torch.Generator().manual_seed(2)) * 0.1).requires_grad_(True)
    t_small = torch.randn(64, 10, generator=torch.Generator().manual_seed(3)) * 0.1
    norms = []
    for temp in (4.0, 16.0):
        s_small.grad = None
        distillation_loss(s_small, t_small, y.repeat(8), temperature=temp, weight=1.0).backward()
        norms.append(s_small.grad.norm().item())
    assert 0.8 < norms[1] / norms[0] < 1.25  # without the factor: 1/16


def test_bad_arguments() -> None:
    s, t, y = _logits(0)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s, t, y, temperature=0.0)
    with pytest.raises(ValueError, match="weight"):
        distillation_loss(s, t, y, weight=1.5)


def test_train_with_teacher_mirrors_train() -> None:
    torch.manual_seed(0)
    student = build_model(preset("mobilenet_micro"), num_classes=10, in_channels=1)
    teacher = build_model(preset("mobilenet_micro"), num_classes=10, in_channels=1)
    teacher_before = copy.deepcopy(teacher.state_dict())
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 28, 28, generator=gen), torch.randint(0, 10, (40,), generator=gen)
    config = TrainConfig(batch_size=16, lr=0.05, max_steps=2)
    a, b = copy.deepcopy(student), copy.deepcopy(student)
    result = train_with_teacher(a, teacher, x, y, config, seed=3, weight=0.0)
    reference = train(b, x, y, config, seed=3)
    assert (result.steps, result.examples) == (reference.steps, reference.examples) == (2, 32)
    assert abs(result.loss - reference.loss) < 1e-5  # weight 0 is plain training, same batches
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])
    distilled = copy.deepcopy(student)
    train_with_teacher(distilled, teacher, x, y, config, seed=3, temperature=2.0, weight=0.9)
    plain = a.state_dict()
    assert any(not torch.equal(v, plain[k]) for k, v in distilled.state_dict().items() if v.is_floating_point())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    with pytest.raises(TrainingDiverged):
        train_with_teacher(copy.deepcopy(student), teacher, x * float("nan"), y, config, seed=0)


# --------------------------------------------------------------------------- feature maps and attention maps


def _net(depths=(1, 2, 1), seed: int = 0, width: float = 1.0):
    import dataclasses

    from search_spaces import build_model, preset

    base = preset("mobilenet_tiny")
    stages = tuple(dataclasses.replace(s, depth=d, channels=max(1, int(s.channels * width)))
                   for s, d in zip(base.stages, depths))
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(base, stages=stages), num_classes=10, in_channels=1)


def test_stage_ends_are_where_the_activation_shape_changes() -> None:
    from fednas.compress import stage_ends

    ends, shapes = stage_ends(_net((1, 2, 1)), torch.zeros(2, 1, 28, 28))
    assert ends == [0, 2, 3] and len(shapes) == 3 and shapes[0] != shapes[1]


def test_feature_and_attention_terms_are_zero_when_student_is_teacher_and_positive_otherwise() -> None:
    from torch import nn as tnn

    from fednas.compress import attention_loss, hint_loss, stage_ends
    from fednas.compress._distill import _regressor, _Taps

    x = torch.randn(8, 1, 28, 28)
    student, other = _net(seed=0).eval(), _net(seed=1).eval()
    ends, shapes = stage_ends(student, x[:2])

    def maps(model):
        taps = _Taps(model, ends)
        model(x)
        out = taps.take()
        taps.close()
        return out

    regs = tnn.ModuleList([_regressor(s[0], s[0], 0) for s in shapes])  # same channels: identity
    same, diff = maps(student), maps(other)
    assert float(attention_loss(same, [t.clone() for t in same])) == pytest.approx(0.0, abs=1e-6)
    assert float(hint_loss(same, [t.clone() for t in same], regs)) == pytest.approx(0.0, abs=1e-10)
    assert float(attention_loss(same, diff)) > 1e-3 and float(hint_loss(same, diff, regs)) > 1e-3


@pytest.mark.parametrize("kind", ["feature", "attention"])
def test_training_with_hints_moves_the_student_and_leaves_its_keys_and_the_teacher(kind: str) -> None:
    from fednas.compress import train_with_teacher

    student, teacher = _net(seed=0), _net(seed=1, width=0.5)  # a narrower teacher: regressors map channels
    keys = set(student.state_dict())
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05)
    plain = _net(seed=0)
    from fednas.train import train

    train(plain, x, y, cfg, seed=0)
    result = train_with_teacher(student, teacher, x, y, cfg, seed=0, weight=0.5, kind=kind)
    assert result.steps == 4 and set(student.state_dict()) == keys
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in t_before.items())
    assert any(not torch.equal(student.state_dict()[k], s_before[k]) for k in keys)
    assert any(not torch.allclose(student.state_dict()[k], plain.state_dict()[k]) for k in keys
               if student.state_dict()[k].is_floating_point())  # the term changed the training
    with pytest.raises(ValueError, match="kind"):
        train_with_teacher(student, teacher, x, y, cfg, seed=0, kind="logits")


def test_a_federation_distils_feature_and_attention_maps_from_the_global_model() -> None:
    from fednas.config import DataConfig, FederationConfig
    from fednas.fl import RunSpec, run_federation
    from search_spaces import CompressionSettings

    def loss(**kd) -> float:
        spec = RunSpec(DataConfig(limit=240), FederationConfig(num_clients=3, rounds=2, batch_size=16), 0,
                       preset("mobilenet_tiny").to_dict(), CompressionSettings(**kd))
        return run_federation(spec).rounds[1].train_loss

    soft = loss(kd_weight=0.5)
    feature, attention = loss(kd_weight=0.5, kd_kind="feature"), loss(kd_weight=0.5, kd_kind="attention")
    assert len({soft, feature, attention}) == 3  # three different losses trained
    assert CompressionSettings(kd_weight=0.3, kd_kind="attention").describe() == "kd 0.3 attention"
