"""Sharing this machine's cores among the fednas workers running on it.

PyTorch sizes its intra-op thread pool to all cores. Two searches on one machine then run
twice as many busy OpenMP threads as there are cores, and OpenMP's spin-waiting makes
that far worse than sharing: on 2 cores, two hand-started workers ran a tiny study 19x
slower than with one thread each (BENCHMARKS.md, "Workers on one machine"). So each
worker registers itself in a per-user folder of the machine's temporary directory and,
at the start of every trial and round, sizes its pool to ``cores // live workers``.

An explicit ``OMP_NUM_THREADS`` turns this off: torch then uses what the user chose.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fednas._process import pid_alive

__all__ = ["LocalWorkers", "usable_cores"]


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS tells, else cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LocalWorkers:
    """This process as one of the fednas workers on this machine (a context manager).

    Args:
        folder: where workers register (default: ``<tmp>/fednas-workers-<uid>``).
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        self.folder = Path(folder) if folder else Path(tempfile.gettempdir()) / f"fednas-workers-{uid}"
        self.auto = not os.environ.get("OMP_NUM_THREADS")
        self._entry: Path | None = None
        self._initial: int | None = None

    def __enter__(self) -> LocalWorkers:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._entry = self.folder / str(os.getpid())
            self._entry.touch()
        except OSError:  # a read-only or full /tmp: run without sharing
            self._entry = None
        if self.auto:
            import torch

            self._initial = torch.get_num_threads()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._entry is not None:
            self._entry.unlink(missing_ok=True)
        if self._initial is not None:
            import torch

            torch.set_num_threads(self._initial)

    def count(self) -> int:
        """Live registered workers, this one included; entries of dead processes are removed."""
        live = 1 if self._entry is None else 0
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return max(live, 1)
        for entry in entries:
            if not entry.name.isdigit():
                continue
            if pid_alive(int(entry.name)):
                live += 1
            else:
                entry.unlink(missing_ok=True)
        return max(live, 1)

    def share(self) -> int:
        """Size torch's thread pool to this worker's share of the cores; returns the thread count."""
        import torch

        if not self.auto:
            return torch.get_num_threads()
        most = min(usable_cores(), self._initial or 1)  # never more than torch chose alone
        threads = max(1, most // self.count())
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads
