"""Where autotuning studies live, and the lock that keeps a shared study's trial budget exact.

Storage: by default an embedded Optuna journal file under the user's cache directory
(``$XDG_CACHE_HOME/moesim/optuna/studies.log``, else ``~/.cache/moesim/optuna/studies.log``; overridable with
``MOESIM_CACHE_DIR``). Optuna's ``JournalStorage(JournalFileBackend(path))`` appends every operation to the file
under a file lock (:class:`FlockJournalLock`, which a killed holder releases at once), so several processes on one
host share it and a killed run resumes from the finished trials.
``--storage URL`` takes any Optuna storage URL instead: ``postgresql+psycopg2://user@host/db`` for many hosts,
``sqlite:///x.db``, or ``journal:///path/to/file.log`` for an explicit journal file.

Exact budgets: Optuna has no atomic "create a trial only if fewer than N exist". ``MaxTrialsCallback`` counts
after the fact, so two workers that both see N-1 trials both start one (N+1 in all). We close that race with a
study-level budget lock held while a worker counts the study's trials and asks for the next one:
an ``fcntl.flock`` on ``<journal or sqlite file>.budget.lock`` for file storages (one host), and a PostgreSQL
session advisory lock (``pg_advisory_lock``) for PostgreSQL (many hosts). Other URLs get no lock, and the
budget may then be overshot by at most (workers - 1) trials; that is said in the docs and the CLI help.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from moesim.errors import SpecError

if TYPE_CHECKING:  # optuna is imported where a storage is opened, not with this module
    from optuna.storages import BaseStorage, RDBStorage

JOURNAL_PREFIX = "journal://"


def cache_dir() -> Path:
    """moesim's cache directory: ``MOESIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/moesim``, else ``~/.cache/moesim``."""
    explicit = os.environ.get("MOESIM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "moesim"


def default_storage_url(file_name: str = "studies.log") -> str:
    """The embedded file storage: ``journal://<cache_dir>/optuna/<file_name>`` (``studies.log``: kernel studies;
    ``autotune capacity`` keeps its much larger trials in ``capacity.log``, so neither replays the other's)."""
    return f"{JOURNAL_PREFIX}{cache_dir() / 'optuna' / file_name}"


def journal_path(url: str) -> Path | None:
    """The file behind a ``journal://`` URL or a bare path ending in ``.log``/``.journal``; else None."""
    if url.startswith(JOURNAL_PREFIX):
        rest = url[len(JOURNAL_PREFIX) :]
        # journal:///abs/path -> /abs/path ; journal://rel/path -> rel/path
        return Path(rest)
    if "://" not in url and (url.endswith(".log") or url.endswith(".journal")):
        return Path(url)
    return None


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URL (None for in-memory or other URLs)."""
    match = re.match(r"^sqlite:///(.+)$", url)
    if not match or match.group(1) == ":memory:":
        return None
    return Path(match.group(1))


class FlockJournalLock:
    """The journal file's write lock as an ``fcntl.flock`` on ``<journal>.lock`` (Optuna's lock protocol:
    ``acquire() -> True``, ``release()``).

    Optuna's default symlink lock survives its holder: after a SIGKILL the next writer waits out a 30 s grace
    period before it breaks the lock. The kernel drops a flock when its holder dies, so a killed run costs the
    next one nothing. Each acquire opens its own descriptor, so threads of one process exclude each other too.
    One host only (flock is local), as the budget lock already assumes.
    """

    def __init__(self, lock_path: str) -> None:
        import threading

        self._path = lock_path
        self._held = threading.local()

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._held.fd = fd
        return True

    def release(self) -> None:
        fd = getattr(self._held, "fd", None)
        if fd is None:
            return
        self._held.fd = None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def drop_torn_tail(path: Path) -> int:
    """Cut the journal's last line if it has no newline; the bytes cut (0 when the file ends whole).

    A writer killed part-way through an append leaves such a tail (Linux checks for a fatal signal between the
    pages of a write, so an append that crosses a page boundary can be cut by SIGKILL). Optuna skips the tail when
    it reads, but its next append would glue a whole operation onto it, and every later read of the journal then
    fails ("Invalid log format"): all its trials lost to moesim. The tail is an operation that never finished, so
    nothing is lost by cutting it. Done under the journal's write lock, so no live writer is part-way.
    """
    lock = FlockJournalLock(f"{path}.lock")
    lock.acquire()
    try:
        with open(path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return 0
            keep, pos = 0, size
            while pos > 0:  # back to the last newline, 64 KiB at a time
                step = min(65536, pos)
                pos -= step
                handle.seek(pos)
                end = handle.read(step).rfind(b"\n")
                if end >= 0:
                    keep = pos + end + 1
                    break
            handle.truncate(keep)
            return size - keep
    except FileNotFoundError:
        return 0
    finally:
        lock.release()


def open_storage(url: str | None = None, fsync: bool = True) -> BaseStorage:
    """Open an Optuna storage from a URL (None: the default journal file). Creates parent folders.

    ``fsync=False`` (journal files only): appends are flushed to the OS but not fsync'ed. A killed process still
    loses nothing (the kernel's page cache holds what it wrote); a power cut may lose the last appends. Optuna
    fsyncs every operation, about 5 ms each here: 2 s of a 200-trial ``autotune capacity`` run.
    Raises SpecError naming the URL when Optuna cannot open it (bad scheme, unreachable server, missing driver).
    """
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    url = url or default_storage_url()
    path = journal_path(url)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            drop_torn_tail(path)  # what a run killed mid-append left; the next append would break the journal
            backend = JournalFileBackend if fsync else _UnsyncedJournalFileBackend()
            return JournalStorage(backend(str(path), lock_obj=FlockJournalLock(f"{path}.lock")))
        sqlite = sqlite_path(url)
        if sqlite is None:
            return _open_rdb(url)
        sqlite.parent.mkdir(parents=True, exist_ok=True)
        # Creating Optuna's schema is not atomic: two processes opening a fresh file at once both insert the
        # alembic version row and the loser fails with "UNIQUE constraint failed: alembic_version.version_num".
        # One host shares a SQLite file, so a flock serialises the opening (held for the ~0.1 s it takes).
        with _flock(Path(f"{sqlite}.schema.lock")):
            return _open_rdb(url)
    except ImportError as exc:
        raise SpecError(f"--storage: {redact(url)}: missing database driver ({exc.name or exc})") from exc
    except Exception as exc:  # optuna/sqlalchemy raise many types; the message is what matters here
        from moesim.traces.trace import first_line

        raise SpecError(f"--storage: {redact(url)}: cannot open: {first_line(exc)}") from exc


def _UnsyncedJournalFileBackend():  # noqa: N802 -- a class, made on first use (optuna imports lazily)
    import json

    from optuna.storages.journal import JournalFileBackend

    class UnsyncedJournalFileBackend(JournalFileBackend):
        """Optuna's ``JournalFileBackend.append_logs`` without the ``os.fsync`` (see :func:`open_storage`)."""

        def append_logs(self, logs: list[dict]) -> None:
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            self._lock.acquire()
            try:
                with open(self._file_path, "ab") as handle:
                    handle.write(text.encode("utf-8"))
            finally:
                self._lock.release()

    return UnsyncedJournalFileBackend


def _open_rdb(url: str, attempts: int = 5) -> RDBStorage:
    """RDBStorage, retrying the schema-creation race: workers that open a fresh database at the same moment
    can both try to create Optuna's tables, and the loser gets a unique violation (PostgreSQL on
    ``pg_type``/``pg_class`` or ``alembic_version``; SQLite's ``UNIQUE constraint failed`` where no flock
    serialised the opening, see :func:`open_storage`). A retry finds the tables made and goes on."""
    import optuna

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        except Exception as exc:  # sqlalchemy IntegrityError / ProgrammingError, wrapped differently by version
            text = str(exc)
            racing = any(m in text for m in ("duplicate key value", "already exists", "UNIQUE constraint failed"))
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _engine_kwargs(url: str) -> dict:
    if url.startswith("postgresql"):
        # Workers come and go; pre-ping drops connections a restarted server closed.
        return {"pool_pre_ping": True}
    return {}


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


@contextlib.contextmanager
def budget_lock(url: str | None, study_name: str) -> Iterator[str]:
    """Hold the study-level budget lock (see module docstring); yields the lock kind used.

    Kinds: ``"flock"`` (journal or sqlite file), ``"pg_advisory"`` (PostgreSQL), ``"none"`` (other URLs).
    """
    url = url or default_storage_url()
    file = journal_path(url) or sqlite_path(url)
    if file is not None:
        with _flock(Path(f"{file}.budget.lock")):
            yield "flock"
        return
    if url.startswith("postgresql"):
        with _pg_advisory_lock(url, study_name):
            yield "pg_advisory"
        return
    yield "none"


@contextlib.contextmanager
def _flock(lock_file: Path) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``lock_file`` (created with its folder); the kernel frees it if we die."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _lock_key(study_name: str) -> int:
    # A signed 64-bit key derived from the study name, as pg_advisory_lock(bigint) wants.
    digest = hashlib.sha256(f"moesim-budget:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_PG_CONNECTIONS: dict[str, object] = {}


@contextlib.contextmanager
def _pg_advisory_lock(url: str, study_name: str) -> Iterator[None]:
    import sqlalchemy

    engine = _PG_CONNECTIONS.get(url)
    if engine is None:
        engine = sqlalchemy.create_engine(url, pool_pre_ping=True, poolclass=sqlalchemy.pool.NullPool)
        _PG_CONNECTIONS[url] = engine
    key = _lock_key(study_name)
    with engine.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
