"""Running a command as if on another machine: its own hostname, in a UTS namespace.

fednas tells workers apart by ``host:pid``; a worker whose host differs from ours is one
we cannot check with ``kill(pid, 0)``, exactly as for a worker on another computer. Only
its heartbeats (Optuna's on RDB storages, fednas's counter on journal files) tell whether
it is alive.
"""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["as_other_machine", "can_fake_machines"]


def can_fake_machines() -> bool:
    """True when ``unshare --uts`` works here (root, or a user namespace is allowed)."""
    if shutil.which("unshare") is None or shutil.which("hostname") is None:
        return False
    try:
        done = subprocess.run(_prefix("probe-host") + ["true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _prefix(hostname: str) -> list[str]:
    unshare = ["unshare", "--uts"] if os.geteuid() == 0 else ["unshare", "--uts", "--map-root-user"]
    return [*unshare, "sh", "-c", 'hostname "$0" && exec "$@"', hostname]


def as_other_machine(hostname: str, command: list[str]) -> list[str]:
    """``command`` prefixed so that it runs with ``hostname`` as its host name.

    The command replaces the shell (``exec``), so the process started from the returned
    list is the command itself and signals sent to it reach it directly.
    """
    return _prefix(hostname) + list(command)
