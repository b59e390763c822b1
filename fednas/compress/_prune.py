"""Structured (channel) pruning with NNI 3.0: masks from a pruner, then a smaller network.

``prune_channels`` removes output channels of convolution (and hidden linear) layers and
returns a genuinely smaller model, built by NNI's ``ModelSpeedup``. How it handles
MobileNet's structure:

* Channel dependencies. Layers whose output channels must be pruned together (a
  depthwise conv and the conv that feeds it, the SE ``fc2`` whose output multiplies the
  depthwise output, every conv feeding one residual sum) are found by NNI's
  ``auto_set_denpendency_group_ids`` on a ``torch.fx`` trace and given one
  ``dependency_group_id``: the pruner ranks channels by the group's mean metric and every
  member gets the same mask. Without it ``ModelSpeedup`` resolves the conflicts by keeping
  any channel one member keeps: a lone 1x1 expansion conv next to an unmasked depthwise
  conv is not pruned at all ("nothing masked").
* Excluded: the layers that produce the network's output (the classifier), and any
  module named in ``exclude``.
* ``ModelSpeedup``'s own tracer (``concrete_trace``) fails on torch 2.13 (nni#5768:
  ``AttributeError: 'NoneType' object has no attribute 'startswith'``); a
  ``torch.fx.symbolic_trace`` graph is passed instead. ``nn.Identity`` (an absent head)
  gets a no-op replacer, as NNI has none and would log an error. NNI's stray ``print``
  and INFO logging are silenced.
* ``taylor`` (first-order Taylor importance, Molchanov et al. 2019) needs gradients: NNI's
  ``TorchEvaluator`` runs ``training_steps`` SGD steps with learning rate 0 over the
  given batches, so the weights do not move; it runs on a throwaway copy so batch-norm
  statistics of the returned model are the input's.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.compression import PRUNE_METHODS

__all__ = ["PRUNING_METHODS", "ChannelMasks", "apply_channel_masks", "decode_channel_masks", "encode_channel_masks",
           "mask_digest", "prune_channels", "prune_channels_with_masks"]

ChannelMasks = dict[str, torch.Tensor]
"""Qualified conv/linear name -> bool vector over its output channels (True: kept)."""

PRUNING_METHODS = tuple(m for m in PRUNE_METHODS if m != "none")
"""Ranking of channels: L1 / L2 norm of filters, FPGM (geometric median), Taylor (|w * grad|^2).
The names are the ``prune_method`` label's choices (``search_spaces.compression.PRUNE_METHODS``)."""

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def _import_nni() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NNI 3.0 registers pytree nodes with deprecated torch APIs
            import nni
            import nni.compression.pruning as pruning
            import nni.compression.speedup as speedup
            from nni.compression.speedup.replacer import DefaultReplacer
            from nni.compression.utils import TorchEvaluator
    except ImportError as exc:
        raise ImportError(f"channel pruning needs NNI ({exc}); run: pip install 'fednas[compress]'") from None
    return nni, pruning, speedup, DefaultReplacer, TorchEvaluator


@contextlib.contextmanager
def _quiet() -> Iterator[logging.Logger]:
    """Silence NNI's INFO logs, warnings and its stray ``print`` during one pruning."""
    nni_log = logging.getLogger("nni")
    level = nni_log.level
    nni_log.setLevel(logging.ERROR)
    logger = logging.getLogger(__name__ + ".speedup")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield logger
    finally:
        nni_log.setLevel(level)


def _output_layers(gm: torch.fx.GraphModule) -> set[str]:
    """Conv/linear modules whose outputs reach the graph output with no conv/linear between."""
    found: set[str] = set()
    seen: set[torch.fx.Node] = set()
    stack = [n for n in gm.graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), (nn.Conv2d, nn.Linear)):
            found.add(str(node.target))
            continue
        stack.extend(node.all_input_nodes)
    return found


def _check_args(model: nn.Module, sparsity: float, method: str, batches: Batches | None) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
        raise ValueError(f"sparsity: expected a fraction in (0, 1), got {sparsity!r}")
    if method not in PRUNING_METHODS:
        raise ValueError(f"unknown pruning method {method!r}; valid: {', '.join(PRUNING_METHODS)}")
    if method == "taylor" and batches is None:
        raise ValueError("method 'taylor' needs batches: a callable returning (inputs, targets) batches")


def prune_channels(
    model: nn.Module,
    sparsity: float,
    *,
    method: str = "l1",
    example_input: torch.Tensor,
    batches: Batches | None = None,
    exclude: Collection[str] = (),
) -> nn.Module:
    """A smaller copy of ``model`` with a ``sparsity`` share of channels removed.

    Every ``nn.Conv2d`` and hidden ``nn.Linear`` loses ``sparsity`` of its output channels
    (per dependency group, see the module docstring); the layers producing the output and
    those in ``exclude`` keep theirs, so the output shape is unchanged. ``model`` is not
    modified; the result is in the same train/eval mode.

    Args:
        model: a network ``torch.fx.symbolic_trace`` can trace.
        sparsity: share of output channels removed per layer, in (0, 1).
        method: "l1", "l2", "fpgm" or "taylor" (see ``PRUNING_METHODS``).
        example_input: a batch the model accepts (shapes only; used to trace and propagate).
        batches: for "taylor", a callable returning a few ``(inputs, targets)`` training
            batches (classification, cross-entropy); one Taylor step per batch.
        exclude: qualified module names never pruned.

    Raises:
        ImportError: NNI is missing (``pip install 'fednas[compress]'``).
        ValueError: bad sparsity or method, or "taylor" without batches.
        RuntimeError: the pruned model's output shape differs (a bug; please report).
    """
    return prune_channels_with_masks(model, sparsity, method=method, example_input=example_input, batches=batches,
                                     exclude=exclude)[0]


def prune_channels_with_masks(
    model: nn.Module,
    sparsity: float,
    *,
    method: str = "l1",
    example_input: torch.Tensor,
    batches: Batches | None = None,
    exclude: Collection[str] = (),
    kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> tuple[nn.Module, ChannelMasks]:
    """``prune_channels``, also returning the output-channel masks it applied.

    ``apply_channel_masks(model_of_same_structure, masks, example_input)`` rebuilds the
    same pruned structure (the federation's clients do that; ``encode_channel_masks``
    makes the masks a short string for a ConfigRecord). ``kinds``: the layer types pruned
    (``(nn.Linear,)``: neurons of hidden linear layers only).
    """
    _check_args(model, sparsity, method, batches)
    channel = _rank_channels(model, sparsity, method, batches, exclude, example_input, kinds)
    if not channel:
        return copy.deepcopy(model), {}
    return apply_channel_masks(model, channel, example_input), channel


def _rank_channels(
    model: nn.Module, sparsity: float, method: str, batches: Batches | None, exclude: Collection[str],
    example_input: torch.Tensor | None = None, kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> ChannelMasks:
    """NNI's masks (dependency-aware) as output-channel keep vectors; nothing is sped up here.

    The trace carries tensor shapes (``ShapeProp`` on ``example_input``): without them NNI
    takes every function call (the ``+`` of a residual block) for a break in the channel
    dependencies, so two residual blocks in a row were not grouped, ``ModelSpeedup`` kept
    the union of their masks, and the model was pruned less than asked, with masks that
    did not describe it (found on ResNet stages of depth 2 and MobileNet stages of depth 3).
    """
    nni, pruning, speedup, DefaultReplacer, TorchEvaluator = _import_nni()
    work = copy.deepcopy(model).eval()
    gm = torch.fx.symbolic_trace(work)
    if example_input is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    keep = _output_layers(gm) | set(exclude)
    names = [n for n, m in work.named_modules() if isinstance(m, kinds) and n not in keep]
    if not names:
        return {}
    with _quiet():
        config = speedup.auto_set_denpendency_group_ids(gm, [{"op_names": names, "sparse_ratio": float(sparsity)}])
        masks = _masks(pruning, nni, TorchEvaluator, copy.deepcopy(work), config, method, batches)
    return {name: _out_channels(m["weight"]) for name, m in masks.items() if m.get("weight") is not None}


def _out_channels(weight_mask: torch.Tensor) -> torch.Tensor:
    return weight_mask.reshape(weight_mask.shape[0], -1).any(dim=1).cpu()


def apply_channel_masks(model: nn.Module, masks: ChannelMasks, example_input: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with the masked output channels physically removed (NNI ``ModelSpeedup``).

    Deterministic in the structure: two models of the same structure given the same masks
    become the same smaller structure (same state-dict keys and shapes). ``model`` is not
    modified; the result is in the same train/eval mode.

    Raises:
        ValueError: a mask names no conv/linear of ``model`` or has the wrong length.
        RuntimeError: the pruned model's output shape differs (a bug; please report).
    """
    _, _, speedup, DefaultReplacer, _ = _import_nni()
    was_training = model.training
    work = copy.deepcopy(model).eval()
    if not masks:
        return work.train(was_training)
    modules = dict(work.named_modules())
    nni_masks: dict[str, dict[str, torch.Tensor | None]] = {}
    for name, keep in masks.items():
        layer = modules.get(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or layer.weight.shape[0] != keep.numel():
            raise ValueError(f"channel mask {name!r} ({keep.numel()} channels) does not fit the model")
        shape = layer.weight.shape
        weight = keep.to(torch.float32).reshape(-1, *([1] * (len(shape) - 1))).expand(shape).contiguous()
        bias = keep.to(torch.float32).clone() if layer.bias is not None else None
        nni_masks[name] = {"weight": weight, "bias": bias}
    with torch.no_grad():
        expected = work(example_input).shape
    gm = torch.fx.symbolic_trace(work)
    with _quiet() as logger:
        replacers = [DefaultReplacer({"Identity": lambda module, _masks: module})]
        pruned = speedup.ModelSpeedup(
            work, example_input, nni_masks, graph_module=gm, customized_replacers=replacers, logger=logger
        ).speedup_model()
    with torch.no_grad():
        got = pruned.eval()(example_input).shape
    if got != expected:
        raise RuntimeError(f"pruning changed the output shape from {tuple(expected)} to {tuple(got)}")
    return pruned.train(was_training)


def encode_channel_masks(masks: ChannelMasks) -> str:
    """Masks as compact JSON: ``{name: [channels, hex of the bit-packed keep vector]}`` (sorted)."""
    import json

    import numpy as np

    doc = {name: [int(keep.numel()), np.packbits(keep.numpy().astype(bool)).tobytes().hex()]
           for name, keep in sorted(masks.items())}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def decode_channel_masks(text: str) -> ChannelMasks:
    """Inverse of ``encode_channel_masks``."""
    import json

    import numpy as np

    out: ChannelMasks = {}
    for name, (count, hexbits) in json.loads(text).items():
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(hexbits), dtype=np.uint8))[: int(count)]
        out[name] = torch.from_numpy(bits.astype(bool))
    return out


def mask_digest(text: str) -> str:
    """A short stable digest of encoded masks (cache key)."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _masks(pruning: Any, nni: Any, evaluator_cls: Any, model: nn.Module, config: list[dict], method: str,
           batches: Batches | None) -> dict:
    if method == "taylor":
        assert batches is not None
        pruner = _taylor_pruner(pruning, nni, evaluator_cls, model, config, list(batches()))
    else:
        cls = {"l1": pruning.L1NormPruner, "l2": pruning.L2NormPruner, "fpgm": pruning.FPGMPruner}[method]
        pruner = cls(model, config)
    _, masks = pruner.compress()
    return masks


def _taylor_pruner(pruning: Any, nni: Any, evaluator_cls: Any, model: nn.Module, config: list[dict],
                   data: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    if not data:
        raise ValueError("method 'taylor': batches() returned no batches")

    def training_step(batch: tuple[torch.Tensor, torch.Tensor], net: nn.Module) -> torch.Tensor:
        return F.cross_entropy(net(batch[0]), batch[1])

    def training_func(net: nn.Module, optimizer: torch.optim.Optimizer, step: Callable, lr_schedulers: Any = None,
                      max_steps: int | None = None, max_epochs: int | None = None) -> None:
        net.train()
        limit = max_steps or len(data)
        for i in range(limit):
            optimizer.zero_grad()
            step(data[i % len(data)], net).backward()
            optimizer.step()  # NNI hooks count steps here; lr 0 keeps the weights

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.0)
    evaluator = evaluator_cls(training_func, optimizer, training_step, dummy_input=data[0][0])
    return pruning.TaylorPruner(model, config, evaluator, training_steps=len(data))


def masks_from_scores(model: nn.Module, scores: dict[str, torch.Tensor], sparsity: float, *,
                      example_input: torch.Tensor | None = None,
                      kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)) -> ChannelMasks:
    """Channel masks that drop the lowest-scored channels, with NNI's dependency groups.

    ``scores`` maps a conv/linear layer name to one importance per output channel, e.g.
    Taylor scores pooled from federated clients (``fednas.train.taylor_channel_scores``).
    The ranking goes through NNI's L1-norm pruner on a proxy copy whose channel ``c`` of
    layer ``n`` has L1 norm ``scores[n][c]``, so channels linked by residual adds, depthwise
    convs and squeeze-excitation are still kept or removed together, exactly as for the
    data-free methods. Apply the result with ``apply_channel_masks`` (give the same
    ``example_input``: the dependency groups need the traced shapes).
    """
    proxy = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in proxy.named_modules():
            if name in scores and isinstance(module, (nn.Conv2d, nn.Linear)):
                s = scores[name].to(module.weight.dtype).clamp(min=0)
                per_weight = s / module.weight[0].numel()
                module.weight.copy_(per_weight.view(-1, *([1] * (module.weight.dim() - 1))).expand_as(module.weight))
    _check_args(model, sparsity, "l1", None)
    return _rank_channels(proxy, sparsity, "l1", None, (), example_input, kinds)
