"""The fresh-machine path of the test fixtures: throwaway PostgreSQL and Redis really start and answer.

This machine has local servers, so the suite normally uses them; these tests force the fallback that a
machine without them takes, so `make test` there cannot fail on first contact.
"""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped]
from redis import Redis

from tests.store.fixtures import (
    can_log_in,
    fresh_postgres_database,
    reachable,
    throwaway_postgres,
    throwaway_postgres_server,
    throwaway_redis,
)


def test_throwaway_postgres_starts_and_serves_a_fresh_database() -> None:
    with throwaway_postgres() as admin_url:
        assert ":5432/" not in admin_url
        assert can_log_in(admin_url)
        with fresh_postgres_database(admin_url) as url:
            plain = url.replace("postgresql+asyncpg://", "postgresql://")

            async def answer() -> int:
                connection = await asyncpg.connect(plain)
                try:
                    return int(await connection.fetchval("SELECT 41 + 1"))
                finally:
                    await connection.close()

            assert asyncio.run(answer()) == 42


def test_a_throwaway_postgres_stops_and_starts_again_with_its_data() -> None:
    """What an outage test needs: the same server, gone and back, on the same port and data."""

    async def run(statement: str, url: str) -> object:
        connection = await asyncpg.connect(url)
        try:
            return await connection.fetchval(statement)
        finally:
            await connection.close()

    with throwaway_postgres_server() as server:
        asyncio.run(run("CREATE TABLE kept AS SELECT 7 AS n", server.url))
        server.stop()
        assert not reachable("127.0.0.1", server.port)
        server.start()
        assert asyncio.run(run("SELECT n FROM kept", server.url)) == 7
    assert not server.directory.exists()


def test_a_server_refusing_our_login_does_not_count() -> None:
    assert not can_log_in("postgresql://nobody:wrong@127.0.0.1:1/postgres")


def test_throwaway_redis_starts_and_answers() -> None:
    with throwaway_redis() as url:
        assert ":6379/" not in url
        client = Redis.from_url(url)
        try:
            assert client.ping() is True
        finally:
            client.close()
