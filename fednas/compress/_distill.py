"""Knowledge distillation: a student trained against a teacher, by soft targets, feature maps or attention maps.

Plain PyTorch, the same loop as ``fednas.train.train`` with the loss replaced. ``kind``:

* ``soft`` (Hinton et al., 2015): ``(1 - w) CE + w T^2 KL(p_teacher || p_student)``.
* ``feature`` (hint layers, FitNets, Romero et al., 2015): ``(1 - w) CE + w * mean_j MSE(r_j(S_j), T_j)``
  over paired stage outputs, where ``r_j`` is a 1x1 conv regressor from the student's to the
  teacher's channels (the identity when they match, so the term is 0 when the student is
  the teacher; otherwise seeded random), trained with the student and discarded after the
  round; a teacher map of another spatial size is resized to the student's (bilinear).
* ``attention`` (attention transfer, Zagoruyko & Komodakis, 2017): ``(1 - w) CE + w * sum_j
  mean_batch || a(S_j) / ||a(S_j)|| - a(T_j) / ||a(T_j)|| ||_2`` with the spatial attention map
  ``a(F) = mean_c F_c^2``; maps of other sizes are resized, so teachers of another architecture work.

Stage outputs ("hints") are the outputs of the blocks of ``model.blocks`` after which the
activation shape changes, and of the last block (``stage_ends``): the ends of the stages,
found from one forward pass, for any family that keeps its blocks in ``model.blocks``. Student
and teacher stages are paired from the deepest: the last ``min(#student, #teacher)`` of each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fednas.train import TrainConfig, TrainResult, on_device, train

from search_spaces.compression import KD_KINDS

__all__ = ["KD_KINDS", "attention_loss", "distillation_loss", "hint_loss", "stage_ends", "train_with_teacher"]


def _check(temperature: float, weight: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ValueError(f"weight: expected a number in [0, 1], got {weight!r}")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 4.0,
    weight: float = 0.5,
) -> torch.Tensor:
    """``(1 - weight) * CE(student, targets) + weight * T**2 * KL(p_teacher || p_student)``.

    ``p = softmax(logits / T)``; the KL term is averaged over the batch and scaled by
    ``T**2`` so that its gradients keep their magnitude as ``T`` changes. The teacher's
    logits are detached.

    Raises:
        ValueError: ``temperature <= 0`` or ``weight`` outside [0, 1].
    """
    _check(temperature, weight)
    ce = F.cross_entropy(student_logits, targets)
    if weight == 0:
        return ce
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return (1 - weight) * ce + weight * temperature**2 * kl


def _blocks(model: nn.Module) -> nn.Sequential:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not len(blocks):
        raise ValueError(f"feature and attention distillation need a family with model.blocks; "
                         f"{type(model).__name__} has none")
    return blocks


class _Taps:
    """Forward hooks that keep the outputs of ``model.blocks[k]`` for ``k`` in ``indices`` (in that order)."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        self.out: dict[int, torch.Tensor] = {}
        blocks = _blocks(model)
        self.indices = indices
        self.handles = [blocks[k].register_forward_hook(self._keep(k)) for k in indices]

    def _keep(self, k: int):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self.out[k] = output
        return hook

    def take(self) -> list[torch.Tensor]:
        maps = [self.out[k] for k in self.indices]
        self.out = {}
        return maps

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def stage_ends(model: nn.Module, sample: torch.Tensor) -> tuple[list[int], list[tuple[int, ...]]]:
    """Indices of the blocks of ``model.blocks`` that end a stage (the next block changes the activation shape,
    or it is the last), and their output shapes (without the batch), from one eval-mode pass on ``sample``."""
    blocks = _blocks(model)
    taps = _Taps(model, list(range(len(blocks))))
    was_training = model.training
    try:
        model.eval()(sample)
        shapes = [tuple(t.shape[1:]) for t in taps.take()]
    finally:
        taps.close()
        model.train(was_training)
    ends = [k for k in range(len(shapes)) if k == len(shapes) - 1 or shapes[k] != shapes[k + 1]]
    return ends, [shapes[k] for k in ends]


def _resize(t: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return t if tuple(t.shape[-2:]) == tuple(size) else F.interpolate(t, size=size, mode="bilinear",
                                                                      align_corners=False)


def _attention(f: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    a = _resize(f.pow(2).mean(1, keepdim=True), size).flatten(1)
    return F.normalize(a, dim=1)


def attention_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Attention transfer: sum over pairs of the batch mean of ``|| a_s - a_t ||_2`` (normalized maps)."""
    return sum((_attention(s, s.shape[-2:]) - _attention(t.detach(), s.shape[-2:])).norm(dim=1).mean()
               for s, t in zip(student, teacher))


def hint_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], regressors: nn.ModuleList) -> torch.Tensor:
    """FitNets: mean over pairs of ``MSE(regressor(student map), teacher map)`` (teacher resized to the student's)."""
    terms = [F.mse_loss(r(s), _resize(t.detach(), s.shape[-2:])) for s, t, r in zip(student, teacher, regressors)]
    return sum(terms) / len(terms)


def _regressor(c_in: int, c_out: int, seed: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 1, bias=False)
    with torch.no_grad():
        if c_in == c_out:
            conv.weight.copy_(torch.eye(c_in).reshape(c_in, c_in, 1, 1))
        else:
            gen = torch.Generator().manual_seed(seed)
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / c_in) ** 0.5)
    return conv


def train_with_teacher(
    model: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    temperature: float = 4.0,
    weight: float = 0.5,
    kind: str = "soft",
) -> TrainResult:
    """Train ``model`` in place like ``fednas.train.train``, distilling ``teacher`` (``kind``: see the module).

    Same batches (seeded permutation, batches of one skipped), optimizer, proximal term and
    ``max_steps`` as ``train``; the teacher runs in eval mode without gradients and is not
    modified. For ``feature``, the regressors are trained with the student (same optimizer) and
    dropped afterwards: ``model``'s state-dict keys do not change. Returns the mean training loss.

    Raises:
        TrainingDiverged: when a loss is NaN or infinite.
        ValueError: bad ``temperature``, ``weight`` or ``kind``; feature kinds on a model without ``blocks``.
    """
    _check(temperature, weight)
    if kind not in KD_KINDS:
        raise ValueError(f"kind: expected one of {KD_KINDS}, got {kind!r}")
    was_training = teacher.training
    teacher.eval()
    if kind == "soft":
        def loss(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                soft = teacher(xb)
            return distillation_loss(logits, soft, yb, temperature, weight)

        try:
            with on_device(teacher, config.device):
                return train(model, x, y, config, seed=seed, loss_fn=loss)
        finally:
            teacher.train(was_training)
    sample = x[:2]
    s_ends, s_shapes = stage_ends(model, sample)
    t_ends, t_shapes = stage_ends(teacher, sample)
    m = min(len(s_ends), len(t_ends))
    s_ends, s_shapes, t_ends, t_shapes = s_ends[-m:], s_shapes[-m:], t_ends[-m:], t_shapes[-m:]
    regs = nn.ModuleList([_regressor(s[0], t[0], seed + j) for j, (s, t) in enumerate(zip(s_shapes, t_shapes))])
    if kind == "feature":
        model.add_module("_kd_regressors", regs)  # trained by train()'s optimizer with the student
    s_taps, t_taps = _Taps(model, s_ends), _Taps(teacher, t_ends)

    def feature_loss(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        student = s_taps.take()
        with torch.no_grad():
            teacher(xb)
        target = t_taps.take()
        term = hint_loss(student, target, regs) if kind == "feature" else attention_loss(student, target)
        ce = F.cross_entropy(logits, yb)
        return ce if weight == 0 else (1 - weight) * ce + weight * term

    try:
        with on_device(teacher, config.device):
            return train(model, x, y, config, seed=seed, loss_fn=feature_loss)
    finally:
        s_taps.close()
        t_taps.close()
        if kind == "feature":
            del model._kd_regressors
        teacher.train(was_training)
