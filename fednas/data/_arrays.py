"""Array plumbing shared by the loaders: layouts, label checks, splits, scaling."""

from __future__ import annotations

import math

import numpy as np

from fednas.data._errors import DataError

_CHANNELS = (1, 3, 4)
MAX_ARRAY_BYTES = 4 * 2**30  # per array read from a user's file (npz key, idx file); Fashion-MNIST's training images are 47 MB as uint8


def as_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """Returns numeric images ``x`` as ``[N, C, H, W]`` (a view where possible).

    Accepts ``[N, D]`` with ``D`` a perfect square (gray), ``[N, H, W]`` (gray), ``[N, H, W, C]``
    with ``C`` in {1, 3, 4} (channels-last) and ``[N, C, H, W]``; images must be square.
    ``where`` names the file/key in error messages.
    """
    check_numeric(x, where)
    shape = tuple(x.shape)
    if x.ndim == 2:
        side = math.isqrt(shape[1])
        if side * side != shape[1] or side == 0:
            raise DataError(f"{where}: rows have {shape[1]} values; expected a perfect square (e.g. 784 = 28x28)")
        return x.reshape(shape[0], 1, side, side)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and shape[2] != shape[3] and shape[3] in _CHANNELS and shape[1] == shape[2]:
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DataError(f"{where}: got shape {shape}; expected [N, D], [N, H, W], [N, H, W, C] or [N, C, H, W]")
    if x.shape[2] != x.shape[3] or x.shape[2] == 0:
        raise DataError(f"{where}: got shape {shape}; expected square images")
    return x


def check_numeric(a: np.ndarray, where: str) -> None:
    """Raises ``DataError`` unless ``a`` holds real numbers (ints or finite floats)."""
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise DataError(f"{where}: got dtype {a.dtype}; expected a numeric (integer or float) array")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise DataError(f"{where}: contains NaN or inf; expected finite values")


def check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Returns labels ``y`` as int64 ``[n]``; they must be non-negative integers."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: got shape {tuple(y.shape)}; expected 1-D labels")
    if len(y) != n:
        raise DataError(f"{where}: has {len(y)} labels for {n} images; expected equal lengths")
    check_numeric(y, where)
    if np.issubdtype(y.dtype, np.floating) and not np.array_equal(y, np.round(y)):
        raise DataError(f"{where}: labels are not whole numbers; expected integer class indices")
    if n and y.min() < 0:
        raise DataError(f"{where}: has negative label {y.min()}; expected class indices >= 0")
    return y.astype(np.int64, copy=False)


def stratified_take(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Picks ``k`` of the positions in ``y`` with class counts proportional to the whole.

    Per-class quotas are rounded by largest remainder (ties broken at random), so exactly
    ``min(k, len(y))`` positions come back, sorted to keep the source order.
    """
    if k >= len(y):
        return np.arange(len(y), dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * k / len(y)
    take = np.floor(quota).astype(np.int64)
    extra = k - int(take.sum())
    if extra:
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))
        take[order[:extra]] += 1
    chosen = [rng.choice(np.flatnonzero(y == c), size=t, replace=False) for c, t in zip(classes, take)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator,
                     where: str) -> tuple[np.ndarray, np.ndarray]:
    """Splits positions of ``y`` into (train, test), stratified by class; both non-empty."""
    if len(y) < 2:
        raise DataError(f"{where}: has {len(y)} sample(s); expected at least 2 to split into train and test")
    k = min(max(round(len(y) * test_fraction), 1), len(y) - 1)
    test = stratified_take(y, k, rng)
    mask = np.ones(len(y), dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask).astype(np.int64), test


def to_unit(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Maps both splits to float32 in [0, 1] with one affine map chosen from the train split.

    Integer images are divided by 255 (or by their maximum if larger); float images already in
    [0, 1] are kept, those in [0, 255] divided by 255, anything else min-max scaled.

    Returns:
        The two splits and the map ``(offset, scale)``: ``unit = (pixel - offset) * scale``.
    """
    lo, hi = (float(x_train.min()), float(x_train.max())) if x_train.size else (0.0, 1.0)
    if np.issubdtype(x_train.dtype, np.integer):
        lo, hi = min(lo, 0.0), max(hi, 255.0)
    elif lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    elif lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    out = []
    for x in (x_train, x_test):
        x = x.astype(np.float32)  # always a fresh array, so the in-place ops below are safe
        if lo:
            x -= np.float32(lo)
        x *= np.float32(scale)
        out.append(x)
    return out[0], out[1], (lo, scale)


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Standardizes both float32 splits in place per channel with the train mean/std; returns (means, stds)."""
    means, stds = [], []
    for c in range(x_train.shape[1]):
        mean, std = 0.0, 1.0
        if x_train.size:  # torch reduces a strided view without the full-size temporaries numpy makes
            import torch

            std_t, mean_t = torch.std_mean(torch.from_numpy(x_train[:, c]), correction=0)
            mean, std = float(mean_t), float(std_t)
        std = std if std > 1e-8 else 1.0  # a constant channel carries no signal; just centre it
        for x in (x_train, x_test):
            x[:, c] -= np.float32(mean)
            x[:, c] /= np.float32(std)
        means.append(mean)
        stds.append(std)
    return tuple(means), tuple(stds)


def limit_test_size(limit: int, test_fraction: float) -> int:
    """Most test samples kept when ``limit`` train samples are kept."""
    return math.ceil(round(limit * test_fraction / (1 - test_fraction), 9))
