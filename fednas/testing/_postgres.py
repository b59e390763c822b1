"""A throwaway PostgreSQL server for tests and benchmarks (Debian's postgresql package)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PostgresUnavailable", "postgres_binaries", "temporary_postgres"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or no user that may run them."""


def postgres_binaries() -> Path | None:
    """Folder holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found and Path(found).resolve().with_name("initdb").exists():
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _runner() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the ``postgres`` user."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server") from None
    return ["runuser", "-u", "postgres", "--"]


@contextmanager
def temporary_postgres(user: str = "fednas", database: str = "fednas") -> Iterator[str]:
    """Start a PostgreSQL server on 127.0.0.1 in a temporary folder; yields its SQLAlchemy URL.

    Trust authentication, a free port, stopped and removed on exit.

    Raises:
        PostgresUnavailable: PostgreSQL is not installed or cannot be started here.
    """
    bin_dir = postgres_binaries()
    if bin_dir is None:
        raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    run = _runner()
    folder = Path(tempfile.mkdtemp(prefix="fednas-pg-"))
    if run:
        shutil.chown(folder, user="postgres")
    data, port = folder / "data", _free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
    try:
        _check(run + [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", user], "initdb")
        _check(run + [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w",
                      "start"], "pg_ctl start", folder / "log")
        try:
            _check([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database], "createdb")
            yield f"postgresql://{user}@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run(run + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check(cmd: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        if log is not None and log.exists():
            detail = log.read_text().strip().splitlines()[-1:] or detail
        raise PostgresUnavailable(f"{what} failed: {detail[0]}")
