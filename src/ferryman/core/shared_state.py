"""The state gateway replicas share (rate windows, budget holds, cached answers, spend) as interfaces.

The core declares what it needs here and `ferryman.store` implements it: `store.memory` for one process
(the embedded default), a shared server for several replicas (`store.backends` picks one by URL). Every
operation that checks and then changes is atomic in every backend, because replicas racing a separate
check and add is exactly how peers overshoot their limits. Amounts are floats (requests, tokens or
dollars); durations are seconds on the backend's own clock, so replicas with skewed clocks still agree.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

LIMIT_TOLERANCE = 1e-9
"""Relative slack when comparing a total with its limit: dollar amounts such as 0.1 do not add up exactly
in binary floating point, and an amount that fits exactly must not be refused for a rounding error."""


def within_limit(total: float, limit: float) -> bool:
    """Whether `total` stays under `limit`, up to rounding; every backend compares this way."""
    return total <= limit + LIMIT_TOLERANCE * max(1.0, abs(limit))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# The values below are built per request on the hot path, so their checks test first and format the
# message only for a value that fails (an f-string argument to `_require` would be built every time).


@dataclass(frozen=True, slots=True)
class Window:
    """At most `limit` units per sliding `seconds`, counted under `key`.

    A value, not a counter, so the pipeline can build one per request (key, team, model, deployment)
    without any backend round trip. Windows that share a key share its units.
    """

    key: str
    limit: float
    seconds: float

    def __post_init__(self) -> None:
        if not (self.limit >= 0 and 0 < self.seconds < math.inf):
            _require(self.limit >= 0, f"window {self.key!r}: limit must be >= 0")
            _require(False, f"window {self.key!r}: seconds must be positive and finite")


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to an all-or-nothing check, with what a 429 and the `x-ratelimit-*` headers need.

    `retry_after` is the seconds until the refused amount could fit (0 when allowed), always finite so it
    can go into a `Retry-After` header; `refused_key` names the first window or ceiling that refused;
    `remaining` is, per window or ceiling in the order given, its limit minus what it counts after this
    call (negative when unconditional additions pushed it over).

    `unknown` names the restorable ceilings (`Ceiling.restorable`) whose level the backend does not
    hold: the answer is then neither yes nor no (not allowed, nothing held, `remaining` empty) until the
    caller restores those levels from its record and asks again.
    """

    allowed: bool
    retry_after: float = 0.0
    refused_key: str | None = None
    remaining: tuple[float, ...] = ()
    unknown: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(0 <= self.retry_after < math.inf, "retry_after must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation to take in the same atomic step as an admission's windows (see `WindowCounters.admit`).

    The fields are `Reservations.reserve`'s arguments, so the hold, once taken, is one like any other:
    released with `release`, settled with `settle`, lapsing after `ttl` seconds.
    """

    reservation_id: str
    ceilings: tuple[Ceiling, ...]
    amount: float
    ttl: float

    def __post_init__(self) -> None:
        if not (self.amount >= 0 and 0 < self.ttl < math.inf):
            _require(self.amount >= 0, f"hold {self.reservation_id!r}: amount must be >= 0")
            _require(False, f"hold {self.reservation_id!r}: ttl must be positive and finite")
        for ceiling in self.ceilings:
            if ceiling.restorable:
                raise ValueError(
                    f"hold {self.reservation_id!r}: restorable ceilings go through Reservations.reserve"
                )


def require_admissible(windows: Sequence[tuple[Window, float]]) -> None:
    """Raise `ValueError` for windows no backend can admit; every backend's `admit` checks this way.

    An amount must be >= 0 (corrections go through `add`), and windows sharing a key must carry the same
    amount: they share one counter, which is added to once.
    """
    amounts: dict[str, float] = {}
    for window, amount in windows:
        if not amount >= 0:
            raise ValueError(f"window {window.key!r}: admitted amounts are >= 0; corrections use add()")
        if amounts.setdefault(window.key, amount) != amount:
            raise ValueError(f"window {window.key!r}: windows sharing a key must admit the same amount")


class WindowCounters(Protocol):
    """Sliding-window counters for rate limits (requests, tokens, parallel requests)."""

    async def check_and_add(self, windows: Sequence[Window], amount: float) -> Admission:
        """Add `amount` to every window if each stays within its limit; otherwise add nothing.

        A refusal's `retry_after` is the time until enough old units slide out of every refusing window
        (ignoring units others add meanwhile); an amount over a window's limit can never fit, and gets
        the window's length. `amount` must be >= 0: corrections go through `add`.
        """
        ...

    async def add(self, windows: Sequence[Window], amount: float) -> None:
        """Add `amount` unconditionally: the correction once actual usage replaces an estimate.

        Negative amounts are allowed. A correction counts from the moment it is made and slides out like
        any other unit, so it may outlive the units it corrects by as long as the request took.
        """
        ...

    async def count(self, window: Window) -> float:
        """What `window` counts now."""
        ...

    async def admit(
        self,
        windows: Sequence[tuple[Window, float]],
        hold: Hold | None = None,
        *,
        holds: Reservations | None = None,
    ) -> Admission:
        """Add each window's own amount and take `hold`, all in one atomic step, or do nothing at all.

        The rate-limit stage's whole admission (requests: 1, tokens: the estimate, a concurrency slot) in
        one call: one round trip to a shared backend, and nothing to roll back by hand when one limit
        refuses. The answer is `check_and_add`'s, over the windows then the hold's ceilings in the order
        given: `refused_key` names the first that refused, `retry_after` is the longest wait among those
        that refused (each computed as `check_and_add` and `reserve` compute theirs), `remaining` has one
        entry per window, then one per ceiling.

        `holds` is the `Reservations` the hold is taken in, and is then released or settled through: it
        must be these counters' own backend (a `SharedState`'s `counters` and `reservations`, or the same
        pair behind a wrapper), because one atomic step cannot span two stores. The store is named at
        the call rather than bound when the counters are built, so the pairing the caller relies on for
        `release` is the one it states, and a backend refuses one it cannot reach in the same step
        (`ValueError`) instead of taking a hold nobody will release. `holds` is required with a `hold`,
        ignored without one. Amounts follow `require_admissible`; a hold whose id is already known raises
        `ValueError`, as `reserve` does, and adds nothing to any window.
        """
        ...

    async def finish(
        self,
        windows: Sequence[tuple[Window, float]],
        release: str | None = None,
        *,
        holds: Reservations | None = None,
        lazy: bool = False,
    ) -> None:
        """Add each window's own correction (as `add`: negative allowed, zero skipped) and release the
        hold `release` that `admit` took in `holds`, in one step.

        `lazy` says the caller does not wait for it on anyone's behalf (the stage's exit after the
        answer): a remote backend may then send it along with its next call, a few milliseconds late
        at most, rather than in a round trip of its own. An in-process one ignores it.

        The rate-limit stage's whole exit (the token estimate settled to the provider's count, the
        concurrency slot given back) in one call: one round trip to a shared backend instead of two.
        `holds` follows `admit`'s rule and is required with `release`; releasing a hold that is unknown,
        lapsed or closed does nothing, as `Reservations.release` does.
        """
        ...


@dataclass(frozen=True, slots=True)
class Ceiling:
    """A budget-like cap: committed spend plus open holds must stay within `limit`.

    `ttl` is how long the committed total lives (until the budget period ends, plus grace); the key
    should name the period (`budget:team-a:2025-06`), so a new period starts from zero by itself.

    `restorable` says the spend is also recorded elsewhere (the ledger), so a level the backend does not
    hold — a flushed Redis, a restarted process, a period nobody has spent in yet — is unknown, not
    zero: `reserve` answers with it in `Admission.unknown` and holds nothing, a settle does not recreate
    it, and once restored (`restore(..., if_absent=True)`) it lives for its period even at zero, so it
    is rebuilt once per period, not on every request. Only `reserve` takes restorable ceilings.
    """

    key: str
    limit: float
    ttl: float
    restorable: bool = False

    def __post_init__(self) -> None:
        if not (self.limit >= 0 and 0 < self.ttl < math.inf):
            _require(self.limit >= 0, f"ceiling {self.key!r}: limit must be >= 0")
            _require(False, f"ceiling {self.key!r}: ttl must be positive and finite")


class Reservations(Protocol):
    """Budgets by reservation: hold the worst case before calling upstream, settle to the truth after.

    Holds expire by themselves so a crashed request never holds budget forever. A settle that arrives
    after its hold expired still commits: the upstream was called, the spend happened, and forgetting it
    would let a budget be overspent by every slow request. It commits only to ceilings whose period has
    not ended yet.
    """

    async def reserve(
        self, reservation_id: str, ceilings: Sequence[Ceiling], amount: float, ttl: float
    ) -> Admission:
        """Hold `amount` on every ceiling if committed + held + amount fits each; otherwise hold nothing.

        The hold lapses after `ttl` seconds. A refusal's `retry_after` is when the holds in the way
        expire at the latest, or, if committed spend alone is too much, the ceiling's remaining lifetime.
        Reserving an id that is already known raises `ValueError`.
        """
        ...

    async def settle(self, reservation_id: str, actual: float) -> Mapping[str, float]:
        """Commit `actual` (which may exceed the hold) to the hold's ceilings and release the hold.

        Returns each ceiling's committed total just after, by key, so a caller watching thresholds needs
        no second round trip; a ceiling whose level is not known (lost, to be rebuilt) is left out.
        Idempotent: settling twice, or after `release`, does nothing and returns nothing (an empty
        mapping); an unknown id likewise.
        """
        ...

    async def release(self, reservation_id: str) -> None:
        """Drop the hold and commit nothing (the request never reached upstream); idempotent."""
        ...

    async def level(self, key: str) -> tuple[float, float]:
        """`(committed, held)` on the ceiling `key` now."""
        ...

    async def restore(self, key: str, committed: float, ttl: float, *, if_absent: bool = False) -> bool:
        """Set the committed total, rebuilt from the ledger after counters were lost; holds untouched.

        The level then lives for `ttl` seconds, kept even at zero. With `if_absent` it is set only where
        no level exists: a level that exists already counts every settle since it was made, which a
        total read from the ledger a moment earlier may miss, so replicas restoring at once (or a settle
        landing in between) never lose or double-count spend. True when the level was set.
        """
        ...


class Cache(Protocol):
    """Opaque bytes by key with a time to live: cached answers, shared by replicas."""

    async def get(self, key: str) -> bytes | None:
        """The value, or `None` when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds, replacing any previous one."""
        ...

    async def delete(self, key: str) -> None:
        """Forget `key`; nothing happens when it is absent."""
        ...


@dataclass(frozen=True, slots=True)
class SpendEntry:
    """One request's final cost as the ledger keeps it: the record budgets are rebuilt from.

    `cost_usd` is `None` for an unpriced model, never a silent 0; `estimated` marks usage that was
    estimated (a stream cut short) rather than reported by the provider. As in `canonical.Usage`,
    `cached_tokens` and `cache_write_tokens` are parts of `input_tokens`, `reasoning_tokens` of
    `output_tokens`; the last two default to 0, as entries recorded before they existed read.
    """

    request_id: str
    at: datetime
    model: str
    provider: str
    deployment: str
    key_id: str | None
    team_id: str | None
    end_user: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float | None
    estimated: bool = False
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        # Every request makes one, and every entry is made again where the ledger reads it back: the
        # checks run first, the messages are formatted only for an entry that fails one.
        if not (
            self.at.utcoffset() == _ZERO
            and min(
                self.input_tokens,
                self.output_tokens,
                self.cached_tokens,
                self.cache_write_tokens,
                self.reasoning_tokens,
            )
            >= 0
            and (self.cost_usd is None or self.cost_usd >= 0)
        ):
            _require(self.at.utcoffset() == _ZERO, f"spend {self.request_id!r}: `at` must be UTC")
            counts = (self.input_tokens, self.output_tokens, self.cached_tokens)
            _require(
                min(*counts, self.cache_write_tokens, self.reasoning_tokens) >= 0,
                f"spend {self.request_id!r}: token counts must be >= 0",
            )
            _require(False, f"spend {self.request_id!r}: cost must be >= 0")


_ZERO = timedelta(0)


class Ledger(Protocol):
    """The append-only record of spend, idempotent by request id so a retried write never counts twice."""

    async def append(self, entry: SpendEntry) -> bool:
        """Record `entry` durably before returning; `False` (and the first entry kept) for a duplicate."""
        ...

    async def entries(self, *, since: datetime | None = None) -> list[SpendEntry]:
        """Entries at or after `since` (tz-aware), oldest first."""
        ...


@dataclass(frozen=True, slots=True)
class SharedState:
    """One backend's four stores, opened together because they share its connections.

    `close` releases those connections; the app's lifespan calls it once, at shutdown.
    """

    counters: WindowCounters
    reservations: Reservations
    cache: Cache
    ledger: Ledger
    close: Callable[[], Awaitable[None]]
