"""Output folders: created on demand and checked writable before anything is written."""

from __future__ import annotations

from pathlib import Path

from fednas._errors import ConfigError

__all__ = ["ensure_writable_dir"]


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
