"""The ``idx`` source: MNIST-style idx files (plain or gzipped), parsed with numpy."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from fednas.data._arrays import MAX_ARRAY_BYTES, check_labels
from fednas.data._errors import DataError
from fednas.data._source import LoadRequest, RawData

# idx type byte -> numpy dtype (big-endian on disk)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILES = {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")}



def read_idx(path: Path) -> np.ndarray:
    """Reads one idx file (gunzipping it if its name ends in ``.gz``).

    The header is read first and the payload it declares is bounded (``MAX_ARRAY_BYTES``) before
    anything of that size is read or allocated; a gzip member is decompressed as a stream, so a
    small ``.gz`` that would inflate past the declared size is refused without inflating it.

    Args:
        path: The file.

    Returns:
        The array, in native byte order, with the dimensions stored in the header.

    Raises:
        DataError: The file cannot be read, is not idx, is too large, is truncated or has
            bytes after the declared payload.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES or magic[3] == 0:
                raise DataError(f"{path}: bad magic number {magic.hex() or '(empty)'}; expected an idx file "
                                f"(00 00 <type> <ndim>)")
            ndim, dtype = magic[3], np.dtype(_IDX_TYPES[magic[2]])
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path}: truncated header; expected {ndim} dimension sizes")
            dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
            payload = math.prod(dims) * dtype.itemsize
            expected = 4 + 4 * ndim + payload
            if payload > MAX_ARRAY_BYTES:
                raise DataError(f"{path}: header declares shape {dims} ({payload:,} bytes); expected at most "
                                f"{MAX_ARRAY_BYTES:,} bytes per idx file (fednas.data bound)")
            data = f.read(payload)
            extra = f.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc}); expected an idx file") from None
    if len(data) != payload or extra:
        size = f"{4 + 4 * ndim + len(data)} bytes" if not extra else f"more than {expected} bytes"
        raise DataError(f"{path}: has {size}; expected {expected} for shape {dims} (truncated or corrupt)")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


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
