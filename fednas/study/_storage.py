"""Opening Optuna storages and finding the artifact store that sits beside them."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore

__all__ = ["StorageError", "artifact_dir_for", "artifact_store", "open_storage", "probe_writable", "sqlite_path",
           "storage_file", "study_names"]


class StorageError(ValueError):
    """A storage URL that cannot be opened (one line, names the URL)."""


def sqlite_path(url: str) -> Path | None:
    """File path of a ``sqlite:///`` URL (also ``sqlite:///file:PATH?mode=...&uri=true``), else None."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or _in_memory(url):
        return None
    rest = url[len(prefix) :]
    if rest.startswith("file:") and "uri=true" in rest.partition("?")[2]:
        rest = rest[len("file:") :].partition("?")[0]
    return Path(rest)


def _in_memory(url: str) -> bool:
    if not url.startswith("sqlite:"):
        return False
    rest = url[len("sqlite:") :].lstrip("/")
    return rest == "" or rest.startswith((":memory:", "file::memory:")) or "mode=memory" in rest


def _refuse_in_memory(url: str) -> None:
    if _in_memory(url):
        raise StorageError(f"{url}: an in-memory SQLite database keeps nothing once the command ends; "
                           "expected a file, e.g. sqlite:///studies/NAME.db")


def probe_writable(url: str) -> None:
    """Check that a search can write to a SQLite or journal storage, writing nothing that stays.

    A SQLite file creates a table inside a transaction and rolls it back (a read-only file,
    folder or ``mode=ro`` URI fails); a journal file is opened for appending, or a file is created and
    removed in its folder. Database servers are not probed (their errors come at the first write).

    Raises:
        StorageError: one line naming the URL and the reason.
    """
    _refuse_in_memory(url)
    journal, db = _journal_path(url), sqlite_path(url)
    try:
        if journal is not None or (db is not None and not db.exists()):
            path = journal if journal is not None else db
            if path.exists():
                with open(path, "ab"):
                    pass
            else:
                folder = path.parent if str(path.parent) else Path(".")
                if folder.exists():
                    probe = folder / f".{path.name}.fednas-write-test"
                    probe.write_bytes(b"")
                    probe.unlink()
            return
        if db is not None:
            import sqlalchemy

            engine = sqlalchemy.create_engine(url, connect_args={"timeout": 60})
            try:
                raw = engine.raw_connection()
                try:
                    cursor = raw.cursor()
                    cursor.execute("BEGIN IMMEDIATE")
                    cursor.execute("CREATE TABLE fednas_write_probe (x INTEGER)")  # undone below
                    raw.rollback()
                finally:
                    raw.close()
            finally:
                engine.dispose()
    except OSError as exc:
        raise StorageError(f"{url}: cannot write there ({type(exc).__name__}: {exc.strerror or exc})") from None
    except Exception as exc:  # SQLAlchemy/sqlite3 errors: "attempt to write a readonly database" and the like
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(f"{url}: cannot write to the database ({first})") from None


def open_storage(url: str, *, create: bool = True, heartbeat: int = 0,
                 on_stale: Callable[[optuna.Study, Any], Any] | None = None) -> optuna.storages.BaseStorage:
    """Open an Optuna storage URL: RDB URLs (SQLite with a busy timeout) or a journal file.

    ``journal:PATH`` (or a path ending in ``.log``/``.journal``) opens Optuna's journal
    file storage. With ``create=False`` a SQLite or journal file must already exist.
    ``heartbeat`` (seconds, RDB only) turns on Optuna's heartbeats: a trial whose worker
    stopped beating for three intervals is failed, and ``on_stale(study, trial)`` (the
    search's retry) is called for it by the next worker.

    Raises:
        StorageError: naming the URL and what was expected.
    """
    _refuse_in_memory(url)
    journal = _journal_path(url)
    if journal is not None:
        if not str(journal) or journal.is_dir():
            raise StorageError(f"{url}: is a folder; expected journal:PATH naming a journal file")
        if not create and not journal.exists():
            raise StorageError(f"{url}: no such journal file")
        try:
            journal.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{url}: cannot create folder {journal.parent} ({exc.strerror})") from None
        from optuna.storages.journal import JournalFileBackend

        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise StorageError(f"{url}: cannot be read as a journal file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    db = sqlite_path(url)
    if db is not None:
        if not create and not db.exists():
            raise StorageError(f"{url}: no such SQLite file ({db})")
        if db.parent != Path("") and not db.parent.exists():
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"{url}: cannot create folder {db.parent} ({exc.strerror})") from None
    if "://" not in url:
        raise StorageError(
            f"{url!r}: expected a storage URL such as sqlite:///studies/NAME.db, "
            "postgresql://user@host/db, mysql://... or journal:PATH"
        )
    kwargs = {"connect_args": {"timeout": 60}} if db is not None else {}
    optuna_log = logging.getLogger("optuna")
    level = optuna_log.level
    optuna_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            beat: dict = {}
            if heartbeat:
                beat = {"heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat}
                if on_stale is not None:
                    beat["heartbeat_stale_trial_callback"] = on_stale
            return _rdb_with_retry(url, kwargs, beat)
    except ImportError:
        raise StorageError(f"{url}: no database driver for this URL is installed; {_driver_hint(url)}") from None
    except Exception as exc:  # SQLAlchemy raises many types; the user needs one line
        raise StorageError(f"{url}: cannot open storage ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    finally:
        optuna_log.setLevel(level)


# What a worker sees when another one created the same new database a moment earlier:
# the tables ("table ... already exists") or the schema version row (a unique-key error
# on alembic_version: SQLite, PostgreSQL and MySQL word it differently).
_CREATION_RACE = ("already exists", "unique constraint", "duplicate key", "duplicate entry")


def _rdb_with_retry(url: str, engine_kwargs: dict, beat: dict, attempts: int = 8) -> optuna.storages.RDBStorage:
    """Open an RDB storage; workers creating a new database at once race to create its
    schema, and the losers simply open it again."""
    for i in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
        except Exception as exc:
            if not any(m in str(exc).lower() for m in _CREATION_RACE) or i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _driver_hint(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("postgres"):
        return "expected pip install 'fednas[postgresql]' (psycopg) for postgresql:// URLs"
    if scheme.startswith(("mysql", "mariadb")):
        return "expected pip install 'fednas[mysql]' and a mysql+pymysql://user:pw@host/db URL"
    return f"expected the SQLAlchemy driver for {scheme}:// to be installed"


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal:"):
        return Path(url[len("journal:") :].removeprefix("//"))
    if "://" not in url and url.endswith((".log", ".journal")):
        return Path(url)
    return None


def storage_file(url: str) -> Path | None:
    """The file of a SQLite or journal storage URL; None for a database server."""
    return sqlite_path(url) or _journal_path(url)


def artifact_dir_for(url: str, study_name: str) -> Path:
    """Default artifact folder: beside a SQLite/journal file, else ``studies/artifacts/NAME``."""
    local = storage_file(url)
    if local is not None:
        return local.parent / f"{study_name}.artifacts"
    return Path("studies") / "artifacts" / study_name


def artifact_store(path: Path) -> FileSystemArtifactStore:
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
