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
from ferryman.observability.metrics import Children

T = TypeVar("T")


class TimedCounters:
    """`WindowCounters` with each call timed."""

    def __init__(self, inner: WindowCounters, histogram: Histogram) -> None:
        self._inner = inner
        self._timed = _Timer(histogram)

    async def check_and_add(self, windows: Sequence[Window], amount: float) -> Admission:
        """Timed as `check_and_add`."""
        return await self._timed("check_and_add", self._inner.check_and_add(windows, amount))

    async def add(self, windows: Sequence[Window], amount: float) -> None:
        """Timed as `add`."""
        await self._timed("add", self._inner.add(windows, amount))

    async def count(self, window: Window) -> float:
        """Timed as `count`."""
        return await self._timed("count", self._inner.count(window))

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
        return await self._timed("admit", work)

    async def finish(
        self,
        windows: Sequence[tuple[Window, float]],
        release: str | None = None,
        *,
        holds: Reservations | None = None,
        lazy: bool = False,
    ) -> None:
        """Timed as `finish`; the hold is released in the store `holds` wraps, as in `admit`. A lazy
        finish is not timed: its wait is mostly the linger it asked for, not Redis."""
        inner_holds = holds.inner if isinstance(holds, TimedReservations) else holds
        work = self._inner.finish(windows, release, holds=inner_holds, lazy=lazy)
        if lazy:
            await work
        else:
            await self._timed("finish", work)


class TimedReservations:
    """`Reservations` with each call timed."""

    def __init__(self, inner: Reservations, histogram: Histogram) -> None:
        self._inner = inner
        self._timed = _Timer(histogram)

    @property
    def inner(self) -> Reservations:
        """The reservations timed: where `TimedCounters.admit` has its inner counters take a hold."""
        return self._inner

    async def reserve(
        self, reservation_id: str, ceilings: Sequence[Ceiling], amount: float, ttl: float
    ) -> Admission:
        """Timed as `reserve`."""
        work = self._inner.reserve(reservation_id, ceilings, amount, ttl)
        return await self._timed("reserve", work)

    async def settle(self, reservation_id: str, actual: float) -> Mapping[str, float]:
        """Timed as `settle`."""
        return await self._timed("settle", self._inner.settle(reservation_id, actual))

    async def release(self, reservation_id: str) -> None:
        """Timed as `release`."""
        await self._timed("release", self._inner.release(reservation_id))

    async def level(self, key: str) -> tuple[float, float]:
        """Timed as `level`."""
        return await self._timed("level", self._inner.level(key))

    async def restore(self, key: str, committed: float, ttl: float, *, if_absent: bool = False) -> bool:
        """Timed as `restore`."""
        work = self._inner.restore(key, committed, ttl, if_absent=if_absent)
        return await self._timed("restore", work)


class _Timer:
    """Times awaitables into one histogram, by operation (each label's child looked up once)."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._child = Children()

    async def __call__(self, operation: str, work: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await work
        finally:
            self._child(self._histogram, operation).observe(time.perf_counter() - started)
