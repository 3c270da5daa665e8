"""Budget alerts leave the gateway three ways: a log line, metrics, and a Slack-compatible webhook.

The core decides *that* a threshold was crossed (once per budget and window, fleet-wide: see
`core/budgets.py`); this module says so. The webhook is retried with backoff in the background, so a
slow receiver never slows a request, and `aclose` gives pending deliveries a moment at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from ferryman.core.budgets import Budget, BudgetAlert
from ferryman.observability.metrics import Metrics

log = logging.getLogger("ferryman.budgets")
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)  # seconds between the webhook's attempts


class BudgetAlerter:
    """The core's `on_alert` and `on_level` callbacks."""

    def __init__(self, metrics: Metrics, webhook_url: str | None = None) -> None:
        self._metrics = metrics
        self._webhook_url = webhook_url
        self._deliveries: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def level(self, budget: Budget, ratio: float) -> None:
        """Spent ÷ limit of a budget, as last settled here."""
        self._metrics.budget_utilization.labels(budget.scope, budget.period).set(ratio)

    def alert(self, alert: BudgetAlert) -> None:
        """Announce a crossing: log it, count it, and post it to the webhook if one is configured."""
        budget = alert.budget
        log.warning(
            "budget threshold crossed",
            extra={
                "scope": budget.scope,
                "budget": budget.name,
                "window": budget.period,
                "threshold": alert.threshold,
                "spent_usd": round(alert.spent, 6),
                "limit_usd": budget.limit,
                "resets_at": alert.resets_at.isoformat(),
            },
        )
        self._metrics.budget_alerts.labels(budget.scope, budget.period, f"{alert.threshold:g}").inc()
        if self._webhook_url is not None:
            task = asyncio.get_running_loop().create_task(self._deliver(alert))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, alert: BudgetAlert) -> None:
        assert self._webhook_url is not None  # noqa: S101 - only scheduled with a webhook
        budget = alert.budget
        payload = {
            "text": (
                f"Ferryman: the {budget.period} budget of {budget.scope} {budget.name!r} is at "
                f"{alert.spent / budget.limit:.0%} (${alert.spent:.2f} of ${budget.limit:g}); "
                f"it resets at {alert.resets_at.isoformat()}."
            ),
            "scope": budget.scope,
            "budget": budget.name,
            "window": budget.period,
            "threshold": alert.threshold,
            "spent_usd": alert.spent,
            "limit_usd": budget.limit,
            "resets_at": alert.resets_at.isoformat(),
        }
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for delay in (*RETRY_DELAYS, None):
            try:
                async with self._session.post(self._webhook_url, json=payload) as response:
                    if response.ok:
                        return
                    if response.status < 500 and response.status != 429:
                        # Retrying cannot help (a revoked or mistyped URL), but the alert is lost: say so.
                        log.error("budget webhook refused the alert: HTTP %d", response.status)
                        return
                    log.warning("budget webhook failed: HTTP %d", response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("budget webhook failed: %s", type(exc).__name__)
            if delay is None:
                log.error("budget webhook gave up after %d attempts", len(RETRY_DELAYS) + 1)
                return
            await asyncio.sleep(delay)

    async def aclose(self, grace: float = 5.0) -> None:
        """Give pending deliveries `grace` seconds, then stop them and close the session."""
        if self._deliveries:
            _done, pending = await asyncio.wait(self._deliveries, timeout=grace)
            if pending:
                log.error("budget webhook: %d alert(s) still undelivered at shutdown, dropped", len(pending))
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._session is not None:
            await self._session.close()
