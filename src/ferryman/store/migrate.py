"""Schema migrations at start-up or on demand, under a lock so replicas starting together are safe.

PostgreSQL serialises migrators with a transaction-scoped advisory lock (and migrates in one transaction);
SQLite with an exclusive lock on a file beside the database. The first replica migrates; the others wait,
then find the schema at head and do nothing.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ferryman.errors import FerrymanError
from ferryman.store.database import is_sqlite, open_engine, sqlite_path

# An arbitrary constant shared by every Ferryman replica: "ferryman" in ASCII, as a bigint.
_PG_LOCK_ID = 0x66657272796D616E


class SchemaBehindError(FerrymanError):
    """The database schema is older than this release needs and `auto_migrate` is off."""


def alembic_config() -> Config:
    """Alembic's configuration, built in code so migrations run from an installed wheel."""
    config = Config()
    location = resources.files("ferryman") / "migrations"
    config.set_main_option("script_location", str(location))
    return config


def head_revision() -> str:
    """The newest revision this release ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError("no migrations found in ferryman.migrations")
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (`None` for an empty database)."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def schema_revision(url: str) -> str | None:
    """The revision the database at `url` is at, on a short-lived engine of its own."""
    engine = open_engine(url)
    try:
        return await current_revision(engine)
    finally:
        await engine.dispose()


async def upgrade_schema(url: str, revision: str = "head", engine: AsyncEngine | None = None) -> None:
    """Apply pending migrations up to `revision`, holding the migration lock; on `engine` when given
    (an in-memory SQLite database exists only on its own engine), else on a short-lived one."""
    own = engine is None
    engine = engine or open_engine(url)
    try:
        async with _migration_lock(engine, url) as conn:
            await conn.run_sync(_upgrade, revision)
    finally:
        if own:
            await engine.dispose()


async def ensure_schema(
    url: str, *, auto_migrate: bool, config_hint: str = "FILE", engine: AsyncEngine | None = None
) -> None:
    """Migrate to head, or with `auto_migrate` off refuse a schema behind head with the command to run."""
    if auto_migrate:
        await upgrade_schema(url, engine=engine)
        return
    current = await current_revision(engine) if engine is not None else await schema_revision(url)
    head = head_revision()
    if current != head:
        raise SchemaBehindError(
            f"the database schema is at revision {current or '(empty)'} but this release needs {head}, "
            f"and auto_migrate is false: run `ferryman db upgrade --config {config_hint}` first"
        )


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


@asynccontextmanager
async def _migration_lock(engine: AsyncEngine, url: str) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that no other migrator holds at the same time."""
    if is_sqlite(url):
        async with _file_lock(sqlite_path(url)), engine.begin() as conn:
            yield conn
        return
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        yield conn


@asynccontextmanager
async def _file_lock(database: str | None) -> AsyncIterator[None]:
    """An exclusive `flock` on `<database>.migrate-lock`; nothing to lock for an in-memory database."""
    if database is None:
        yield
        return
    descriptor = await asyncio.to_thread(_lock_file, database + ".migrate-lock")
    try:
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def _lock_file(path: str) -> int:
    """Open (creating) `path` and block until this process holds its exclusive lock."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor
