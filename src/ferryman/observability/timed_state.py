"""Shared-state calls timed into `ai_api_shared_state_seconds`, without the core knowing.

The core calls the `WindowCounters` and `Reservations` it was given; the app gives it these wrappers
around the real backend, so the limiter's Redis round trip is measured where it happens.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import TypeVar

from prometheus_client import Histogram

from ferryman.core.shared_state import Admission, Ceiling, Hold, Reservations, Window, WindowCounters

T = TypeVar("T")


class TimedCounters:
    """`WindowCounters` with each call timed."""

    def __init__(self, inner: WindowCounters, histogram: Histogram) -> None:
        self._inner = inner
        self._histogram = histogram

    async def check_and_add(self, windows: Sequence[Window], amount: float) -> Admission:
        """Timed as `check_and_add`."""
        return await _timed(self._histogram, "check_and_add", self._inner.check_and_add(windows, amount))

    async def add(self, windows: Sequence[Window], amount: float) -> None:
        """Timed as `add`."""
        await _timed(self._histogram, "add", self._inner.add(windows, amount))

    async def count(self, window: Window) -> float:
        """Timed as `count`."""
        return await _timed(self._histogram, "count", self._inner.count(window))

    async def admit(
        self,
        windows: Sequence[tuple[Window, float]],
        hold: Hold | None = None,
        *,
        holds: Reservations | None = None,
    ) -> Admission:
        """Timed as `admit`. The inner counters take the hold in the store `holds` wraps: the app wraps
        both halves of one pair, and only the unwrapped pair is one backend (one atomic step)."""
        inner_holds = holds.inner if isinstance(holds, TimedReservations) else holds
        work = self._inner.admit(windows, hold, holds=inner_holds)
        return await _timed(self._histogram, "admit", work)

    async def finish(
        self,
        windows: Sequence[tuple[Window, float]],
        release: str | None = None,
        *,
        holds: Reservations | None = None,
    ) -> None:
        """Timed as `finish`; the hold is released in the store `holds` wraps, as in `admit`."""
        inner_holds = holds.inner if isinstance(holds, TimedReservations) else holds
        await _timed(self._histogram, "finish", self._inner.finish(windows, release, holds=inner_holds))


class TimedReservations:
    """`Reservations` with each call timed."""

    def __init__(self, inner: Reservations, histogram: Histogram) -> None:
        self._inner = inner
        self._histogram = histogram

    @property
    def inner(self) -> Reservations:
        """The reservations timed: where `TimedCounters.admit` has its inner counters take a hold."""
        return self._inner

    async def reserve(
        self, reservation_id: str, ceilings: Sequence[Ceiling], amount: float, ttl: float
    ) -> Admission:
        """Timed as `reserve`."""
        work = self._inner.reserve(reservation_id, ceilings, amount, ttl)
        return await _timed(self._histogram, "reserve", work)

    async def settle(self, reservation_id: str, actual: float) -> Mapping[str, float]:
        """Timed as `settle`."""
        return await _timed(self._histogram, "settle", self._inner.settle(reservation_id, actual))

    async def release(self, reservation_id: str) -> None:
        """Timed as `release`."""
        await _timed(self._histogram, "release", self._inner.release(reservation_id))

    async def level(self, key: str) -> tuple[float, float]:
        """Timed as `level`."""
        return await _timed(self._histogram, "level", self._inner.level(key))

    async def restore(self, key: str, committed: float, ttl: float, *, if_absent: bool = False) -> bool:
        """Timed as `restore`."""
        work = self._inner.restore(key, committed, ttl, if_absent=if_absent)
        return await _timed(self._histogram, "restore", work)


async def _timed(histogram: Histogram, operation: str, work: Awaitable[T]) -> T:
    started = time.perf_counter()
    try:
        return await work
    finally:
        histogram.labels(operation).observe(time.perf_counter() - started)
