"""Engine, sessions and migrations for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from filelock import FileLock
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings, get_settings
from registry import stamp

log = logging.getLogger("ftserve.db")
T = TypeVar("T")
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # WAL lets the API read while a worker writes; busy_timeout turns lock contention into waiting.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().sqlalchemy_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                       hide_parameters=True)
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                # A server that stops answering (a partition: packets dropped, no reset) must fail a query within
                # seconds, not when TCP gives up minutes later: the worker's lease and heartbeat depend on it.
                engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True,
                                       connect_args={
                    "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                    "keepalives_count": 3, "tcp_user_timeout": 30_000})
            _engines[url] = engine
            _makers[url] = sessionmaker(engine, expire_on_commit=False)
        return engine


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error (and re-raise it).

    The service's own sessions (no `url`) replace the registry stamp when they commit a version or alias change.
    """
    settings = get_settings()
    stamp_dir = settings.data_dir if url is None else None
    url = url or settings.sqlalchemy_url
    get_engine(url)
    session = _makers[url]()
    if stamp_dir is not None:
        session.info[stamp.STAMP_DIR] = str(stamp_dir)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrate(settings: Settings | None = None) -> None:
    """Upgrade the schema to head. Safe when the API and workers start at the same moment."""
    from alembic import command
    from alembic.config import Config

    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    engine = get_engine(settings.sqlalchemy_url)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(804201)"))
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(804201)"))
                conn.commit()
    else:
        with FileLock(str(settings.data_dir / ".migrate.lock")), engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


def check_database(url: str | None = None) -> None:
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))


def is_transient(exc: BaseException) -> bool:
    """A database error that can pass: the server restarting or unreachable, a dropped connection, a lock
    timeout. Not an integrity or programming error, which would fail the same way again."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


def in_session(fn: Callable[[Session], T], *, retry_for: float, what: str) -> T:
    """Run `fn` in a transaction of its own, again while the database fails transiently, for up to `retry_for`
    seconds; then the last error propagates.

    A commit whose reply was lost may have taken effect, so `fn` runs again after it: the fenced status, progress
    and registration writes in registry/jobs are safe to repeat; an appended event (a metrics or log line) may
    then appear twice, with two ids. A terminal status event never does (`finish` writes an outcome once).
    """
    deadline = time.monotonic() + retry_for
    delay = 0.1
    failures = 0
    while True:
        try:
            with session_scope() as s:
                result = fn(s)
            if failures:
                log.info("%s: the database answered again after %d failed tries", what, failures)
            return result
        except DBAPIError as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            failures += 1
            if failures == 1:  # once per outage; the recovery line above closes it
                log.warning("%s: database unavailable (%s); retrying for up to %.0fs", what,
                            _first_line(exc), retry_for)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _first_line(exc: DBAPIError) -> str:
    lines = str(exc.orig or exc).strip().splitlines()
    return lines[0] if lines else type(exc.orig or exc).__name__
