"""Pruning at the other granularities: single weights (unstructured), hidden-layer neurons, whole blocks.

Channel pruning (``_prune``) removes output channels of convs and hidden linears. Here:

* **weight** (unstructured): per layer, the ``sparsity`` share of a conv's or hidden linear's
  weights with the smallest magnitude become zero (PyTorch's ``prune.L1Unstructured``
  computes the mask; for single weights L1 and L2 rank alike). The shape stays, so MACs
  and ``params`` stay: dense kernels do the same work on zeros. What shrinks is storage:
  ``sparse_saving`` is the bytes a bitmap encoding (one bit per weight, then the nonzero
  values at their width) saves against the dense one, per tensor where it is smaller;
  ``model_bytes`` and ``weight_bytes`` count it. During later federated rounds
  ``keep_zeros`` holds a model's zeros at zero while it trains (``prune.custom_from_mask``:
  the masked weights get no gradient), and the server re-applies its masks after each
  aggregation (a quantized uplink does not decode to exact zeros).
* **neuron**: channel pruning restricted to ``nn.Linear`` layers (``prune_channels_with_masks``
  with ``kinds=(nn.Linear,)``); a family without hidden linears has nothing to prune there.
* **block**: whole residual blocks go. The families keep their blocks in ``model.blocks``,
  stage after stage, and every block after a stage's first has the input shape of its
  output and an identity shortcut, so removing it is exactly that stage with ``depth - 1``
  (``reduced_arch``): the pruned network is a smaller member of the family, with trained
  weights. First blocks (which may stride or change width) are never removed.
  ``prune_sparsity`` is the share of the removable blocks removed (rounded to the nearest
  count); blocks are ranked by the magnitude of their residual branch's output (the last
  conv's filters times the norm layer's scale after it; ``l1`` or ``l2``) or by the sum
  of their layers' channel Taylor scores pooled from the clients (``taylor``).

A block plan travels as the text ``{"#blocks": [k, ...]}`` (indices into ``model.blocks`` of
the unpruned model) where channel masks travel otherwise; ``apply_prune_plan`` rebuilds
either structure, ``plan_arch`` names the architecture a block plan leaves.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["BLOCK_PLAN", "apply_prune_plan", "apply_weight_masks", "block_plan", "block_scores", "choose_blocks",
           "drop_blocks", "is_block_plan", "keep_zeros", "plan_arch", "plan_blocks", "prunable_layers", "reduced_arch",
           "removable_blocks", "sparse_saving", "sparsity_of", "weight_masks"]

BLOCK_PLAN = "#blocks"  # a key no module name of the families can be
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm2d, nn.GroupNorm)


def prunable_layers(model: nn.Module, exclude: Collection[str] = ()) -> dict[str, nn.Module]:
    """Convs and linears of ``model`` except those that produce its output (the classifier) and ``exclude``."""
    from fednas.compress._prune import _output_layers

    out = _output_layers(torch.fx.symbolic_trace(copy.deepcopy(model).eval())) | set(exclude)
    return {n: m for n, m in model.named_modules() if isinstance(m, _LAYERS) and n not in out}


def weight_masks(model: nn.Module, sparsity: float, *, method: str = "l1",
                 exclude: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Per prunable layer, a bool mask of its weight keeping all but the ``sparsity`` share smallest in magnitude.

    Raises:
        ValueError: sparsity outside (0, 1), or a method other than "l1"/"l2".
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
        raise ValueError(f"sparsity: expected a fraction in (0, 1), got {sparsity!r}")
    if method not in ("l1", "l2"):
        raise ValueError(f"weight pruning ranks by magnitude: expected method 'l1' or 'l2', got {method!r}")
    rule = prune.L1Unstructured(amount=float(sparsity))
    with torch.no_grad():
        return {f"{name}.weight": rule.compute_mask(m.weight.detach(), torch.ones_like(m.weight)).bool()
                for name, m in prunable_layers(model, exclude).items()}


def apply_weight_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked weights of ``model`` in place (``masks``: weight name -> bool keep mask)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, keep in masks.items():
            if name not in params or params[name].shape != keep.shape:
                raise ValueError(f"weight mask {name!r} {tuple(keep.shape)} does not fit the model")
            params[name].mul_(keep.to(params[name].dtype))


@contextlib.contextmanager
def keep_zeros(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every conv/linear weight of ``model`` that is exactly zero stays zero while it trains.

    PyTorch's ``prune.custom_from_mask`` reparametrizes those weights as ``weight_orig * mask``
    (so they get no gradient and momentum or weight decay cannot move them); on exit the
    reparametrization is removed and ``model`` has plain weights and its usual state-dict keys.
    """
    masked = []
    for m in model.modules():
        if isinstance(m, _LAYERS) and not bool(m.weight.detach().all()):
            prune.custom_from_mask(m, "weight", m.weight.detach() != 0)
            masked.append(m)
    try:
        yield model
    finally:
        for m in masked:
            prune.remove(m, "weight")


def sparsity_of(model: nn.Module) -> float:
    """The share of exactly-zero weights among all conv and linear weights of ``model``."""
    total = zeros = 0
    for m in model.modules():
        if isinstance(m, _LAYERS):
            total += m.weight.numel()
            zeros += int((m.weight.detach() == 0).sum())
    return zeros / total if total else 0.0


def sparse_saving(weights: Mapping[str, torch.Tensor], bits: Mapping[str, int] | int) -> int:
    """Bytes a bitmap encoding saves over dense storage, summed over the tensors where it is smaller.

    A tensor of ``n`` weights at ``b`` bits takes ``ceil(n * b / 8)`` bytes dense, and
    ``ceil(n / 8) + ceil(nnz * b / 8)`` as a bitmap of its nonzeros followed by their values.
    ``bits``: one width for all, or per tensor name.
    """
    saved = 0
    for name, w in weights.items():
        b = bits if isinstance(bits, int) else int(bits[name])
        n, nnz = w.numel(), int(torch.count_nonzero(w.detach()))
        saved += max(0, math.ceil(n * b / 8) - (math.ceil(n / 8) + math.ceil(nnz * b / 8)))
    return saved


# -- blocks ----------------------------------------------------------------------------------------------------


def removable_blocks(arch: Any) -> list[int]:
    """Indices into ``model.blocks`` of the blocks after the first of each stage (empty for a family without
    stages)."""
    out, k = [], 0
    for stage in getattr(arch, "stages", ()):
        out += list(range(k + 1, k + int(stage.depth)))
        k += int(stage.depth)
    return out


def _branch_scale(block: nn.Module, p: int) -> float:
    """The output magnitude of a residual branch: per output channel of its last conv, the mean |w|^p (then
    ^(1/p)) of its filter times the absolute scale of a norm layer right after it; averaged over channels."""
    mods = list(block.modules())
    convs = [i for i, m in enumerate(mods) if isinstance(m, _LAYERS)]
    if not convs:
        return 0.0
    last = mods[convs[-1]]
    w = last.weight.detach().reshape(last.weight.shape[0], -1).abs()
    per = w.pow(p).mean(dim=1).pow(1.0 / p)
    for m in mods[convs[-1] + 1:]:
        if isinstance(m, _NORMS) and m.weight is not None and m.weight.numel() == per.numel():
            per = per * m.weight.detach().abs()
            break
    return float(per.mean())


def block_scores(model: nn.Module, arch: Any, method: str,
                 channel_scores: Mapping[str, torch.Tensor] | None = None) -> dict[int, float]:
    """An importance per removable block (higher: keep).

    ``l1``/``l2``: ``_branch_scale`` of the block; ``taylor``: the sum of the clients' pooled
    channel Taylor scores (``fednas.train.taylor_channel_scores``) of every layer of the block.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ValueError(f"block pruning needs a family with model.blocks; {type(model).__name__} has none")
    removable = removable_blocks(arch)
    if removable and max(removable) >= len(blocks):
        raise ValueError(f"model.blocks has {len(blocks)} blocks, the architecture's stages more")
    if method == "taylor":
        if channel_scores is None:
            raise ValueError("block method 'taylor' needs the clients' channel scores")
        return {k: float(sum(float(s.sum()) for n, s in channel_scores.items() if n.startswith(f"blocks.{k}.")))
                for k in removable}
    if method not in ("l1", "l2"):
        raise ValueError(f"blocks are ranked by 'l1', 'l2' or 'taylor', got {method!r}")
    return {k: _branch_scale(blocks[k], 1 if method == "l1" else 2) for k in removable}


def choose_blocks(scores: Mapping[int, float], sparsity: float) -> list[int]:
    """The ``round(sparsity * len(scores))`` lowest-scored blocks (ties: the later block), sorted."""
    count = int(sparsity * len(scores) + 0.5)
    ranked = sorted(scores, key=lambda k: (scores[k], -k))
    return sorted(ranked[:count])


def block_plan(indices: Collection[int]) -> str:
    return json.dumps({BLOCK_PLAN: sorted(int(k) for k in indices)}, separators=(",", ":"))


def is_block_plan(text: str) -> bool:
    return text.startswith('{"' + BLOCK_PLAN + '"')


def plan_blocks(text: str) -> list[int]:
    """The block indices a block plan (``block_plan``) removes."""
    doc = json.loads(text)
    blocks = doc.get(BLOCK_PLAN) if isinstance(doc, dict) else None
    if not isinstance(blocks, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in blocks):
        raise ValueError(f"block plan: expected {{{BLOCK_PLAN!r}: [block indices]}}, got {text[:80]!r}")
    return blocks


def drop_blocks(model: nn.Module, indices: Collection[int]) -> nn.Module:
    """A copy of ``model`` without ``model.blocks[k]`` for each ``k`` in ``indices`` (later blocks renumbered)."""
    drop = set(indices)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ValueError(f"block pruning needs a family with model.blocks; {type(model).__name__} has none")
    if drop and (min(drop) < 0 or max(drop) >= len(blocks)):
        raise ValueError(f"block plan {sorted(drop)}: the model has blocks 0..{len(blocks) - 1}")
    out = copy.deepcopy(model)
    out.blocks = nn.Sequential(*[b for k, b in enumerate(out.blocks) if k not in drop])
    return out


def reduced_arch(arch: Any, indices: Collection[int]) -> Any:
    """``arch`` with each stage's depth reduced by the number of its blocks in ``indices``.

    Raises:
        ValueError: an index that is a stage's first block or beyond the last one.
    """
    drop, allowed = set(indices), set(removable_blocks(arch))
    if not drop <= allowed:
        raise ValueError(f"blocks {sorted(drop - allowed)} cannot be removed (first blocks of their stages, or "
                         f"beyond the {sum(int(s.depth) for s in arch.stages)} blocks)")
    stages, k = [], 0
    for stage in arch.stages:
        gone = sum(1 for j in range(k, k + int(stage.depth)) if j in drop)
        stages.append(dataclasses.replace(stage, depth=int(stage.depth) - gone))
        k += int(stage.depth)
    return dataclasses.replace(arch, stages=tuple(stages))


def plan_arch(arch: Any, plan: str) -> Any:
    """The architecture the pruning plan leaves: ``reduced_arch`` for a block plan, else ``arch`` (channel masks
    change widths inside blocks, which the family's labels do not describe)."""
    return reduced_arch(arch, plan_blocks(plan)) if plan and is_block_plan(plan) else arch


def apply_prune_plan(model: nn.Module, plan: str, example_input: torch.Tensor) -> nn.Module:
    """The structure a finished pruning left: blocks dropped, or channels removed (``apply_channel_masks``); a
    copy of ``model`` for an empty plan."""
    if not plan:
        return copy.deepcopy(model)
    if is_block_plan(plan):
        return drop_blocks(model, plan_blocks(plan))
    from fednas.compress._prune import apply_channel_masks, decode_channel_masks

    return apply_channel_masks(model, decode_channel_masks(plan), example_input)
