"""Migrated databases for `store.sql_reservations`: a SQLite file and a real PostgreSQL, one per module,
emptied of holds and levels before each test (reservation ids like "r1" are reused across tests).

The fixtures may be asked for from inside a running event loop (`request.getfixturevalue` in an async
fixture), where the helpers' own `asyncio.run` cannot run: they do their set-up in a thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from typing import TypeVar

import pytest
from sqlalchemy import delete

from ferryman.store.database import open_engine
from ferryman.store.migrate import upgrade_schema
from ferryman.store.sql_reservations import HOLD_CEILINGS, HOLDS, LEVELS, SqlReservations
from tests.store.fixtures import fresh_postgres_database, postgres_admin_url

Result = TypeVar("Result")


def in_thread(work: Callable[[], Result]) -> Result:
    """`work()` in a thread without an event loop, waited for."""
    outcome: list[Result] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


@pytest.fixture(scope="module")
def sql_reservations_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file database for this module."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('reservations') / 'ferryman.db'}"
    in_thread(lambda: asyncio.run(upgrade_schema(url)))
    return url


@pytest.fixture(scope="module")
def sql_reservations_postgresql() -> Iterator[str]:
    """A migrated PostgreSQL database for this module (on the server `postgres_admin_url` finds)."""
    with ExitStack() as stack:

        def create() -> str:
            admin = stack.enter_context(postgres_admin_url())
            url = stack.enter_context(fresh_postgres_database(admin))
            asyncio.run(upgrade_schema(url))
            return url

        try:
            yield in_thread(create)
        finally:
            in_thread(stack.close)


@asynccontextmanager
async def emptied_reservations(url: str) -> AsyncIterator[SqlReservations]:
    """`SqlReservations` on `url`, with no hold or level left from an earlier test."""
    engine = open_engine(url)
    try:
        async with engine.begin() as conn:
            for table in (HOLD_CEILINGS, HOLDS, LEVELS):
                await conn.execute(delete(table))
        yield SqlReservations(engine)
    finally:
        await engine.dispose()
