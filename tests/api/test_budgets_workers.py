"""Money across processes without Redis: `ferryman serve --workers 3` on one embedded SQLite file, or three
replicas on one PostgreSQL, hold budgets in that database, so together they never admit more than a
budget, refuse the rest before the upstream, and account for every cent in /v1/usage and the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferryman.settings import settings_from_mapping
from ferryman.store.database import open_engine
from ferryman.store.memory import open_memory_state
from ferryman.store.sql_reservations import SqlReservations, budget_holds
from ferryman.testing import FakeOpenAI
from tests.api.fleet import burst, openai_deployment, worst_case_upstream
from tests.api.replicas import gateway_processes
from tests.processes import gateway_process
from tests.store.fixtures import fresh_postgres_database

MASTER = "sk-workers-master"
KEY = "fm-workers-key"
BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [{"role": "user", "content": "bill me please"}],
    "max_tokens": 10,
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, float]]:
    """A slow upstream that spends exactly each request's worst case: (the fake, that cost in USD)."""
    with worst_case_upstream(BODY, delay=1.0) as upstream:
        yield upstream


@pytest.mark.slow
def test_three_workers_on_one_sqlite_file_never_overshoot_a_budget(
    tmp_path: Path, upstream: tuple[FakeOpenAI, float]
) -> None:
    fake, each = upstream
    budget = 20 * each + each / 2  # room for 20 requests, not 21
    config = {
        "master_key": MASTER,
        "data_dir": str(tmp_path / "data"),  # the embedded SQLite file, shared by the workers; no Redis
        "server": {"shutdown_delay_seconds": 0},  # workers: 1 in the file; `--workers 3` overrides it
        "keys": [{"alias": "money", "key": KEY, "budget": {"daily_usd": budget}}],
        "models": [{"name": "chat", "deployments": [openai_deployment(fake)]}],
    }
    with gateway_process(config, tmp_path, workers=3) as (_process, url):
        before = len(fake.requests)
        responses = asyncio.run(burst([url], BODY, KEY, 100))
        admitted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        usage = httpx.get(url + "/v1/usage", headers={"authorization": f"Bearer {KEY}"}).json()
        ledger_total = _ledger_total(url, len(admitted))
    assert len(admitted) == 20
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["type"] for r in refused} == {"insufficient_quota"}
    assert {r.json()["error"]["code"] for r in refused} == {"budget_exceeded"}
    assert len(fake.requests) - before == 20  # refused requests never reached the upstream
    spent = sum(float(r.headers["x-ferryman-cost-usd"]) for r in admitted)
    assert spent <= budget
    daily = usage["windows"]["daily"]
    assert daily["spent_usd"] == pytest.approx(spent, abs=1e-9)
    assert daily["remaining_usd"] == pytest.approx(budget - spent, abs=1e-9)
    assert ledger_total == pytest.approx(spent, abs=1e-9)


@pytest.mark.slow
def test_three_replicas_on_one_postgresql_without_redis_never_overshoot_a_budget(
    tmp_path: Path, postgres_admin: str, upstream: tuple[FakeOpenAI, float]
) -> None:
    fake, each = upstream
    budget = 20 * each + each / 2
    with fresh_postgres_database(postgres_admin) as database_url:
        config = {
            "master_key": MASTER,
            "database_url": database_url,
            "limits": {"expected_replicas": 3},  # what says the replicas share the database
            "server": {"shutdown_delay_seconds": 0},
            "keys": [{"alias": "money", "key": KEY, "budget": {"daily_usd": budget}}],
            "models": [{"name": "chat", "deployments": [openai_deployment(fake)]}],
        }
        with contextlib.ExitStack() as stack:
            urls = [url for _, url in gateway_processes(stack, config, tmp_path)]
            before = len(fake.requests)
            responses = asyncio.run(burst(urls, BODY, KEY, 100))
            ledger_total = _ledger_total(urls[2], 20)
    admitted = [r for r in responses if r.status_code == 200]
    assert len(admitted) == 20
    assert {r.json()["error"]["type"] for r in responses if r.status_code != 200} == {"insufficient_quota"}
    assert len(fake.requests) - before == 20
    spent = sum(float(r.headers["x-ferryman-cost-usd"]) for r in admitted)
    assert spent <= budget
    assert ledger_total == pytest.approx(spent, abs=1e-9)


def _ledger_total(url: str, requests: int) -> float:
    """The SQL ledger's total once every worker's journal has moved into it."""
    deadline = time.monotonic() + 15
    total = 0.0
    while time.monotonic() < deadline:
        report = httpx.get(
            url + "/admin/spend", params={"group_by": "key"}, headers={"authorization": f"Bearer {MASTER}"}
        )
        report.raise_for_status()
        total = report.json()["total_cost_usd"] or 0.0
        if sum(row["requests"] for row in report.json()["data"]) >= requests:
            return float(total)
        time.sleep(0.2)
    return float(total)


@pytest.mark.parametrize(
    ("config", "database", "in_sql"),
    [
        ({}, "ferryman.db", False),  # one worker alone: in process, the fastest
        ({"server": {"workers": 3}}, "ferryman.db", True),
        ({"limits": {"expected_replicas": 2}}, "ferryman.db", True),  # replicas on one database
        ({"server": {"workers": 3}, "redis_url": "redis://127.0.0.1:1/0"}, "ferryman.db", False),  # Redis's
        ({"server": {"workers": 3}}, ":memory:", False),  # one process's database anyway
    ],
)
async def test_budgets_hold_in_sql_only_for_several_processes_on_one_database_without_redis(
    tmp_path: Path, config: dict[str, Any], database: str, in_sql: bool
) -> None:
    settings = settings_from_mapping(config)
    shared = await open_memory_state("memory://")
    path = database if database == ":memory:" else str(tmp_path / database)
    engine = open_engine(f"sqlite+aiosqlite:///{path}")
    try:
        holds = budget_holds(settings, shared, engine)
        assert isinstance(holds, SqlReservations) is in_sql
        assert in_sql or holds is shared.reservations
    finally:
        await engine.dispose()
        await shared.close()
