"""The ``idx`` source: MNIST-style idx files (plain or gzipped), parsed with numpy."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from fednas.data._arrays import check_labels
from fednas.data._errors import DataError
from fednas.data._source import LoadRequest, RawData

# idx type byte -> numpy dtype (big-endian on disk)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILES = {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")}


def read_idx(path: Path) -> np.ndarray:
    """Reads one idx file (gunzipping it if its name ends in ``.gz``).

    Args:
        path: The file.

    Returns:
        The array, in native byte order, with the dimensions stored in the header.

    Raises:
        DataError: The file cannot be read, is not idx, or is truncated.
    """
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc}); expected an idx file") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise DataError(f"{path}: bad magic number {data[:4].hex() or '(empty)'}; expected an idx file "
                        f"(00 00 <type> <ndim>)")
    ndim, dtype = data[3], np.dtype(_IDX_TYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header; expected {ndim} dimension sizes")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: has {len(data)} bytes; expected {expected} for shape {dims} "
                        f"(truncated or corrupt)")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str, ndim: int) -> Path:
    names = [f"{stem}-idx{ndim}-ubyte", f"{stem}.idx{ndim}-ubyte"]
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{folder}: missing {names[0]} (or {names[0]}.gz); expected MNIST-style idx files")


def _read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _FILES[split]
    image_path, label_path = _find(folder, image_stem, 3), _find(folder, label_stem, 1)
    x, y = read_idx(image_path), read_idx(label_path)
    if x.ndim != 3:
        raise DataError(f"{image_path}: has {x.ndim} dimensions; expected 3 (count, rows, cols)")
    if x.shape[1] != x.shape[2]:
        raise DataError(f"{image_path}: images are {x.shape[1]}x{x.shape[2]}; expected square images")
    return x[:, None], check_labels(y, len(x), str(label_path))


def load_idx(req: LoadRequest) -> RawData:
    """Loads ``train-*`` and ``t10k-*`` idx files from the folder ``req.path``."""
    folder = req.require_path("folder of idx files")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected a folder of idx files")
    x_train, y_train = _read_split(folder, "train")
    x_test, y_test = _read_split(folder, "test")
    return RawData(x_train, y_train, x_test, y_test, name=req.name or folder.name)
