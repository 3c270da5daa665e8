"""Budget alerts leaving the gateway: the log line, the counter, and the Slack-style webhook over real
loopback HTTP — retried with backoff while it fails, and never lost without a log line saying so."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from ferryman.core.budgets import Budget, BudgetAlert
from ferryman.observability import budget_alerts
from ferryman.observability.budget_alerts import BudgetAlerter
from ferryman.observability.metrics import Metrics
from tests.processes import free_port

ALERT = BudgetAlert(Budget("key", "k1", "app", "daily", 10.0), 0.8, 8.25, datetime(2026, 12, 2, tzinfo=UTC))
SHORT_DELAYS = (0.05, 0.1, 0.2, 0.4)


class Receiver:
    """A webhook on loopback answering each POST with the next of `statuses` (the last one repeats)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.posts: list[tuple[float, dict[str, Any]]] = []
        self._posted = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with self._posted:
            self.posts.append((time.monotonic(), body))
            self._posted.notify_all()
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return web.Response(status=status)

    async def wait_for(self, count: int) -> None:
        """Until `count` POSTs have arrived (TimeoutError after 5 s)."""
        async with asyncio.timeout(5), self._posted:
            await self._posted.wait_for(lambda: len(self.posts) >= count)


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    """What `ferryman.budgets` logs during the test, whatever the logging configuration."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    logger = logging.getLogger("ferryman.budgets")
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget_alerts, "RETRY_DELAYS", SHORT_DELAYS)


async def test_an_alert_is_logged_counted_and_posted_as_slack_json(logged: list[logging.LogRecord]) -> None:
    receiver, metrics = Receiver(200), Metrics.create()
    async with serving(receiver) as url:
        alerter = BudgetAlerter(metrics, url)
        alerter.alert(ALERT)
        await receiver.wait_for(1)
        await alerter.aclose()
    [(_, body)] = receiver.posts
    assert body["text"].startswith("Ferryman: the daily budget of key 'app' is at 82%")  # Slack's field
    assert (body["threshold"], body["spent_usd"], body["limit_usd"]) == (0.8, 8.25, 10.0)
    labels = {"scope": "key", "window": "daily", "threshold": "0.8"}
    assert metrics.registry.get_sample_value("ai_api_budget_alerts_total", labels) == 1
    [line] = logged
    assert line.getMessage() == "budget threshold crossed" and line.__dict__["budget"] == "app"


async def test_a_failing_webhook_is_retried_with_backoff_until_it_takes_the_alert() -> None:
    receiver = Receiver(503, 429, 200)
    async with serving(receiver) as url:
        alerter = BudgetAlerter(Metrics.create(), url)
        alerter.alert(ALERT)
        await receiver.wait_for(3)
        await asyncio.sleep(0.3)  # room for a fourth attempt, which must not come
        await alerter.aclose()
    times = [at for at, _ in receiver.posts]
    assert len(times) == 3
    assert [b - a >= delay for a, b, delay in zip(times, times[1:], SHORT_DELAYS, strict=False)] == [True] * 2
    assert all(body == receiver.posts[0][1] for _, body in receiver.posts)  # the same alert each time


async def test_a_webhook_that_refuses_the_alert_is_not_retried_and_says_so(
    logged: list[logging.LogRecord],
) -> None:
    receiver = Receiver(404)
    async with serving(receiver) as url:
        alerter = BudgetAlerter(Metrics.create(), url)
        alerter.alert(ALERT)
        await receiver.wait_for(1)
        await asyncio.sleep(0.2)
        await alerter.aclose()
    assert len(receiver.posts) == 1  # retrying cannot fix a revoked or mistyped URL
    errors = [r.getMessage() for r in logged if r.levelno == logging.ERROR]
    assert errors == ["budget webhook refused the alert: HTTP 404"]


async def test_an_unreachable_webhook_is_tried_every_time_then_given_up_loudly(
    logged: list[logging.LogRecord],
) -> None:
    alerter = BudgetAlerter(Metrics.create(), f"http://127.0.0.1:{free_port()}/hook")  # nobody listens
    alerter.alert(ALERT)
    await alerter.aclose()
    messages = [r.getMessage() for r in logged]
    assert messages.count("budget webhook failed: ClientConnectorError") == len(SHORT_DELAYS) + 1
    assert messages[-1] == f"budget webhook gave up after {len(SHORT_DELAYS) + 1} attempts"


async def test_an_alert_still_being_retried_at_shutdown_is_reported_not_dropped_silently(
    logged: list[logging.LogRecord],
) -> None:
    receiver = Receiver(503)
    async with serving(receiver) as url:
        alerter = BudgetAlerter(Metrics.create(), url)
        alerter.alert(ALERT)
        await receiver.wait_for(1)
        await alerter.aclose(grace=0.01)
    errors = [r.getMessage() for r in logged if r.levelno == logging.ERROR]
    assert errors == ["budget webhook: 1 alert(s) still undelivered at shutdown, dropped"]
