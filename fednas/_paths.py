"""Output folders: created on demand and checked writable before anything is written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fednas._errors import ConfigError

__all__ = ["ensure_writable_dir", "replaced_dir"]


def ensure_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create ``path`` if needed and check a file can be written there.

    Raises:
        ConfigError: one line naming the folder and the reason.
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".fednas-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{flag} {out}: cannot write there ({type(exc).__name__}: {exc.strerror or exc})") from None
    return out


@contextmanager
def replaced_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``path``; on success it takes ``path``'s place.

    Whatever was in ``path`` before is kept whole until the new folder is complete, then
    swapped out with two renames and deleted, so a reader never sees files of both; on an
    error the staging folder is removed and ``path`` is left as it was.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        yield stage
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # mkdtemp makes it 0700
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
