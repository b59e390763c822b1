"""The ``npz`` source: a user's ``.npz`` archive, loaded without unpickling."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fednas.data._arrays import as_nchw, check_labels
from fednas.data._errors import DataError
from fednas.data._source import LoadRequest, RawData

_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
_EXPECTED = "expected arrays 'x' and 'y', or 'x_train', 'y_train', 'x_test' and 'y_test'"


def _array(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
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
