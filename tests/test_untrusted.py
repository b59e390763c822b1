"""Nothing unpickles a user's file: data and weights load without pickle."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from fednas.data import DataError, load_dataset

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_npz_is_rejected_without_running_its_payload(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = np.empty(2, dtype=object)
    evil[0] = _Payload(marker)
    evil[1] = _Payload(marker)
    path = tmp_path / "evil.npz"
    np.savez(path, x=evil, y=np.array([0, 1]))
    pickle.dumps(evil)  # the payload is real: unpickling it would create the marker
    with pytest.raises(DataError, match="evil.npz"):
        load_dataset("npz", path=str(path))
    assert not marker.exists()


def test_no_code_path_unpickles() -> None:
    offenders = []
    for path in list((ROOT / "fednas").rglob("*.py")) + list((ROOT / "search_spaces").rglob("*.py")):
        text = path.read_text()
        for pattern in (r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"torch\.load\((?![^)]*weights_only\s*=\s*True)"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert not offenders, offenders
