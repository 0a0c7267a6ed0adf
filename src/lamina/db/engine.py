"""The database: engine, sessions and automatic migrations.

SQLite runs in WAL mode; a write session on SQLite starts with ``BEGIN IMMEDIATE`` so two
writers queue instead of failing to upgrade a read lock. SQLite itself lets a waiting writer
sleep in steps of 1, 2, 5, 10... ms (its busy handler), which caps a busy manager at a few
hundred writes a second; so Lamina's own writers queue first on a lock that wakes the next one
as soon as the holder commits: a thread lock within a process, and ``flock(2)`` on
``<database>.write-lock`` across the processes of one machine (several ``lamina serve``
workers). Anything else writing the file (the ``sqlite3`` shell) still meets the busy timeout.
PostgreSQL uses its defaults (READ COMMITTED) and row locks where a domain needs them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from lamina.db.batch import WriteBatcher
from lamina.errors import InvalidRequest

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


class Database:
    """One engine and its session factories. Create one per process."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        if url.startswith(("postgresql://", "postgres://")):
            # Lamina ships psycopg 3; plain URLs would make SQLAlchemy look for psycopg2.
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            _ensure_parent(url)
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: Engine = create_engine(url, **kwargs)
        self._writers = _WriterQueue(url) if self.is_sqlite else None
        if self.is_sqlite:
            _sqlite_tuning(self.engine)
        _refuse_nul(self.engine)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(lamina_write=True), expire_on_commit=False
        )
        self._batcher = WriteBatcher(self)
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        cfg = _alembic_config()
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def new_revision(self, message: str, metadata: MetaData) -> None:
        """Write a migration (a developer's tool) for what ``metadata``'s tables have and
        this database, migrated to the newest revision, lacks. ``metadata`` must know every
        table: ``lamina.manager.new_revision`` hands over all the domains'."""
        cfg = _alembic_config()
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            cfg.attributes["metadata"] = metadata
            command.revision(cfg, message=message, autogenerate=True)

    @contextmanager
    def read(self) -> Iterator[Session]:
        # Closing (not rolling back) keeps loaded objects usable after the block.
        with self._read() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction committed on success and rolled back on any error."""
        if self._writers is None:
            with self._write() as session, session.begin():
                yield session
            return
        with self._writers, self._write() as session, session.begin():
            yield session

    async def batched(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in a write transaction shared with other requests' (group commit,
        ``db.batch``), for short database-only changes; its result once committed."""
        return await self._batcher.run(fn)

    def dispose(self) -> None:
        self.engine.dispose()


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _sqlite_path(url: str) -> str | None:
    path = url.split(":///", 1)[-1]
    return path if path and path != ":memory:" and "://" not in path else None


def _ensure_parent(url: str) -> None:
    path = _sqlite_path(url)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


class _WriterQueue:
    """Lets one SQLite writer of this machine in at a time (see the module's docstring)."""

    def __init__(self, url: str) -> None:
        self._thread_lock = threading.Lock()
        path = _sqlite_path(url)
        self._lock_path = f"{path}.write-lock" if path else None
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._lock_path is not None:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _file(self) -> int:
        # One descriptor per process: flock excludes open file descriptions, and a forked
        # worker must not share its parent's.
        if self._fd is None or self._pid != os.getpid():
            assert self._lock_path is not None
            self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd


def _refuse_nul(engine: Engine) -> None:
    """PostgreSQL cannot store NUL in text (psycopg raises, a 500); SQLite can. Refuse it
    on both, as a 400, wherever it came from (a JSON body, a header, a path)."""

    def has_nul(value: object) -> bool:
        if isinstance(value, str):
            return "\x00" in value
        if isinstance(value, dict):
            return any(has_nul(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return any(has_nul(v) for v in value)
        return False

    @event.listens_for(engine, "before_cursor_execute")
    def _check(
        _conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        if has_nul(parameters):
            raise InvalidRequest("text may not hold a NUL character")


def _sqlite_tuning(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("lamina_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
