"""The spend ledger loses nothing, proved on real processes: a gateway SIGKILLed mid-load (with Redis and
PostgreSQL, and in the embedded default, and one of two embedded workers) and a PostgreSQL stopped
mid-load leave every request a client got a 200 for in the SQL ledger exactly once, once the backlog has
drained.

The ledger's key is the `x-request-id` the gateway answers with (the clients here send none, so it is
the spend id too). Requests cut by a kill may or may not be in the ledger, but never twice, and the
ledger never holds more requests than the upstream saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import text

from ferryman.store.database import open_engine
from ferryman.store.redis_state import ledger_stream_key
from ferryman.store.sql_ledger import SqlLedger
from ferryman.testing import FakeOpenAI, Reply
from tests.api.replicas import gateway_processes
from tests.processes import gateway_process
from tests.store.fixtures import throwaway_postgres_server, throwaway_redis

pytestmark = pytest.mark.slow
KEY = "fm-ledger-key"
BODY = {"model": "chat", "messages": [{"role": "user", "content": "put me on the bill"}]}
STREAM = ledger_stream_key("ferryman")  # the default prefix: each test has a Redis of its own
BACKLOG = re.compile(r"^ai_api_ledger_backlog (\S+)$", re.MULTILINE)


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    """Answers after 0.1 s, so a kill or an outage always finds requests in flight."""
    with FakeOpenAI() as fake:
        fake.script.set_default(Reply.echo(delay=0.1))
        yield fake


def gateway_config(upstream: FakeOpenAI, **storage: Any) -> dict[str, Any]:
    deployment = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": upstream.base_url,
        "api_key": "k",
        "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
    }
    return {
        **storage,
        "server": {"shutdown_delay_seconds": 0},
        "keys": [{"alias": "billed", "key": KEY}],
        "models": [{"name": "chat", "deployments": [deployment]}],
    }


@dataclass
class Outcome:
    """What the clients saw: the request id of every 200, and the requests that got none, per URL."""

    ok: list[str] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)


async def load(
    urls: list[str],
    total: int,
    *,
    midway: Callable[[], Awaitable[None]] | None = None,
    after: int = 0,
    concurrency: int = 16,
) -> Outcome:
    """`total` requests from `concurrency` clients, round-robin over `urls` (which `midway` may shrink);
    `midway` runs, beside the load, once `after` of them got their 200."""
    outcome = Outcome()
    sent = iter(range(total))
    trigger: list[asyncio.Task[None]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=15, limits=limits) as client:

        async def one_client() -> None:
            for n in sent:
                if not urls:  # the only gateway was killed: the rest of the load has nowhere to go
                    return
                url = urls[n % len(urls)]
                try:
                    response = await client.post(
                        url + "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {KEY}"}
                    )
                except httpx.TransportError:
                    outcome.failed[url] += 1
                    continue
                if response.status_code != 200:
                    outcome.failed[url] += 1
                    continue
                assert float(response.headers["x-ferryman-cost-usd"]) > 0  # priced: the ledger has a cost
                outcome.ok.append(response.headers["x-request-id"])
                if midway is not None and len(outcome.ok) == after:
                    trigger.append(asyncio.create_task(midway()))

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        for task in trigger:
            await task
    return outcome


def kill_midway(process: subprocess.Popen[bytes], url: str, urls: list[str]) -> Callable[[], Awaitable[None]]:
    """SIGKILL the replica's whole process group, and send the rest of the load to the others."""

    async def kill() -> None:
        os.killpg(process.pid, signal.SIGKILL)
        urls.remove(url)

    return kill


def ledger_counts(database_url: str) -> Counter[str]:
    """How often each request id is in the SQL ledger (read with `SqlLedger.entries`, beside the
    gateways), after checking that the daily rollup counts exactly the ledger's rows."""

    async def read() -> Counter[str]:
        engine = open_engine(database_url)
        try:
            counts = Counter(entry.request_id for entry in await SqlLedger(engine).entries())
            async with engine.connect() as conn:
                rollup = await conn.scalar(text("SELECT COALESCE(SUM(requests), 0) FROM spend_daily"))
        finally:
            await engine.dispose()
        assert rollup == counts.total(), f"rollup counts {rollup} requests, the ledger {counts.total()}"
        return counts

    return asyncio.run(read())


def assert_exactly_once(counts: Counter[str], outcome: Outcome, upstream: FakeOpenAI) -> None:
    """Every 200 once; nothing twice; nothing the upstream never answered."""
    assert len(set(outcome.ok)) == len(outcome.ok)  # the gateway never reused an id
    missing = [request_id for request_id in outcome.ok if counts[request_id] == 0]
    assert not missing, f"{len(missing)} of {len(outcome.ok)} answered requests missing from the ledger"
    twice = {request_id: n for request_id, n in counts.items() if n > 1}
    assert not twice, f"recorded more than once: {twice}"
    assert counts.total() <= len(upstream.requests)


def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    """Poll `check` (state in other processes) until it holds, or fail naming `what`."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {within} s")
        time.sleep(0.1)


def stream_drained(redis_url: str) -> bool:
    """Nothing left in the Redis spend stream: every entry is in SQL (acknowledged entries are deleted)."""
    client = Redis.from_url(redis_url)
    try:
        return int(client.xlen(STREAM)) == 0
    finally:
        client.close()


def backlog_gauge(url: str) -> float:
    match = BACKLOG.search(httpx.get(url + "/metrics", timeout=5).text)
    assert match is not None, "no ai_api_ledger_backlog on /metrics"
    return float(match.group(1))


def test_a_replica_sigkilled_mid_load_loses_no_spend_and_duplicates_none(
    tmp_path: Path, postgres_database: str, upstream: FakeOpenAI
) -> None:
    with throwaway_redis() as redis_url, contextlib.ExitStack() as stack:
        config = gateway_config(upstream, redis_url=redis_url, database_url=postgres_database)
        replicas = gateway_processes(stack, config, tmp_path)
        urls = [url for _, url in replicas]
        victim, victim_url = replicas[0]
        # 16 clients on 0.1 s answers: at the kill, about a third of them wait on the victim.
        outcome = asyncio.run(load(urls, 240, midway=kill_midway(victim, victim_url, urls), after=60))
        assert victim.wait(timeout=10) == -signal.SIGKILL
        assert set(outcome.failed) <= {victim_url}, outcome.failed  # the others answered everything
        assert len(outcome.ok) >= 180
        _, restarted = stack.enter_context(gateway_process(config, tmp_path))
        wait_for(lambda: stream_drained(redis_url), 30, "the spend stream did not drain")
        wait_for(lambda: backlog_gauge(restarted) == 0, 5, "the backlog gauge did not settle at 0")
        counts = ledger_counts(postgres_database)
    assert_exactly_once(counts, outcome, upstream)


def test_the_embedded_gateway_sigkilled_mid_load_loses_no_spend_and_duplicates_none(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    data_dir = tmp_path / "data"
    config = gateway_config(upstream, data_dir=str(data_dir))
    with contextlib.ExitStack() as stack:
        victim, url = stack.enter_context(gateway_process(config, tmp_path))
        urls = [url]
        outcome = asyncio.run(load(urls, 200, midway=kill_midway(victim, url, urls), after=60))
        assert victim.wait(timeout=10) == -signal.SIGKILL
        assert 60 <= len(outcome.ok) < 200  # the kill really cut the load
        stack.enter_context(gateway_process(config, tmp_path))  # replays the journal it left
        wait_for(lambda: _journals_empty(data_dir), 10, "the spend journals were not moved into SQL")
        counts = ledger_counts(f"sqlite+aiosqlite:///{data_dir / 'ferryman.db'}")
    assert_exactly_once(counts, outcome, upstream)


def _journals_empty(data_dir: Path) -> bool:
    return all(path.stat().st_size == 0 for path in data_dir.glob("spend-*.journal*"))


def worker_pids(supervisor: int) -> set[int]:
    """The uvicorn worker processes under `supervisor` (spawned children; not the resource tracker)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == supervisor and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                pids.add(int(stat.parent.name))
    return pids


def test_an_embedded_worker_sigkilled_mid_load_is_replaced_and_its_sibling_keeps_every_cent(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    """`--workers 2`: the worker uvicorn starts in place of a killed one replays the dead one's journal,
    and must leave the live sibling's alone (it once took it, and lost all the sibling wrote after)."""
    data_dir = tmp_path / "data"
    config = gateway_config(upstream, data_dir=str(data_dir))
    with gateway_process(config, tmp_path, workers=2) as (supervisor, url):
        wait_for(lambda: len(worker_pids(supervisor.pid)) == 2, 10, "two workers did not start")
        first = worker_pids(supervisor.pid)
        wait_for(
            lambda: len(list(data_dir.glob("spend-*.journal"))) == 2,
            10,
            "each worker's own journal was not in place",
        )
        victim = min(first)

        async def kill() -> None:
            os.kill(victim, signal.SIGKILL)

        before = asyncio.run(load([url], 140, midway=kill, after=50))
        wait_for(lambda: len(worker_pids(supervisor.pid) - first) == 1, 15, "no worker replaced the dead")
        wait_for(
            lambda: not list(data_dir.glob(f"spend-{victim}-*")),
            10,
            "the dead worker's journal was not replayed",
        )
        after = asyncio.run(load([url], 120))  # both live workers, the sibling's journal in place
        assert after.failed == Counter()
        wait_for(lambda: _journals_empty(data_dir), 10, "the spend journals were not moved into SQL")
        counts = ledger_counts(f"sqlite+aiosqlite:///{data_dir / 'ferryman.db'}")
    assert_exactly_once(counts, Outcome(ok=before.ok + after.ok), upstream)


def test_a_postgres_outage_mid_load_fails_no_request_shows_the_backlog_and_drains(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    with throwaway_redis() as redis_url, throwaway_postgres_server() as postgres:
        database_url = postgres.url.replace("postgresql://", "postgresql+asyncpg://")
        config = gateway_config(upstream, redis_url=redis_url, database_url=database_url)
        with contextlib.ExitStack() as stack:
            urls = [url for _, url in gateway_processes(stack, config, tmp_path, count=2)]
            first, second = urls

            async def stop_postgres() -> None:
                await asyncio.to_thread(postgres.stop)

            before = asyncio.run(load(urls, 100, midway=stop_postgres, after=30))
            during = asyncio.run(load(urls, 100))  # with PostgreSQL away: spend waits in the stream
            assert before.failed == during.failed == Counter()  # no client saw the outage
            wait_for(lambda: backlog_gauge(first) > 0, 5, "the backlog gauge never showed the outage")
            assert backlog_gauge(second) > 0
            postgres.start()
            wait_for(lambda: stream_drained(redis_url), 30, "the backlog did not drain")
            for url in urls:
                wait_for(lambda url=url: backlog_gauge(url) == 0, 15, "the backlog gauge did not return to 0")
            counts = ledger_counts(database_url)
    outcome = Outcome(ok=before.ok + during.ok)
    assert_exactly_once(counts, outcome, upstream)
    assert counts.total() == len(outcome.ok) == 200  # nobody was cut: every request is on the bill
