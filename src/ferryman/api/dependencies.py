"""Watching the database and Redis: checked in the background, read by probes and the gauge.

Probes answer from the last check instead of doing I/O themselves, so a burst of probes never becomes a
burst of queries, and `ai_api_dependency_up` stays current even where nothing probes the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection

from ferryman.observability.metrics import Metrics

Check = Callable[[], Awaitable[dict[str, bool]]]


class DependencyWatch:
    """The latest up/down state of each configured dependency, refreshed every `interval` seconds."""

    def __init__(self, check: Check, metrics: Metrics, required: Collection[str], interval: float) -> None:
        self._check = check
        self._metrics = metrics
        self._required = frozenset(required)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.status: dict[str, bool] = {}

    async def start(self) -> None:
        """Check once now (so the first probe already knows), then keep checking in the background.

        With no dependency configured there is nothing to watch, and no task is started.
        """
        await self.check_now()
        if not self.status:
            return
        self._task = asyncio.create_task(self._watch(), name="ferryman-dependency-watch")

    async def check_now(self) -> None:
        """Refresh the status and the gauge."""
        self.status = await self._check()
        for name, up in self.status.items():
            self._metrics.dependency_up.labels(name).set(1 if up else 0)

    @property
    def ready(self) -> bool:
        """False while a dependency that readiness requires is down."""
        return all(self.status.get(name, True) for name in self._required)

    def describe(self, name: str) -> str:
        """`up`, `down`, `down (degraded mode)` or `not configured`, for `/health`."""
        if name not in self.status:
            return "not configured"
        if self.status[name]:
            return "up"
        return "down" if name in self._required else "down (degraded mode)"

    async def aclose(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_now()
