"""The spend-ledger benchmark: one month of a busy deployment in PostgreSQL, then `/admin/spend` timed.

Usage (from the repository root): `.venv/bin/python bench/ledger.py [--rows 1000000] [--output FILE]`.
It creates a throwaway database on the PostgreSQL server at `--admin-url` (default: `DATABASE_URL` if it
names PostgreSQL, else the local server on 5432), migrates it, writes `--rows` ledger rows for one month
through `SqlLedger.append_many` (the writer's own path: ledger rows, then the rollup from exactly the
rows inserted, in one transaction per batch), starts a real `ferryman serve` on it and times
`GET /admin/spend?group_by=key,day&from=…&to=…` over HTTP. The database is dropped and the gateway
stopped (by its PID) however the run ends. The figures go to `bench/LEDGER.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ferryman.core.shared_state import SpendEntry
from ferryman.store.database import open_engine
from ferryman.store.migrate import upgrade_schema
from ferryman.store.sql_ledger import SqlLedger, next_month

BENCH_DIR = Path(__file__).resolve().parent
TARGET_MS = 300.0
MONTH = date(2026, 10, 1)  # 31 days
# (model, provider, USD per request; None = no price): the unpriced one keeps the NULL path honest.
MODELS = (
    ("gpt-4o-mini", "openai", 0.0004),
    ("gpt-4o", "openai", 0.006),
    ("o4-mini", "openai", 0.003),
    ("claude-sonnet-4-5", "anthropic", 0.009),
    ("claude-haiku-4-5", "anthropic", 0.002),
    ("gemini-2.5-flash", "gemini", 0.0008),
    ("gemini-2.5-pro", "gemini", 0.007),
    ("local-llama", "openai-compatible", None),
)


@dataclass(frozen=True, slots=True)
class Workload:
    """What the month looks like: `rows` requests from `keys` keys in `teams` teams; each key serves
    `end_users` end users of its own and anonymous traffic (half the requests)."""

    rows: int
    keys: int = 200
    teams: int = 20
    end_users: int = 5
    batch: int = 5_000
    seed: int = 2026


@dataclass(frozen=True, slots=True)
class Timings:
    """Milliseconds per call."""

    samples: list[float]

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile."""
        ranked = sorted(self.samples)
        return ranked[min(len(ranked) - 1, max(0, round(fraction * len(ranked)) - 1))]


@dataclass(frozen=True, slots=True)
class Result:
    """One run's figures."""

    workload: Workload
    load_seconds: float
    ledger_rows: int
    rollup_rows: int
    by_key_rows: int
    groups: int
    response_bytes: int
    http: Timings
    in_process: Timings
    server: str


def spend_batches(workload: Workload) -> Iterator[list[SpendEntry]]:
    """The month's requests in write batches, spread evenly over its 31 days (seeded: repeatable)."""
    rng = random.Random(workload.seed)  # noqa: S311 - seeded for a repeatable month, nothing secret
    seconds = (next_month(MONTH) - MONTH).days * 86_400
    start = datetime.combine(MONTH, datetime.min.time(), UTC)
    batch: list[SpendEntry] = []
    for n in range(workload.rows):
        key = rng.randrange(workload.keys)
        model, provider, cost = MODELS[rng.randrange(len(MODELS))]
        user = rng.randrange(workload.end_users * 2)
        batch.append(
            SpendEntry(
                request_id=f"req_{n:09d}",
                at=start + timedelta(seconds=rng.random() * seconds),
                model=model,
                provider=provider,
                deployment=f"{provider}/{model}",
                key_id=f"key{key:04d}",
                team_id=f"team{key % workload.teams:03d}",
                end_user=f"user-{key}-{user}" if user < workload.end_users else None,
                input_tokens=rng.randrange(50, 4_000),
                output_tokens=rng.randrange(10, 800),
                cached_tokens=rng.randrange(0, 200),
                cost_usd=None if cost is None else cost * rng.uniform(0.5, 1.5),
            )
        )
        if len(batch) == workload.batch:
            yield batch
            batch = []
    if batch:
        yield batch


async def load(url: str, workload: Workload) -> tuple[float, int, int, int]:
    """Migrate, write the month, analyze; returns (seconds writing, ledger rows, and the rows of the
    two rollups: with end users, and by key)."""
    await upgrade_schema(url)
    engine = open_engine(url)
    try:
        # A writer running during the month: it made the month's partition ahead of time.
        ledger = SqlLedger(engine, clock=lambda: datetime.combine(MONTH, datetime.min.time(), UTC))
        await ledger.prepare()
        started = time.perf_counter()
        for batch in spend_batches(workload):
            await ledger.append_many(batch)
        elapsed = time.perf_counter() - started
        # VACUUM refuses to run inside a transaction block.
        async with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            counts = []
            for table in ("spend_ledger", "spend_daily", "spend_daily_by_key"):
                await conn.execute(text(f"VACUUM ANALYZE {table}"))
                counts.append(int(await conn.scalar(text(f"SELECT COUNT(*) FROM {table}")) or 0))  # noqa: S608 - fixed names
    finally:
        await engine.dispose()
    ledger_rows, rollup_rows, by_key_rows = counts
    return elapsed, ledger_rows, rollup_rows, by_key_rows


async def time_in_process(url: str, calls: int) -> Timings:
    """The route's own call, `SqlLedger.spend_report`, without HTTP: what SQL alone costs."""
    engine = open_engine(url)
    ledger = SqlLedger(engine)
    start, end = (datetime.combine(day, datetime.min.time(), UTC) for day in (MONTH, next_month(MONTH)))
    samples = []
    try:
        for n in range(calls + 3):
            began = time.perf_counter()
            await ledger.spend_report(["key", "day"], start, end, limit=100_001)
            if n >= 3:  # three warm-ups: connections, plan cache
                samples.append((time.perf_counter() - began) * 1000)
    finally:
        await engine.dispose()
    return Timings(samples)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gateway(url: str, master: str, workdir: Path) -> Iterator[str]:
    """`ferryman serve` on `url` (one worker, as operators run it); yields its base URL."""
    config = workdir / "ferryman.yaml"
    fake = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}
    config.write_text(yaml.safe_dump({"master_key": master, "database_url": url, "models": [fake]}))
    port = free_port()
    command = [sys.executable, "-m", "ferryman.cli", "serve", "--config", str(config), "--port", str(port)]
    with (workdir / "gateway.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _live(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start; see {workdir / 'gateway.log'}")
            time.sleep(0.1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited by itself
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _live(base: str) -> bool:
    try:
        return httpx.get(base + "/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def time_http(base: str, master: str, calls: int) -> tuple[Timings, int, int]:
    """`calls` timed GETs (after three warm-ups) on one keep-alive connection: (timings, groups, bytes)."""
    params = {"group_by": "key,day", "from": MONTH.isoformat(), "to": next_month(MONTH).isoformat()}
    params["limit"] = "100000"
    samples = []
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {master}"}, timeout=60) as client:
        for n in range(calls + 3):
            began = time.perf_counter()
            response = client.get("/admin/spend", params=params)
            elapsed = (time.perf_counter() - began) * 1000
            response.raise_for_status()
            body = response.json()
            if body["has_more"]:
                raise RuntimeError("the report was cut by its limit: the timing would not be the whole month")
            if n >= 3:
                samples.append(elapsed)
    return Timings(samples), len(body["data"]), len(response.content)


async def _admin(admin_url: str, statement: str) -> str:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(statement)
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


@contextmanager
def throwaway_database(admin_url: str) -> Iterator[tuple[str, str]]:
    """A fresh database on `admin_url`'s server: yields (its SQLAlchemy URL, the server's version)."""
    name = f"ferryman_bench_{uuid.uuid4().hex[:12]}"
    version = asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(admin_url).set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False), version
    finally:
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(admin_url: str, workload: Workload, calls: int) -> Result:
    """Load a month, then time the report over HTTP and in-process."""
    with throwaway_database(admin_url) as (url, version), tempfile.TemporaryDirectory() as workdir:
        seconds, ledger_rows, rollup_rows, by_key_rows = asyncio.run(load(url, workload))
        master = secrets.token_urlsafe(24)
        with gateway(url, master, Path(workdir)) as base:
            http, groups, size = time_http(base, master, calls)
        in_process = asyncio.run(time_in_process(url, calls))
    return Result(
        workload, seconds, ledger_rows, rollup_rows, by_key_rows, groups, size, http, in_process, version
    )


def render(result: Result) -> str:
    """LEDGER.md."""
    w, http, sql = result.workload, result.http, result.in_process
    verdict = "met" if http.percentile(0.95) < TARGET_MS else "missed"
    rate = result.ledger_rows / result.load_seconds if result.load_seconds else 0.0
    figures = [
        (f"ledger rows (one month, {MONTH:%B %Y})", f"{result.ledger_rows:,}"),
        ("rollup rows: `spend_daily` (with end users)", f"{result.rollup_rows:,}"),
        ("rollup rows: `spend_daily_by_key` (what this report reads)", f"{result.by_key_rows:,}"),
        (
            "workload",
            f"{w.keys} keys in {w.teams} teams, {w.end_users} end users per key (half the traffic "
            f"anonymous), {len(MODELS)} models on 4 providers (one unpriced)",
        ),
        (
            "writing the month through `SqlLedger.append_many`",
            f"{result.load_seconds:.1f} s in batches of {w.batch:,} ({rate:,.0f} rows/s, ledger + rollup)",
        ),
        (
            f"`GET /admin/spend?group_by=key,day` over HTTP, p50 / p95 ({len(http.samples)} calls)",
            f"**{http.percentile(0.5):.1f} ms / {http.percentile(0.95):.1f} ms**",
        ),
        (
            "the same report in-process (`SqlLedger.spend_report`), p50 / p95",
            f"{sql.percentile(0.5):.1f} ms / {sql.percentile(0.95):.1f} ms",
        ),
        (
            "groups returned / response size",
            f"{result.groups:,} / {result.response_bytes / 1024:,.0f} KiB of JSON",
        ),
    ]
    table = "\n".join(f"| {figure} | {value} |" for figure, value in figures)
    return f"""# Spend ledger benchmark

Written by `bench/ledger.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({platform.machine()},
{os.cpu_count()} CPUs, PostgreSQL {result.server}, Python {platform.python_version()}).
Target from the issue: `/admin/spend` grouped by key per day over one month of ≥ 1 M ledger rows answers
in under {TARGET_MS:.0f} ms — **{verdict}** (p95 {http.percentile(0.95):.1f} ms).

| figure | value |
|---|---|
{table}

How: a throwaway database is migrated, the month's partition is created ahead (as the writer does), and
the rows are written by the writer's own code path, so both rollups are built exactly as in production:
only from rows an insert actually returned, in the same transaction. `VACUUM ANALYZE` runs once after
loading (autovacuum would have by the end of a real month). Then a real `ferryman serve` (one worker)
answers {len(http.samples)} timed GETs on one keep-alive connection after three warm-ups; the in-process
line is the route's own query without HTTP and JSON.

The report reads a daily rollup, never the ledger, so its cost follows the number of rollup rows in the
window, not the number of requests. Grouped without end users it reads `spend_daily_by_key` (at most one
row per day, key, model and provider: here {result.by_key_rows / max(1, result.ledger_rows):.3f} per
ledger row), so the number of end users, the one unbounded dimension, does not slow it down; a report
grouped by end user reads `spend_daily` ({result.rollup_rows / max(1, result.ledger_rows):.2f} per ledger
row here, up to one per request with very many end users).

Rerun: `make bench-ledger`.
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The knobs; the defaults are those LEDGER.md is written with."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="ledger rows in the month")
    parser.add_argument("--calls", type=int, default=20, help="timed report calls")
    parser.add_argument("--admin-url", default=default_admin_url(), help="a PostgreSQL server to use")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "LEDGER.md", help="where to write")
    return parser.parse_args(argv)


def default_admin_url() -> str:
    """`DATABASE_URL` when it names PostgreSQL (as a plain `postgresql://` URL), else the local server."""
    configured = os.environ.get("DATABASE_URL", "")
    if configured.startswith("postgresql"):
        return make_url(configured).set(drivername="postgresql").render_as_string(hide_password=False)
    return "postgresql://postgres@127.0.0.1:5432/postgres"


def main(argv: Sequence[str] | None = None) -> int:
    """Run, write the report, print the headline; exit 1 when the target is missed."""
    args = parse_args(argv)
    result = run(args.admin_url, Workload(rows=args.rows), args.calls)
    args.output.write_text(render(result), encoding="utf-8")
    p50, p95 = result.http.percentile(0.5), result.http.percentile(0.95)
    print(f"{result.ledger_rows:,} rows: /admin/spend p50 {p50:.1f} ms, p95 {p95:.1f} ms -> {args.output}")
    return 0 if p95 < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
