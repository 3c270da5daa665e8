"""What limits do while the shared state (Redis) is unreachable: fail open to a local share, or closed.

Limits must never turn a Redis outage into an outage of the gateway, nor into no limits at all. Under
`fail_open` each replica falls back to its own memory and enforces `1 / replicas` of every limit, so
the fleet as a whole stays near the configured figure; under `fail_closed` limited requests are refused
(503) until Redis answers. Either way Redis is tried again every `retry_seconds` — recovery needs no
restart — and every transition is reported once (`on_change`: a log line and a gauge).

Only rate-limit state goes through here. Budgets are money: they never fall back to a local share.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal, TypeVar

from ferryman.core.shared_state import Admission, Ceiling, Hold, Reservations, Window, WindowCounters
from ferryman.errors import FerrymanError, SharedStateUnavailableError

T = TypeVar("T")
Policy = Literal["fail_open", "fail_closed"]


class LimiterUnavailableError(FerrymanError):
    """503: limits are configured to fail closed and their shared state is unreachable."""

    status = 503
    type = "api_error"
    code = "rate_limiter_unavailable"


class Failover:
    """Shared windows and slots with a local fallback; implements `WindowCounters` and `Reservations`."""

    def __init__(
        self,
        shared_counters: WindowCounters,
        shared_slots: Reservations,
        local_counters: WindowCounters,
        local_slots: Reservations,
        *,
        policy: Policy = "fail_open",
        replicas: int = 1,
        retry_seconds: float = 1.0,
        on_change: Callable[[bool], None] = lambda degraded: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = (shared_counters, shared_slots)
        self._local = (local_counters, local_slots)
        self._policy = policy
        self._replicas = replicas
        self._retry = retry_seconds
        self._on_change = on_change
        self._clock = clock
        self._down_until: float | None = None  # while set, the shared state is not tried before then
        self._local_holds: set[str] = set()  # reservations made locally must be released locally

    @property
    def degraded(self) -> bool:
        """Whether the last call found the shared state unreachable."""
        return self._down_until is not None

    async def check_and_add(self, windows: Sequence[Window], amount: float) -> Admission:
        """Shared when reachable; else the local share, or 503."""
        return await self._either(
            lambda: self._shared[0].check_and_add(windows, amount),
            lambda: self._local[0].check_and_add([self._share(w) for w in windows], amount),
        )

    async def add(self, windows: Sequence[Window], amount: float) -> None:
        """A correction: wherever the counting is being done now (lost if neither answers)."""
        await self._either(
            lambda: self._shared[0].add(windows, amount),
            lambda: self._local[0].add([self._share(w) for w in windows], amount),
            refuse=False,
        )

    async def count(self, window: Window) -> float:
        """What the window counts now."""
        return await self._either(
            lambda: self._shared[0].count(window), lambda: self._local[0].count(self._share(window))
        )

    async def admit(
        self,
        windows: Sequence[tuple[Window, float]],
        hold: Hold | None = None,
        *,
        holds: Reservations | None = None,
    ) -> Admission:
        """Windows and a slot in one step: on the shared pair when reachable, else on the local pair with
        this replica's share of every window limit and ceiling (the hold then released locally), or 503.

        A hold is taken in these slots, so `holds` must be this object (as the stage passes the same
        `Failover` as counters and as slots): each side's counters then take it in their own slots.
        """
        if hold is not None and holds is not self:
            raise ValueError("a Failover takes a hold in its own slots: pass holds=<this Failover>")
        (shared_counters, shared_slots), (local_counters, local_slots) = self._shared, self._local

        async def local() -> Admission:
            shares = [(self._share(window), amount) for window, amount in windows]
            if hold is None:
                return await local_counters.admit(shares)
            ceilings = tuple(Ceiling(c.key, self._scaled(c.limit), c.ttl) for c in hold.ceilings)
            local_hold = Hold(hold.reservation_id, ceilings, hold.amount, hold.ttl)
            admission = await local_counters.admit(shares, local_hold, holds=local_slots)
            if admission.allowed:
                self._local_holds.add(hold.reservation_id)
            return admission

        return await self._either(lambda: shared_counters.admit(windows, hold, holds=shared_slots), local)

    async def finish(
        self,
        windows: Sequence[tuple[Window, float]],
        release: str | None = None,
        *,
        holds: Reservations | None = None,
        lazy: bool = False,
    ) -> None:
        """A hold taken locally is released locally; the corrections (and a shared hold's release) go
        wherever the counting is being done now. A shared hold Redis cannot release expires by its TTL."""
        if release is not None and holds is not self:
            raise ValueError("a Failover releases a hold in its own slots: pass holds=<this Failover>")
        (shared_counters, shared_slots), (local_counters, local_slots) = self._shared, self._local
        if release is not None and release in self._local_holds:
            self._local_holds.discard(release)
            await local_slots.release(release)
            release = None
        await self._either(
            lambda: shared_counters.finish(windows, release, holds=shared_slots, lazy=lazy),
            lambda: local_counters.finish([(self._share(window), amount) for window, amount in windows]),
            refuse=False,
        )

    async def reserve(
        self, reservation_id: str, ceilings: Sequence[Ceiling], amount: float, ttl: float
    ) -> Admission:
        """A slot, shared when reachable; else a local share of the slots, or 503."""

        async def local() -> Admission:
            shares = [Ceiling(c.key, self._scaled(c.limit), c.ttl) for c in ceilings]
            admission = await self._local[1].reserve(reservation_id, shares, amount, ttl)
            if admission.allowed:  # a refused hold does not exist: nothing to release, nothing to remember
                self._local_holds.add(reservation_id)
            return admission

        return await self._either(
            lambda: self._shared[1].reserve(reservation_id, ceilings, amount, ttl), local
        )

    async def settle(self, reservation_id: str, actual: float) -> Mapping[str, float]:
        """Settle where the hold was made (nothing to report when the shared state cannot be reached)."""
        if reservation_id in self._local_holds:
            self._local_holds.discard(reservation_id)
            return await self._local[1].settle(reservation_id, actual)

        async def unreachable() -> Mapping[str, float]:
            return {}

        return await self._either(
            lambda: self._shared[1].settle(reservation_id, actual), unreachable, refuse=False
        )

    async def release(self, reservation_id: str) -> None:
        """Release where the hold was made; a shared hold Redis cannot release now expires by its TTL."""
        if reservation_id in self._local_holds:
            self._local_holds.discard(reservation_id)
            await self._local[1].release(reservation_id)
            return
        await self._either(lambda: self._shared[1].release(reservation_id), _nothing, refuse=False)

    async def level(self, key: str) -> tuple[float, float]:
        """(committed, held) where the counting is being done now."""
        return await self._either(lambda: self._shared[1].level(key), lambda: self._local[1].level(key))

    async def restore(self, key: str, committed: float, ttl: float, *, if_absent: bool = False) -> bool:
        """Restore on the shared state (a local share has nothing to restore: False)."""
        return await self._either(
            lambda: self._shared[1].restore(key, committed, ttl, if_absent=if_absent), _false, refuse=False
        )

    async def _either(
        self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]], *, refuse: bool = True
    ) -> T:
        if self._down_until is None or self._clock() >= self._down_until:
            try:
                result = await shared()
            except SharedStateUnavailableError:
                self._went_down()
            else:
                self._came_back()
                return result
        if self._policy == "fail_closed" and refuse:
            raise LimiterUnavailableError("Rate limits cannot be checked right now; retry shortly.")
        return await local()

    def _went_down(self) -> None:
        was_down = self._down_until is not None
        self._down_until = self._clock() + self._retry
        if not was_down:
            self._on_change(True)

    def _came_back(self) -> None:
        if self._down_until is not None:
            self._down_until = None
            self._on_change(False)

    def _share(self, window: Window) -> Window:
        return Window(window.key, self._scaled(window.limit), window.seconds)

    def _scaled(self, limit: float) -> float:
        """This replica's share of a fleet-wide limit (at least one unit, so nothing is shut out)."""
        return max(math.floor(limit / self._replicas), 1)


async def _nothing() -> None:
    return None


async def _false() -> bool:
    return False
