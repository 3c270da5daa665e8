"""In-process shared state: the embedded default when one gateway process is all there is.

No operation awaits anything, so under asyncio each one is atomic: no other task runs between a check
and the add that follows it. That is also this backend's limit: the state lives in one process, so
several workers or replicas would each see only their own. It is not thread-safe (one event loop).
Expired data is purged lazily, by the operations passing by, from a deadline heap per store; nothing
runs in the background.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Literal
from urllib.parse import urlsplit

from ferryman.core.shared_state import (
    Admission,
    Ceiling,
    Hold,
    Reservations,
    SharedState,
    SpendEntry,
    Window,
    require_admissible,
    within_limit,
)
from ferryman.errors import ConfigError

Clock = Callable[[], float]
DEFAULT_CACHE_MAX_BYTES = 64 * 1024 * 1024


class _Deadlines:
    """When to look at each key again: a key is pushed again only to be looked at sooner, so the heap
    stays about as large as the data, and a look that finds nothing due yet simply reschedules."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._next: dict[str, float] = {}

    def schedule(self, key: str, when: float) -> None:
        """Look at `key` at `when` at the latest."""
        if when < self._next.get(key, math.inf):
            self._next[key] = when
            heapq.heappush(self._heap, (when, key))

    def pop_due(self, now: float) -> list[str]:
        """The keys whose time has come, taken off the schedule (superseded entries are skipped)."""
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            when, key = heapq.heappop(self._heap)
            if self._next.get(key) == when:
                del self._next[key]
                due.append(key)
        return due


@dataclass(frozen=True, slots=True)
class _Bound:
    """A window or a ceiling as an admission judges it: what it `used` before, the `amount` it would add,
    and its `wait`, asked of a refusing bound only (it walks the stored units or holds)."""

    key: str
    limit: float
    used: float
    amount: float
    wait: Callable[[], float]


def _judge(bounds: Sequence[_Bound]) -> Admission:
    """The all-or-nothing answer over every bound, in order; the caller adds and holds if allowed."""
    refused = [bound for bound in bounds if not within_limit(bound.used + bound.amount, bound.limit)]
    if refused:
        remaining = tuple(bound.limit - bound.used for bound in bounds)
        return Admission(False, max(bound.wait() for bound in refused), refused[0].key, remaining)
    return Admission(True, remaining=tuple(bound.limit - bound.used - bound.amount for bound in bounds))


def _longest_by_key(pairs: Sequence[tuple[str, float]]) -> dict[str, float]:
    """The largest value given for each key: windows or ceilings sharing a key are one counter."""
    longest: dict[str, float] = {}
    for key, value in pairs:
        longest[key] = max(longest.get(key, value), value)
    return longest


@dataclass(slots=True)
class _Series:
    """One key's units as (time, amount), oldest first, kept for the longest window it is used with."""

    span: float
    entries: deque[tuple[float, float]] = field(default_factory=deque)
    total: float = 0.0  # of all entries: the common case (one window per key) never re-sums

    def prune(self, now: float) -> None:
        while self.entries and self.entries[0][0] + self.span <= now:
            self.total -= self.entries.popleft()[1]
        if not self.entries:
            self.total = 0.0  # drop the rounding residue of the adds and removals

    def used(self, now: float, seconds: float) -> float:
        if seconds >= self.span:
            return self.total
        used = 0.0
        for at, amount in reversed(self.entries):
            if at + seconds <= now:
                break
            used += amount
        return used

    def wait(self, now: float, window: Window, amount: float) -> float:
        """Seconds until enough of the oldest units slide out for `amount` to fit."""
        used = self.used(now, window.seconds)
        for at, unit in self.entries:
            if at + window.seconds > now:
                used -= unit
                if within_limit(used + amount, window.limit):
                    return at + window.seconds - now
        return window.seconds  # more than the limit itself: it never fits, try a window later


class MemoryWindowCounters:
    """Exact sliding windows: every counted amount is kept with its time until it slides out.

    `admit` takes its hold in any `MemoryReservations` it is given: no step here awaits, so windows and
    ceilings in two objects of one process are still checked and changed in one atomic step.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._series: dict[str, _Series] = {}
        self._deadlines = _Deadlines()

    def __len__(self) -> int:
        """Keys stored, including expired ones that no operation has passed by yet."""
        return len(self._series)

    async def check_and_add(self, windows: Sequence[Window], amount: float) -> Admission:
        if amount < 0:
            raise ValueError("check_and_add takes an amount >= 0; corrections go through add()")
        pairs = [(window, amount) for window in windows]
        now = self._now()
        admission = _judge(self._bounds(pairs, now))
        if admission.allowed:
            self._record(pairs, now)
        return admission

    async def add(self, windows: Sequence[Window], amount: float) -> None:
        self._record([(window, amount) for window in windows], self._now())

    async def count(self, window: Window) -> float:
        return self._used(window, self._now())

    async def admit(
        self,
        windows: Sequence[tuple[Window, float]],
        hold: Hold | None = None,
        *,
        holds: Reservations | None = None,
    ) -> Admission:
        require_admissible(windows)
        now = self._now()
        if hold is None:
            admission = _judge(self._bounds(windows, now))
            if admission.allowed:
                self._record(windows, now)
            return admission
        if not isinstance(holds, MemoryReservations):
            raise ValueError("an in-process admission takes its hold in a MemoryReservations (holds=...)")
        hold_now = holds._begin_hold(hold.reservation_id)
        bounds = self._bounds(windows, now) + holds._bounds(hold.ceilings, hold.amount, hold_now)
        admission = _judge(bounds)
        if admission.allowed:
            self._record(windows, now)
            holds._take(hold.reservation_id, hold.ceilings, hold.amount, hold.ttl, hold_now)
        return admission

    async def finish(
        self,
        windows: Sequence[tuple[Window, float]],
        release: str | None = None,
        *,
        holds: Reservations | None = None,
        lazy: bool = False,
    ) -> None:
        if release is None:
            self._record(windows, self._now())
            return
        if not isinstance(holds, MemoryReservations):
            raise ValueError("an in-process finish releases its hold in a MemoryReservations (holds=...)")
        self._record(windows, self._now())
        await holds.release(release)  # awaits nothing: the two changes are still one step

    def _bounds(self, windows: Sequence[tuple[Window, float]], now: float) -> list[_Bound]:
        return [
            _Bound(w.key, w.limit, self._used(w, now), amount, partial(self._wait, w, now, amount))
            for w, amount in windows
        ]

    def _now(self) -> float:
        now = self._clock()
        for key in self._deadlines.pop_due(now):
            series = self._series.get(key)
            if series is None:
                continue
            series.prune(now)
            if series.entries:
                self._deadlines.schedule(key, series.entries[-1][0] + series.span)
            else:
                del self._series[key]
        return now

    def _used(self, window: Window, now: float) -> float:
        series = self._series.get(window.key)
        if series is None:
            return 0.0
        series.span = max(series.span, window.seconds)
        series.prune(now)
        return series.used(now, window.seconds)

    def _wait(self, window: Window, now: float, amount: float) -> float:
        series = self._series.get(window.key)
        return window.seconds if series is None else series.wait(now, window, amount)

    def _record(self, windows: Sequence[tuple[Window, float]], now: float) -> None:
        """Add each key's amount once (windows sharing a key share it), kept for its longest window."""
        amounts = {window.key: amount for window, amount in windows}
        for key, seconds in _longest_by_key([(w.key, w.seconds) for w, _ in windows]).items():
            amount = amounts[key]
            if amount == 0:
                continue
            series = self._series.setdefault(key, _Series(seconds))
            series.span = max(series.span, seconds)
            series.entries.append((now, amount))
            series.total += amount
            self._deadlines.schedule(key, now + series.span)


@dataclass(slots=True)
class _Hold:
    """One reservation: its amount, its ceilings, and when each ceiling's period ends."""

    keys: tuple[str, ...]
    amount: float
    expires: float
    periods: tuple[float, ...]
    state: Literal["open", "lapsed", "closed"] = "open"

    @property
    def forget_at(self) -> float:
        """A lapsed hold is kept while a late settle could still commit; others until they would lapse."""
        return max(self.periods, default=self.expires) if self.state == "lapsed" else self.expires


@dataclass(slots=True)
class _Level:
    """One ceiling: committed spend until its period ends (`until`), and the open holds on it.

    A `kept` level was restored: it is known (not merely zero) until its period ends, even with nothing
    spent, so a restorable ceiling is rebuilt once per period."""

    committed: float = 0.0
    until: float = 0.0
    holds: set[str] = field(default_factory=set)
    held: float = 0.0
    kept: bool = False


class MemoryReservations:
    """Budget holds and committed totals per ceiling key; a level with open holds is never dropped."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._holds: dict[str, _Hold] = {}
        self._levels: dict[str, _Level] = {}
        self._hold_deadlines = _Deadlines()
        self._level_deadlines = _Deadlines()

    def __len__(self) -> int:
        """Holds and ceilings stored, including expired ones that no operation has passed by yet."""
        return len(self._holds) + len(self._levels)

    async def reserve(
        self, reservation_id: str, ceilings: Sequence[Ceiling], amount: float, ttl: float
    ) -> Admission:
        if amount < 0 or not ttl > 0:
            raise ValueError("reserve takes an amount >= 0 and a ttl > 0")
        now = self._begin_hold(reservation_id)
        unknown = [c.key for c in ceilings if c.restorable and self._live_level(c.key, now) is None]
        if unknown:
            return Admission(False, refused_key=unknown[0], unknown=tuple(dict.fromkeys(unknown)))
        admission = _judge(self._bounds(ceilings, amount, now))
        if admission.allowed:
            self._take(reservation_id, ceilings, amount, ttl, now)
        return admission

    async def settle(self, reservation_id: str, actual: float) -> Mapping[str, float]:
        if actual < 0:
            raise ValueError("settle takes an actual cost >= 0")
        now = self._now()
        hold = self._holds.get(reservation_id)
        if hold is None or hold.state == "closed":
            return {}
        for key, period in zip(hold.keys, hold.periods, strict=True):
            if period > now:  # a period that has ended has nothing left to protect
                self._commit(key, actual, period, now)
        self._close(reservation_id, hold, now)
        levels = {key: self._live_level(key, now) for key in hold.keys}
        return {key: level.committed for key, level in levels.items() if level is not None}

    async def release(self, reservation_id: str) -> None:
        now = self._now()
        hold = self._holds.get(reservation_id)
        if hold is not None and hold.state != "closed":
            self._close(reservation_id, hold, now)

    async def level(self, key: str) -> tuple[float, float]:
        level = self._live_level(key, self._now())
        return (0.0, 0.0) if level is None else (level.committed, level.held)

    async def restore(self, key: str, committed: float, ttl: float, *, if_absent: bool = False) -> bool:
        if not ttl > 0:
            raise ValueError("restore takes a ttl > 0")
        now = self._now()
        level = self._live_level(key, now)
        if level is not None and if_absent:
            return False
        level = level or self._levels.setdefault(key, _Level())
        level.committed, level.until, level.kept = committed, now + ttl, True
        self._level_deadlines.schedule(key, level.until)
        return True

    # The three steps of `reserve`, synchronous so that `MemoryWindowCounters.admit` (in this module)
    # can run them inside its own atomic step: a hold it takes is then exactly one `reserve` would take.

    def _begin_hold(self, reservation_id: str) -> float:
        """This store's time now (what is due purged); `ValueError` when `reservation_id` is known."""
        now = self._now()
        if reservation_id in self._holds:
            raise ValueError(f"reservation {reservation_id!r} already exists")
        return now

    def _bounds(self, ceilings: Sequence[Ceiling], amount: float, now: float) -> list[_Bound]:
        """Each ceiling as `_judge` sees it, with `amount` to hold on top of committed + held."""
        return [
            _Bound(c.key, c.limit, self._used(c.key, now), amount, partial(self._wait, c, now, amount))
            for c in ceilings
        ]

    def _take(
        self, reservation_id: str, ceilings: Sequence[Ceiling], amount: float, ttl: float, now: float
    ) -> None:
        """Hold `amount` on every ceiling (once per key, for its longest period), lapsing after `ttl`."""
        periods = _longest_by_key([(c.key, now + c.ttl) for c in ceilings])
        self._holds[reservation_id] = _Hold(tuple(periods), amount, now + ttl, tuple(periods.values()))
        self._hold_deadlines.schedule(reservation_id, now + ttl)
        for key, period in periods.items():
            level = self._levels.setdefault(key, _Level())
            level.until = max(level.until, period)
            level.holds.add(reservation_id)
            level.held += amount
            self._level_deadlines.schedule(key, level.until)

    def _now(self) -> float:
        now = self._clock()
        for reservation_id in self._hold_deadlines.pop_due(now):
            hold = self._holds.get(reservation_id)
            if hold is None:
                continue
            if hold.state == "open" and hold.expires <= now:
                self._unhold(reservation_id, hold, now)
                hold.state = "lapsed"
            if hold.forget_at <= now:
                del self._holds[reservation_id]
            else:
                self._hold_deadlines.schedule(reservation_id, hold.forget_at)
        for key in self._level_deadlines.pop_due(now):
            level = self._levels.get(key)
            if level is not None and level.until > now:
                self._level_deadlines.schedule(key, level.until)
            else:
                self._live_level(key, now)
        return now

    def _live_level(self, key: str, now: float) -> _Level | None:
        """The ceiling's level with an ended period's spend cleared; `None` once nothing is left."""
        level = self._levels.get(key)
        if level is None:
            return None
        ended = level.until <= now
        if ended:
            level.committed = 0.0
        if not level.holds and level.committed == 0 and (ended or not level.kept):
            del self._levels[key]  # nothing held, nothing spent, nothing known: the same as no level
            return None
        return level

    def _used(self, key: str, now: float) -> float:
        level = self._live_level(key, now)
        return 0.0 if level is None else level.committed + level.held

    def _wait(self, ceiling: Ceiling, now: float, amount: float) -> float:
        level = self._live_level(ceiling.key, now)
        if level is None:
            return ceiling.ttl  # the amount alone is over the limit
        lifetime = level.until - now if level.until > now else ceiling.ttl
        held = level.held
        if within_limit(level.committed + amount, ceiling.limit):
            # the holds are in the way: most settle sooner, but they expire by then at the latest
            for hold in sorted((self._holds[i] for i in level.holds), key=lambda h: h.expires):
                held -= hold.amount
                if within_limit(level.committed + held + amount, ceiling.limit):
                    return hold.expires - now
        return lifetime

    def _commit(self, key: str, actual: float, period: float, now: float) -> None:
        level = self._live_level(key, now) or self._levels.setdefault(key, _Level())
        level.committed += actual
        level.until = max(level.until, period)
        self._level_deadlines.schedule(key, level.until)

    def _unhold(self, reservation_id: str, hold: _Hold, now: float) -> None:
        for key in hold.keys:
            level = self._levels[key]
            level.holds.discard(reservation_id)
            level.held = level.held - hold.amount if level.holds else 0.0
            self._live_level(key, now)

    def _close(self, reservation_id: str, hold: _Hold, now: float) -> None:
        if hold.state == "open":
            self._unhold(reservation_id, hold, now)
        hold.state = "closed"
        if hold.forget_at <= now:  # settled after it lapsed: no longer needed to refuse a second reserve
            del self._holds[reservation_id]


class MemoryCache:
    """Bytes by key with a TTL, bounded to `max_bytes` of values: the least recently used go first."""

    def __init__(self, clock: Clock = time.monotonic, max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> None:
        self._clock = clock
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._deadlines = _Deadlines()

    def __len__(self) -> int:
        """Keys stored, including expired ones that no operation has passed by yet."""
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        now = self._now()
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError("set takes a ttl > 0")
        now = self._now()
        self._drop(key)
        if len(value) > self._max_bytes:
            return  # storing it would evict everything else and still not fit
        self._entries[key] = (value, now + ttl)
        self._bytes += len(value)
        self._deadlines.schedule(key, now + ttl)
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    async def delete(self, key: str) -> None:
        self._now()
        self._drop(key)

    def _now(self) -> float:
        now = self._clock()
        for key in self._deadlines.pop_due(now):
            entry = self._entries.get(key)
            if entry is not None and entry[1] > now:
                self._deadlines.schedule(key, entry[1])
            else:
                self._drop(key)
        return now

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[0])


class MemoryLedger:
    """Spend entries by request id, kept in process memory: lost on exit, so production keeps spend in SQL."""

    def __init__(self) -> None:
        self._entries: dict[str, SpendEntry] = {}

    async def append(self, entry: SpendEntry) -> bool:
        if entry.request_id in self._entries:
            return False
        self._entries[entry.request_id] = entry
        return True

    async def entries(self, *, since: datetime | None = None) -> list[SpendEntry]:
        if since is not None and since.utcoffset() is None:
            raise ValueError("since must be timezone-aware")
        kept = [e for e in self._entries.values() if since is None or e.at >= since]
        return sorted(kept, key=lambda e: e.at)


async def open_memory_state(
    url: str, *, clock: Clock = time.monotonic, cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
) -> SharedState:
    """The in-process stores for `memory://`; `clock` is injectable so tests need not sleep."""
    parts = urlsplit(url)
    if parts.scheme != "memory" or parts.netloc or parts.path or parts.query or parts.fragment:
        raise ConfigError([("shared_state", "the in-process backend is written exactly 'memory://'")])

    async def close() -> None:
        """Nothing to release: the state goes with the process."""

    return SharedState(
        counters=MemoryWindowCounters(clock),
        reservations=MemoryReservations(clock),
        cache=MemoryCache(clock, cache_max_bytes),
        ledger=MemoryLedger(),
        close=close,
    )
