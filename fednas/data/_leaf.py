"""The ``leaf`` source: LEAF-format JSON (e.g. FEMNIST), one natural client per user."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fednas.data._arrays import as_nchw, check_labels
from fednas.data._errors import DataError
from fednas.data._source import LoadRequest, RawData

_SPLIT_STREAM = 2  # random stream used for the per-user train/test split


MAX_LEAF_FILE_BYTES = 2 * 2**30  # per JSON file; LEAF's FEMNIST files are a few hundred MB each


def _read_json(path: Path) -> dict:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); expected a LEAF .json file") from None
    if size > MAX_LEAF_FILE_BYTES:
        raise DataError(f"{path}: {size:,} bytes; expected a LEAF .json file of at most {MAX_LEAF_FILE_BYTES:,} "
                        "bytes (split it into several files)")
    try:
        with path.open(encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({exc}); expected a LEAF .json file") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply; expected a LEAF .json file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("user_data"), dict):
        raise DataError(f"{path}: no 'user_data' object; expected LEAF JSON with 'users' and 'user_data'")
    return doc


def _user_arrays(path: Path, user: str, entry: object) -> tuple[np.ndarray, np.ndarray]:
    where = f"{path}: user_data['{user}']"
    if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
        raise DataError(f"{where}: expected an object with lists 'x' and 'y'")
    try:
        x = np.asarray(entry["x"], dtype=np.float32)
        y = np.asarray(entry["y"])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{where}['x']: not a rectangular numeric array ({exc}); expected equal-length "
                        f"pixel rows") from None
    if x.ndim < 2:
        raise DataError(f"{where}['x']: got shape {x.shape}; expected one pixel row (or image) per sample")
    return as_nchw(x, f"{where}['x']"), check_labels(y, len(x), f"{where}['y']")


def _merge(files: list[Path], users: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenates every user's samples of ``files``; ``users`` maps names to group ids."""
    xs, ys, gs = [], [], []
    for path in files:
        doc = _read_json(path)
        names = doc.get("users", list(doc["user_data"]))
        if not isinstance(names, list):
            raise DataError(f"{path}: 'users' is {type(names).__name__}; expected a list of user names")
        for user in names:
            if not isinstance(user, str):
                raise DataError(f"{path}: 'users' holds {type(user).__name__} {str(user)[:40]}; expected user names "
                                "(strings)")
            if user not in doc["user_data"]:
                raise DataError(f"{path}: user '{user}' is listed in 'users' but has no 'user_data' entry")
            x, y = _user_arrays(path, user, doc["user_data"][user])
            if xs and x.shape[1:] != xs[0].shape[1:]:
                raise DataError(f"{path}: user_data['{user}']['x'] has images {x.shape[1:]}; "
                                f"expected {xs[0].shape[1:]} like the other users")
            xs.append(x)
            ys.append(y)
            gs.append(np.full(len(y), users.setdefault(user, len(users)), dtype=np.int64))
    if not xs or sum(len(y) for y in ys) == 0:
        raise DataError(f"{files[0].parent}: LEAF files hold no samples; expected users with data")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)


def _json_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder}: no *.json files; expected LEAF JSON files")
    return files


def _split_by_user(groups: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Marks about ``test_fraction`` of each user's samples as test (keeping one for train)."""
    is_test = np.zeros(len(groups), dtype=bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        k = min(int(np.floor(len(idx) * test_fraction + 0.5)), len(idx) - 1)
        is_test[rng.choice(idx, size=k, replace=False)] = True
    return is_test


def load_leaf(req: LoadRequest) -> RawData:
    """Loads LEAF JSON: one file, a folder of files, or a folder with ``train/`` and ``test/``."""
    path = req.require_path("LEAF .json file or folder")
    users: dict[str, int] = {}
    name = req.name or path.stem
    if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
        x_tr, y_tr, g_tr = _merge(_json_files(path / "train"), users)
        x_te, y_te, g_te = _merge(_json_files(path / "test"), users)
        if x_tr.shape[1:] != x_te.shape[1:]:
            raise DataError(f"{path / 'test'}: images {x_te.shape[1:]}; expected {x_tr.shape[1:]} as in train/")
        return RawData(x_tr, y_tr, x_te, y_te, g_tr, g_te, name=name)
    x, y, g = _merge(_json_files(path) if path.is_dir() else [path], users)
    is_test = _split_by_user(g, req.test_fraction, np.random.default_rng([req.seed, _SPLIT_STREAM]))
    return RawData(x[~is_test], y[~is_test], x[is_test], y[is_test], g[~is_test], g[is_test], name=name)
