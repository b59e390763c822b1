"""What a loader is given and what it hands back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fednas.data._errors import DataError


@dataclass(frozen=True)
class LoadRequest:
    """The arguments of :func:`load_dataset` that a loader may use."""

    source: str
    path: str | None
    test_fraction: float
    seed: int
    resolution: int | None
    name: str | None

    def require_path(self, kind: str = "path") -> Path:
        """Returns ``path`` as a ``Path`` that exists, or raises ``DataError``."""
        if not self.path:  # "" too: Path("") would silently mean the working directory
            raise DataError(f"source '{self.source}': path is required; expected a {kind}")
        p = Path(self.path).expanduser()
        if not p.exists():
            raise DataError(f"{p}: not found; expected a {kind} for source '{self.source}'")
        return p


@dataclass(frozen=True, eq=False)
class RawData:
    """Unscaled images ``[N, C, H, W]`` (any real dtype) and int64 labels from one source.

    ``x_test``/``y_test`` are ``None`` when the source has no predefined split; then
    :func:`load_dataset` splits the train arrays itself.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    groups_train: np.ndarray | None = None
    groups_test: np.ndarray | None = None
    name: str = ""
    class_names: tuple[str, ...] = ()  # label i's name, where the source has names (imagefolder)
