"""The search layer: the only place where Optuna, the cost model and the federation meet."""

from __future__ import annotations

from fednas.search._progress import Progress
from fednas.search._study import (
    SearchInterrupted,
    SearchResult,
    TrialSummary,
    check_study,
    load_front,
    open_storage,
    run_search,
    summarize,
)
from fednas.study import StorageError

__all__ = [
    "Progress",
    "SearchInterrupted",
    "SearchResult",
    "StorageError",
    "TrialSummary",
    "check_study",
    "load_front",
    "open_storage",
    "run_search",
    "summarize",
]
