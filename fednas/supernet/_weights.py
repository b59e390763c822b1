"""The supernet's weights: one state dict, boxes of it sent out as subnets, boxes averaged back.

``Supernet`` holds the largest network of a search space as NumPy arrays (the same tensors
and names as ``build_model(supernet_arch).state_dict()``). A member of the space is a set of
boxes of those arrays (``Architecture.weight_slices``): ``extract`` copies them out as the
subnet's own state dict, ``subnet`` loads them into an ordinary module of the family (the
class ``build_model`` returns), and ``SliceAverage`` folds trained subnets back in, averaging
every element over the subnets that held it, weighted by their examples. Elements no subnet
held keep their value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fednas._seeds import derive_seed
from search_spaces import Architecture, WeightSlice, arch_from_json, build_model

__all__ = ["SliceAverage", "Supernet"]


@dataclass
class Supernet:
    """The largest network of a space, as NumPy arrays by ``state_dict`` name.

    Attributes:
        arch: the supernet's architecture (``SearchSpace.supernet``).
        num_classes / in_channels: what every subnet is built for.
        state: the supernet's tensors (float32, batch-norm counters int64).
    """

    arch: Architecture
    num_classes: int
    in_channels: int
    state: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def initial(cls, arch: Architecture, *, num_classes: int, in_channels: int, seed: int) -> Supernet:
        """The supernet with the family's own initialization, seeded."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "supernet-init"))
            model = build_model(arch, num_classes=num_classes, in_channels=in_channels)
        state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
        return cls(arch, num_classes, in_channels, state)

    def slices(self, sub: Architecture) -> tuple[WeightSlice, ...]:
        """The boxes of ``sub``'s tensors (cached per architecture)."""
        return _slices(sub.to_json(sort_keys=True), self.arch.to_json(sort_keys=True), self.num_classes,
                       self.in_channels)

    def extract(self, sub: Architecture) -> dict[str, np.ndarray]:
        """``sub``'s state dict, copied out of the supernet's arrays."""
        return {s.key: np.array(self.state[s.source][s.index], order="C", copy=True) for s in self.slices(sub)}

    def subnet(self, sub: Architecture) -> nn.Module:
        """An ordinary module of the family (``build_model(sub)``) holding the supernet's weights for ``sub``."""
        model = build_model(sub, num_classes=self.num_classes, in_channels=self.in_channels)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in self.extract(sub).items()}, strict=True)
        return model

    def copy(self) -> Supernet:
        return Supernet(self.arch, self.num_classes, self.in_channels, {k: v.copy() for k, v in self.state.items()})


@functools.lru_cache(maxsize=4096)
def _slices(sub_json: str, sup_json: str, num_classes: int, in_channels: int) -> tuple[WeightSlice, ...]:
    sub, sup = arch_from_json(sub_json), arch_from_json(sup_json)
    return tuple(sub.weight_slices(sup, num_classes=num_classes, in_channels=in_channels))


class SliceAverage:
    """Per-element weighted average of trained subnets over the supernet elements each one held.

    ``add`` each reply (its architecture, its arrays, its weight, e.g. its number of examples),
    then ``apply``: every float element any reply held becomes the weighted mean of the values
    those replies sent; integer counters (batch norm's ``num_batches_tracked``) take the largest
    value sent. Elements no reply held are left as they were.
    """

    def __init__(self, supernet: Supernet) -> None:
        self.supernet = supernet
        self._sums: dict[str, np.ndarray] = {}
        self._weights: dict[str, np.ndarray] = {}
        self._counters: dict[str, np.ndarray] = {}
        self.replies = 0

    def add(self, sub: Architecture, arrays: dict[str, np.ndarray], weight: float) -> None:
        """Fold one trained subnet in.

        Raises:
            ValueError: a tensor is missing or has the wrong shape, or the weight is not positive.
        """
        if not weight > 0:
            raise ValueError(f"weight: expected a number > 0, got {weight!r}")
        slices = self.supernet.slices(sub)
        missing = [s.key for s in slices if s.key not in arrays]
        if missing or len(arrays) != len(slices):
            extra = sorted(set(arrays) - {s.key for s in slices})
            raise ValueError(f"reply for {sub.describe()}: missing tensor(s) {missing[:3]}, unexpected {extra[:3]}")
        for s in slices:
            value = np.asarray(arrays[s.key])
            if value.shape != s.shape:
                raise ValueError(f"reply tensor {s.key}: shape {value.shape}, expected {s.shape}")
            base = self.supernet.state[s.source]
            idx = s.index
            if not np.issubdtype(base.dtype, np.floating):
                counter = self._counters.setdefault(s.source, np.array(base, copy=True))
                counter[idx] = np.maximum(counter[idx], value)
                continue
            if s.source not in self._sums:
                self._sums[s.source] = np.zeros(base.shape, np.float64)
                self._weights[s.source] = np.zeros(base.shape, np.float64)
            self._sums[s.source][idx] += weight * value
            self._weights[s.source][idx] += weight
        self.replies += 1

    def apply(self) -> int:
        """Write the averages into the supernet; returns how many of its elements were updated."""
        updated = 0
        for key, total in self._sums.items():
            w = self._weights[key]
            held = w > 0
            target = self.supernet.state[key]
            target[held] = (total[held] / w[held]).astype(target.dtype)
            updated += int(held.sum())
        for key, counter in self._counters.items():
            self.supernet.state[key] = counter
        self._sums, self._weights, self._counters = {}, {}, {}
        return updated
