"""The SQL engine for a `database_url`: SQLite (aiosqlite) embedded, PostgreSQL (asyncpg) in production."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry


def is_sqlite(url: str) -> bool:
    """Whether `url` names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL, or `None` for an in-memory database."""
    database = make_url(url).database
    return database if database and database != ":memory:" else None


def open_engine(url: str) -> AsyncEngine:
    """An async engine for `url`; nothing connects until the first query."""
    if not is_sqlite(url):
        return create_async_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    options: dict[str, Any] = {"connect_args": {"timeout": 30}}
    if sqlite_path(url) is None:
        # One connection (each new one would see its own empty database), lent to one user at a time:
        # two transactions interleaved on a shared connection fail each other's commits.
        options.update(poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0)
    engine = create_async_engine(url, **options)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    """Enforce foreign keys, and let readers proceed while a writer commits (WAL)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
