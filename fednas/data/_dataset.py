"""The in-memory dataset every fednas source is turned into."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fednas.data._errors import DataError

__all__ = ["ArrayDataset", "Normalization"]


@dataclass(frozen=True)
class Normalization:
    """How a source's pixels became a dataset's inputs, to do the same on a device.

    ``input[c] = ((pixel - offset) * scale - mean[c]) / std[c]``, after resizing the
    ``[0, 1]`` image to the dataset's square resolution (bilinear, antialiased).
    """

    offset: float = 0.0
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"pixel_offset": self.offset, "pixel_scale": self.scale, "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Images and labels held as tensors, ready for a ``TensorDataset``/``DataLoader``.

    ``eq=False`` because comparing tensors element-wise has no single truth value; two datasets
    are equal only if they are the same object.

    Attributes:
        x: float32 images, shape ``[N, C, H, W]`` with ``H == W``, standardized per channel.
        y: int64 labels, shape ``[N]``, values in ``[0, num_classes)``.
        num_classes: Number of classes of the source (not only those present in this split).
        groups: Optional int array ``[N]``: the natural owner of each sample (e.g. a LEAF user).
        name: A human-readable name of the source.
        normalization: how the source's pixels were mapped to ``x`` (None: made in memory).
        class_names: label ``i``'s name where the source has names (an image folder's sub-folders).
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    groups: np.ndarray | None = None
    name: str = ""
    normalization: Normalization | None = None
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if x.ndim != 4 or x.dtype != torch.float32:
            raise DataError(f"ArrayDataset.x: got {x.dtype} {tuple(x.shape)}; expected float32 [N, C, H, W]")
        if x.shape[2] != x.shape[3]:
            raise DataError(f"ArrayDataset.x: got images {x.shape[2]}x{x.shape[3]}; expected square images")
        if y.ndim != 1 or y.dtype != torch.int64 or len(y) != len(x):
            raise DataError(f"ArrayDataset.y: got {y.dtype} {tuple(y.shape)}; expected int64 [{len(x)}]")
        if self.num_classes < 1:
            raise DataError(f"ArrayDataset.num_classes: got {self.num_classes}; expected >= 1")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DataError(f"ArrayDataset.y: labels span [{int(y.min())}, {int(y.max())}]; "
                            f"expected [0, {self.num_classes})")
        if self.groups is not None and np.shape(self.groups) != (len(x),):
            raise DataError(f"ArrayDataset.groups: got shape {np.shape(self.groups)}; expected ({len(x)},)")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        groups = "" if self.groups is None else f", groups={len(np.unique(self.groups))}"
        return (f"ArrayDataset(name={self.name!r}, n={len(self)}, shape={tuple(self.x.shape[1:])}, "
                f"num_classes={self.num_classes}{groups})")

    @property
    def in_channels(self) -> int:
        """Number of image channels ``C``."""
        return int(self.x.shape[1])

    @property
    def resolution(self) -> int:
        """Image side length ``H`` (images are square)."""
        return int(self.x.shape[2])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """Returns the samples at ``indices`` (in that order), keeping ``groups`` aligned.

        Args:
            indices: 1-D integer array of sample positions, e.g. one client's partition.

        Returns:
            A new dataset sharing ``num_classes`` and ``name`` with this one.
        """
        idx = np.asarray(indices)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise DataError(f"subset: got indices {idx.dtype} {idx.shape}; expected a 1-D integer array")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataError(f"subset: indices span [{idx.min()}, {idx.max()}]; expected [0, {len(self)})")
        t = torch.from_numpy(idx)
        groups = None if self.groups is None else self.groups[idx]
        return ArrayDataset(self.x[t], self.y[t], self.num_classes, groups, self.name, self.normalization,
                            self.class_names)
