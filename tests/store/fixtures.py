"""Real PostgreSQL and Redis for the tests: the configured or local ones when reachable, else throwaway ones.

`DATABASE_URL` / `REDIS_URL` win when set; otherwise the usual local ports are tried; otherwise a private
instance is started in a temporary directory (PostgreSQL with `initdb` + `pg_ctl`, as the `postgres` user
when we are root, because initdb refuses root). Nothing is ever skipped: if no server can be found or
started, the fixture fails with the reason. Each test module gets its own fresh database, dropped after.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from tests.processes import free_port


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _as_postgres_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class ThrowawayPostgres:
    """A private PostgreSQL in a temporary directory, on a free port, that a test may stop and start
    again on the same data directory (to see the database go away and come back, as in an outage).

    Its directory is made with `mkdtemp` directly under the system temp dir (world-traversable), not
    under pytest's root-only `tmp_path`: as root, initdb runs as `postgres`, which must reach it.
    """

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            pytest.fail("no PostgreSQL reachable and no initdb found: run scripts/install-test-services.sh")
        self._initdb, self._pg_ctl = Path(bins[-1], "initdb"), Path(bins[-1], "pg_ctl")
        self.directory = Path(tempfile.mkdtemp(prefix="ferryman-pg-"))
        self._data, self.port = self.directory / "data", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        """The admin URL (plain `postgresql://`)."""
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")

    def start(self) -> None:
        """Start the server (again) on its data directory and port (made by the first start); returns once
        it accepts logins."""
        if not self._data.exists():
            initdb = [str(self._initdb), "-D", str(self._data), "-A", "trust", "-U", "postgres", "--no-sync"]
            subprocess.run(_as_postgres_user(initdb), check=True, capture_output=True)
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.directory / "log")
        subprocess.run(
            _as_postgres_user(
                [str(self._pg_ctl), "-D", str(self._data), "-o", options, "-l", log, "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: connections dropped, as clients see an outage); the data stays."""
        subprocess.run(
            _as_postgres_user([str(self._pg_ctl), "-D", str(self._data), "-m", mode, "-w", "stop"]),
            check=False,
            capture_output=True,
        )

    def remove(self) -> None:
        """Stop the server if it runs, and delete its directory."""
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def throwaway_postgres_server() -> Iterator[ThrowawayPostgres]:
    """A started `ThrowawayPostgres`, removed afterwards (whether the test left it running or not)."""
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a private PostgreSQL on a free port; yields its admin URL (plain `postgresql://`)."""
    with throwaway_postgres_server() as server:
        yield server.url


LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def can_log_in(url: str) -> bool:
    """Whether `url` accepts a login (a packaged cluster that wants a password does not count)."""

    async def attempt() -> None:
        connection = await asyncpg.connect(url, timeout=2)
        await connection.close()

    try:
        asyncio.run(attempt())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@contextmanager
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server we may create databases on, as a plain `postgresql://` URL."""
    configured = os.environ.get("DATABASE_URL", "")
    if configured.startswith("postgresql"):
        yield make_url(configured).set(drivername="postgresql").render_as_string(hide_password=False)
    elif reachable("127.0.0.1", 5432) and can_log_in(LOCAL_POSTGRES):
        yield LOCAL_POSTGRES
    else:
        with throwaway_postgres() as url:
            yield url


async def _execute(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """`CREATE DATABASE ferryman_test_<random>`; yields its SQLAlchemy URL; drops it afterwards."""
    name = f"ferryman_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(admin_url)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        asyncio.run(_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def redis_server_url() -> Iterator[str]:
    """`REDIS_URL`, else a local Redis on 6379, else a throwaway `redis-server` on a free port."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield configured
    elif reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
    else:
        with throwaway_redis() as url:
            yield url


@contextmanager
def throwaway_redis(port: int | None = None) -> Iterator[str]:
    """A private `redis-server` on `port` (a free loopback port by default), stopped (by PID) afterwards.

    Tests that stop it mid-way to see Redis fail start a new one on the same port to see it come back.
    """
    with throwaway_redis_process(port) as (url, _process):
        yield url


@contextmanager
def throwaway_redis_process(port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`throwaway_redis`, with the process too, for tests that kill it (by its PID) mid-way."""
    if shutil.which("redis-server") is None:
        pytest.fail("no Redis reachable and no redis-server found: run scripts/install-test-services.sh")
    port = port or free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", port):
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """A PostgreSQL server for the whole run."""
    with postgres_admin_url() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis for the whole run."""
    with redis_server_url() as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, empty database for this test module: SQLite, then a real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'ferryman.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_admin")) as url:
        yield url


@pytest.fixture
def postgres_database(postgres_admin: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test."""
    with fresh_postgres_database(postgres_admin) as url:
        yield url
