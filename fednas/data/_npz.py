"""The ``npz`` source: a user's ``.npz`` archive, loaded without unpickling."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from fednas.data._arrays import MAX_ARRAY_BYTES, as_nchw, check_labels
from fednas.data._errors import DataError
from fednas.data._source import LoadRequest, RawData

_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
_EXPECTED = "expected arrays 'x' and 'y', or 'x_train', 'y_train', 'x_test' and 'y_test'"


def _check_size(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> None:
    """The array's header (shape, dtype) against the bound and the bytes the archive holds, before numpy
    allocates it: a header may claim terabytes in a file of a few bytes."""
    member = f"{key}.npy"
    try:
        info = archive.zip.getinfo(member)
        with archive.zip.open(member) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except KeyError:
        return  # numpy reports the missing key itself
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: key '{key}' has no valid .npy header ({exc}); expected a numeric array") from None
    if dtype.hasobject:
        return  # refused below: it would need pickle
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise DataError(f"{path}: key '{key}' has shape {shape} ({nbytes:,} bytes); expected at most "
                        f"{MAX_ARRAY_BYTES:,} bytes per array (fednas.data bound)")
    if nbytes > info.file_size:
        raise DataError(f"{path}: key '{key}' claims shape {shape} ({nbytes:,} bytes) but holds "
                        f"{info.file_size:,}; the archive is truncated or corrupt")


def _array(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    _check_size(archive, path, key)
    try:
        return archive[key]
    except ValueError as exc:  # object arrays need pickle, which we never allow
        raise DataError(f"{path}: key '{key}' cannot be loaded without pickle ({exc}); "
                        f"expected a numeric array") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: key '{key}' is corrupt ({exc}); expected a numeric array") from None


def _pair(archive: np.lib.npyio.NpzFile, path: Path, xk: str, yk: str) -> tuple[np.ndarray, np.ndarray]:
    x = as_nchw(_array(archive, path, xk), f"{path}: key '{xk}'")
    y = check_labels(_array(archive, path, yk), len(x), f"{path}: key '{yk}'")
    if len(x) == 0:
        raise DataError(f"{path}: key '{xk}' is empty; expected at least one image")
    return x, y


def load_npz(req: LoadRequest) -> RawData:
    """Loads ``x``/``y`` or ``x_train``/``y_train``/``x_test``/``y_test`` from ``req.path``."""
    path = req.require_path(".npz file")
    if not path.is_file():
        raise DataError(f"{path}: not a file; expected an .npz archive")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot be read as .npz ({exc}); expected an .npz archive") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a single .npy array; expected an .npz archive ({_EXPECTED})")
    with archive:
        keys = set(archive.files)
        name = req.name or path.stem
        if all(k in keys for k in _SPLIT_KEYS):
            x_train, y_train = _pair(archive, path, "x_train", "y_train")
            x_test, y_test = _pair(archive, path, "x_test", "y_test")
            if x_train.shape[1:] != x_test.shape[1:]:
                raise DataError(f"{path}: key 'x_test' has images {x_test.shape[1:]}; expected "
                                f"{x_train.shape[1:]} like 'x_train'")
            return RawData(x_train, y_train, x_test, y_test, name=name)
        missing = [k for k in ("x", "y") if k not in keys]
        if missing:
            found = ", ".join(repr(k) for k in sorted(keys)) or "none"
            raise DataError(f"{path}: missing key '{missing[0]}' (found {found}); {_EXPECTED}")
        x, y = _pair(archive, path, "x", "y")
        return RawData(x, y, name=name)
