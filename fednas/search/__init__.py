"""The search layer: the only place where Optuna, the cost model and the federation meet."""

from __future__ import annotations

from fednas.search._progress import Progress
from fednas.search._storage import StorageError, open_storage
from fednas.search._study import SearchResult, TrialSummary, load_front, run_search, summarize

__all__ = [
    "Progress",
    "SearchResult",
    "StorageError",
    "TrialSummary",
    "load_front",
    "open_storage",
    "run_search",
    "summarize",
]
