"""Budgets as a pipeline stage: reserve the worst case before the call, settle to the real cost after.

Peers check a budget before a request and add the cost after it, so concurrent requests overshoot.
Here each request first reserves its worst-case cost — the prompt's estimate plus `max_tokens` (or the
model's longest answer) at the priciest deployment that may serve it — against every budget that
applies (key, team, end user, gateway; daily and monthly), all or nothing, through the core's
`Reservations`. Admitted spend can then never pass a budget, however many replicas race. On exit the
hold is settled to the provider's real cost and the rest released; a crashed replica's hold expires
by itself. Crossing an alert threshold (80 % and 100 % by default) is announced once per budget and
window, fleet-wide: the first replica to claim the alert's flag (itself a one-unit reservation) sends it.

The shared state is a cache of the truth, the spend ledger (`SpendRecord`). A budget's level that the
shared state does not hold — Redis flushed or failed over without its data, the embedded gateway
restarted, or simply a window's first request — is unknown, not zero: the reservation answers so, the
stage reads the window's spend from the ledger, restores the level unless another request or replica
restored it first, and reserves again. That is one ledger read per budget and window (per process at
most, often per fleet), none on the hot path afterwards; a ledger that cannot be read refuses the
request (503 `budget_unavailable`) rather than admit against a guess. A rebuilt level counts what the
ledger had received when it was read: spend that only the lost state knew — a Redis stream entry not yet
fed into SQL when Redis lost it, a request in flight across the loss — is missed, and only then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import partial
from typing import TYPE_CHECKING, Literal, Protocol

from ferryman.core._ids import unique_id
from ferryman.core.caller import Limits
from ferryman.core.canonical import ChatRequest, Usage
from ferryman.core.estimate import InputEstimates
from ferryman.core.exchange import Exchange
from ferryman.core.routing import Router
from ferryman.core.shared_state import Admission, Ceiling, Reservations, within_limit
from ferryman.errors import (
    FerrymanError,
    PermissionDeniedError,
    RateLimitError,
    SharedStateUnavailableError,
    StoreUnavailableError,
)

if TYPE_CHECKING:
    from ferryman.core.pipeline import Answer, Outcome

log = logging.getLogger("ferryman.budgets")
Period = Literal["daily", "monthly"]
GRACE = timedelta(days=2)  # a window's total outlives its end a little, for reports and late settles
DEFAULT_OUTPUT_TOKENS = 4096  # reserved for when neither the client nor the price names a maximum
REBUILD_ROUNDS = 3  # reservations tried while levels are rebuilt; more means the state keeps losing them
_Spender = tuple[str | None, str | None, str | None]  # a budget's key_id, team_id, end_user


@dataclass(frozen=True, slots=True)
class Budget:
    """A cap in USD on one scope for one window; `limit` None is no cap.

    `key_id`, `team_id` and `end_user` say whose spend counts against it, as the ledger records spend
    (None: not narrowed by that field, so the gateway's budget counts everyone's)."""

    scope: str  # key | team | end_user | global
    id: str
    name: str  # for people: the key's alias, the team id, the end user
    period: Period
    limit: float
    key_id: str | None = None
    team_id: str | None = None
    end_user: str | None = None


class SpendRecord(Protocol):
    """The durable record of spend (the ledger) that a budget's lost level is rebuilt from."""

    async def spent_since(self, budget: Budget, since: datetime) -> float:
        """USD recorded for `budget`'s spender at or after `since` (tz-aware).

        Raises `StoreUnavailableError` when the record cannot be read: the stage then refuses.
        """
        ...


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A budget crossed `threshold` of its limit in the window that ends at `resets_at`."""

    budget: Budget
    threshold: float
    spent: float
    resets_at: datetime


class BudgetExceededError(RateLimitError):
    """429 `insufficient_quota` / `budget_exceeded`: the request's worst case does not fit a budget.

    The type is the one OpenAI uses for an exhausted quota, so its SDKs raise what callers already
    handle; waiting for the window to reset is the only cure, hence no SDK retries (`x-should-retry`)."""

    type = "insufficient_quota"
    worth_retrying = False

    def __init__(self, budget: Budget, resets_at: datetime, now: datetime) -> None:
        super().__init__(
            f"Budget exceeded: the {budget.period} budget of {budget.scope} {budget.name!r} "
            f"(${budget.limit:g}) cannot cover this request; it resets at {resets_at.isoformat()}.",
            retry_after=max((resets_at - now).total_seconds(), 1.0),
            code="budget_exceeded",
        )
        self.budget = budget
        self.resets_at = resets_at


class BudgetUnavailableError(FerrymanError):
    """503 `budget_unavailable`: a budget's spend is not in the shared state and the ledger it is rebuilt
    from cannot be read. Budgets are money: admitting against a guessed zero could spend one twice."""

    status = 503
    type = "api_error"
    code = "budget_unavailable"


@dataclass(frozen=True, slots=True)
class _Hold:
    reservation_id: str
    budgets: tuple[Budget, ...]
    keys: tuple[str, ...]
    worst_case: float


class Budgets:
    """The stage; see the module docstring."""

    name = "budgets"

    def __init__(
        self,
        reservations: Reservations,
        router: Router,
        *,
        global_budget: tuple[float | None, float | None] = (None, None),
        end_user_budget: tuple[float | None, float | None] = (None, None),
        end_user_budgets: Mapping[str, tuple[float | None, float | None]] | None = None,
        timezone: tzinfo = UTC,
        thresholds: Sequence[float] = (0.8, 1.0),
        hold_ttl: float = 900.0,
        on_alert: Callable[[BudgetAlert], None] = lambda alert: None,
        on_level: Callable[[Budget, float], None] = lambda budget, ratio: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        record: SpendRecord | None = None,
        estimates: InputEstimates | None = None,
    ) -> None:
        """`record` is the ledger lost levels are rebuilt from; without one (tests, a gateway keeping no
        ledger) a level the shared state does not hold counts as zero. `estimates` counts the prompt
        as each deployment's model does (default: the characters rule)."""
        self._estimates = estimates or InputEstimates()
        self._reservations = reservations
        self._router = router
        self._global = global_budget
        self._end_user = end_user_budget
        self._end_users = dict(end_user_budgets or {})
        self._tz = timezone
        self._thresholds = tuple(sorted(thresholds))
        self._hold_ttl = hold_ttl
        self._on_alert = on_alert
        self._on_level = on_level
        self._clock = clock
        self._record = record
        self._rebuilding: dict[str, asyncio.Future[None]] = {}  # window key -> its rebuild in flight
        self._claimed: dict[str, datetime] = {}  # alert flags known taken (by anyone) -> their window's end
        self._spans: dict[Period, _Span] = {}  # the current window of each period

    @property
    def reservations(self) -> Reservations:
        """Where this stage holds and commits: where a budget's level is read (`GET /v1/usage`)."""
        return self._reservations

    def budgets(self, exchange: Exchange) -> list[Budget]:
        """Every budget with a limit that applies to `exchange`."""
        caller = exchange.caller
        who = caller.key_id or caller.key_alias
        key = caller.key_limits
        candidates: list[tuple[str, str, str, _Spender, tuple[float | None, float | None]]] = [
            (
                "key",
                who,
                caller.key_alias,
                (caller.key_id, None, None),
                (key.daily_budget_usd, key.monthly_budget_usd),
            )
        ]
        if caller.team_id is not None and caller.team_limits is not None:
            team = caller.team_limits
            limits = (team.daily_budget_usd, team.monthly_budget_usd)
            candidates.append(("team", caller.team_id, caller.team_id, (None, caller.team_id, None), limits))
        if caller.end_user is not None:
            ident, spender = f"{who}/{caller.end_user}", (caller.key_id, None, caller.end_user)
            limits = self._end_user_budget(caller.end_user, caller.key_limits, caller.team_limits)
            candidates.append(("end_user", ident, caller.end_user, spender, limits))
        candidates.append(("global", "all", "gateway", (None, None, None), self._global))
        budgets = []
        for scope, ident, name, (key_id, team_id, end_user), (daily, monthly) in candidates:
            if daily is not None:
                budgets.append(Budget(scope, ident, name, "daily", daily, key_id, team_id, end_user))
            if monthly is not None:
                budgets.append(Budget(scope, ident, name, "monthly", monthly, key_id, team_id, end_user))
        return budgets

    def _end_user_budget(
        self, end_user: str, key: Limits, team: Limits | None
    ) -> tuple[float | None, float | None]:
        """The end user's (daily, monthly) caps: their own on the key, else their own in the gateway's
        config (`budgets.end_users`), else the key's default, else the team's, else the gateway's.

        The most specific level that sets one wins whole, both windows: a VIP's own daily cap is not
        also held to a default's monthly one, and an own budget of no caps exempts the end user.
        Whichever level sets it, it is the one budget of this (key, end user) — one window, one ledger
        filter — so a changed default never forks the spend into a second counter; a team's default
        therefore caps each end user per key of the team, as end-user ids belong to the application
        (the key) that names them."""
        own = key.end_user_budgets.get(end_user)
        if own is not None:
            return own
        named = self._end_users.get(end_user)  # the gateway's explicit budget of this end user
        if named is not None:
            return named
        for limits in (key, team):
            if limits is None:
                continue
            default = (limits.end_user_daily_budget_usd, limits.end_user_monthly_budget_usd)
            if default != (None, None):
                return default
        return self._end_user

    async def enter(self, exchange: Exchange) -> Answer | None:
        """Reserve the worst case on every budget, or refuse before any upstream is called."""
        budgets = self.budgets(exchange)
        if not budgets or not exchange.billed:
            return None  # nothing applies, or nothing to pay: a token count fits even a spent budget
        now = self._clock()
        worst = self.worst_case(exchange)
        keys = tuple(self.window_key(budget, now) for budget in budgets)
        restorable = self._record is not None
        ceilings = [
            Ceiling(key, budget.limit, self._lifetime(budget, now), restorable=restorable)
            for key, budget in zip(keys, budgets, strict=True)
        ]
        reservation_id = unique_id("budget")
        admission = await self._reserve(reservation_id, budgets, ceilings, worst, now)
        if not admission.allowed:
            index = keys.index(admission.refused_key) if admission.refused_key in keys else 0
            budget = budgets[index]
            await self._announce_refusal(budget, keys[index], now)
            raise BudgetExceededError(budget, self.resets_at(budget.period, now), now)
        exchange.notes[self.name] = _Hold(reservation_id, tuple(budgets), keys, worst)
        return None

    async def _reserve(
        self,
        reservation_id: str,
        budgets: Sequence[Budget],
        ceilings: Sequence[Ceiling],
        amount: float,
        now: datetime,
    ) -> Admission:
        """`reserve`, rebuilding from the ledger first each level the shared state does not hold."""
        for _ in range(REBUILD_ROUNDS):
            admission = await self._reservations.reserve(reservation_id, ceilings, amount, self._hold_ttl)
            if not admission.unknown:
                return admission
            by_key = {
                ceiling.key: (budget, ceiling) for budget, ceiling in zip(budgets, ceilings, strict=True)
            }
            await asyncio.gather(*(self._rebuild(*by_key[key], now) for key in admission.unknown))
        raise BudgetUnavailableError(
            "Budget counters keep vanishing from the shared state as they are rebuilt; retry shortly."
        )

    async def _rebuild(self, budget: Budget, ceiling: Ceiling, now: datetime) -> None:
        """Restore `ceiling`'s level from the ledger, one read per level at a time in this process: the
        burst at a window's start waits for the first request's read instead of repeating it."""
        rebuilding = self._rebuilding.get(ceiling.key)
        if rebuilding is None:
            rebuilding = asyncio.ensure_future(self._restore(budget, ceiling, now))
            self._rebuilding[ceiling.key] = rebuilding
            rebuilding.add_done_callback(partial(self._rebuilt, ceiling.key))
        await asyncio.shield(rebuilding)  # a waiter that goes away does not cancel the others' read

    def _rebuilt(self, key: str, rebuilding: asyncio.Future[None]) -> None:
        del self._rebuilding[key]
        if not rebuilding.cancelled():
            rebuilding.exception()  # retrieved here too: every waiter may have gone before it ended

    async def _restore(self, budget: Budget, ceiling: Ceiling, now: datetime) -> None:
        """The window's spend from the ledger into the level, unless a level appeared meanwhile: one
        that exists already counts every settle since, which this read may have missed."""
        assert self._record is not None  # noqa: S101 - only restorable ceilings come back unknown
        try:
            spent = await self._record.spent_since(budget, self.window_start(budget.period, now))
        except StoreUnavailableError as exc:
            raise BudgetUnavailableError(
                f"The {budget.period} budget of {budget.scope} {budget.name!r} cannot be checked: its "
                "spend is rebuilt from the ledger, which cannot be read right now; retry shortly."
            ) from exc
        await self._reservations.restore(ceiling.key, spent, ceiling.ttl, if_absent=True)

    def _lifetime(self, budget: Budget, now: datetime) -> float:
        """Seconds a window's level lives: to the window's end, plus grace."""
        return (self.resets_at(budget.period, now) - now + GRACE).total_seconds()

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        """Settle to the real cost (nothing when no upstream was called), then announce crossings."""
        hold = exchange.notes.pop(self.name, None)
        if not isinstance(hold, _Hold):
            return
        spent = exchange.cost if exchange.cost is not None else 0.0
        try:
            levels = await self._reservations.settle(hold.reservation_id, spent)
            if spent > 0:
                await self._announce(hold, levels)
        except SharedStateUnavailableError:
            # The answer stands: failing it now would bill the client for an answer it never gets, and
            # invite a retry that is billed again. The ledger has the spend; the hold, worth at least
            # as much, keeps it out of the budget until it lapses after `hold_ttl`.
            log.error(
                "budget settle failed (shared state unreachable): $%.6g is held until the hold lapses,"
                " then missing from the budget's level until its window ends; the ledger has it",
                spent,
            )

    def worst_case(self, exchange: Exchange) -> float:
        """The most this request may cost: estimated input plus the longest allowed answer, at the
        deployment of its model where that costs most (a fallback may serve it). Each deployment's
        input is counted by its own model's tokenizer: the cheapest rate may meet the highest count."""
        request = exchange.request
        assert request is not None  # noqa: S101 - admitted before the pipeline runs
        targets = self._router.targets(exchange.model)
        if any(target.price is None for target in targets):
            raise PermissionDeniedError(
                f"Model {exchange.model!r} has no price, so no budget can cover it; "
                "set a price for its deployments.",
                param="model",
                code="model_unpriced",
            )
        worst = 0.0
        for target in targets:
            price = target.price
            assert price is not None  # noqa: S101 - checked above
            if isinstance(request, ChatRequest):
                output = request.max_tokens or price.max_output_tokens or DEFAULT_OUTPUT_TOKENS
            else:
                output = 0
            input_tokens = self._estimates.for_target(exchange, target)
            worst = max(worst, price.cost(Usage(input_tokens=input_tokens, output_tokens=output)))
        return worst

    async def _announce(self, hold: _Hold, levels: Mapping[str, float]) -> None:
        """Report each budget's level and claim the thresholds it has crossed; the levels come from the
        settle itself, so a level is read separately only when the settle could not report it."""
        now = self._clock()
        for budget, key in zip(hold.budgets, hold.keys, strict=True):
            if budget.limit <= 0:
                continue
            committed = levels.get(key)
            if committed is None:
                committed, _held = await self._reservations.level(key)
            self._on_level(budget, committed / budget.limit)
            for threshold in self._thresholds:
                if not within_limit(threshold * budget.limit, committed):
                    break
                await self._claim(budget, key, threshold, committed, now)

    async def _announce_refusal(self, budget: Budget, key: str, now: datetime) -> None:
        """A refusal announces the highest threshold (100 % by default) if nothing has yet.

        Admission reserves the worst case, so a budget refuses before its spend reaches the limit, and
        a threshold at 100 % would almost never be crossed by spend alone: the refusal is what tells
        the owner the budget is used up. The figure reported is what is spent or held by requests in
        flight, the part of the budget no new request can have. Alerting must never change the answer,
        so a shared state that fails here is logged, and the refusal stands.
        """
        if budget.limit <= 0 or not self._thresholds:
            return
        threshold = self._thresholds[-1]
        if _flag(key, threshold) in self._claimed:
            return
        try:
            committed, held = await self._reservations.level(key)  # held: requests still in flight
            await self._claim(budget, key, threshold, committed + held, now)
        except SharedStateUnavailableError:
            log.warning("budget alert on refusal skipped: shared state unreachable")

    async def _claim(self, budget: Budget, key: str, threshold: float, spent: float, now: datetime) -> None:
        """Claim the fleet-wide flag of `threshold` on `key`'s window; the claimant alone alerts. A flag
        known taken is not asked for again in this process (one round trip saved per request)."""
        flag = _flag(key, threshold)
        if flag in self._claimed:
            return
        resets_at = self.resets_at(budget.period, now)
        claim_id = unique_id("alert")
        ceiling = Ceiling(flag, 1, self._lifetime(budget, now))
        claim = await self._reservations.reserve(claim_id, [ceiling], 1, self._hold_ttl)
        if claim.allowed:  # this replica holds the flag: it alone announces the crossing
            await self._reservations.settle(claim_id, 1)  # committed: claimed for the window
            self._on_alert(BudgetAlert(budget, threshold, spent, resets_at))
        self._remember_claimed(flag, resets_at, now)

    def _remember_claimed(self, flag: str, resets_at: datetime, now: datetime) -> None:
        if len(self._claimed) > 10_000:  # windows that ended: forget them (a flag names its window)
            self._claimed = {f: end for f, end in self._claimed.items() if end > now}
        self._claimed[flag] = resets_at

    def window_key(self, budget: Budget, now: datetime) -> str:
        """The shared-state key of `budget`'s window containing `now`."""
        return f"budget:{budget.scope}:{budget.id}:{budget.period}:{self._span(budget.period, now).label}"

    def window_start(self, period: Period, now: datetime) -> datetime:
        """When the window containing `now` began, in UTC."""
        return self._span(period, now).start

    def resets_at(self, period: Period, now: datetime) -> datetime:
        """When the window containing `now` ends, in UTC (calendar days and months of the time zone)."""
        return self._span(period, now).end

    def _span(self, period: Period, now: datetime) -> _Span:
        """The window of `period` containing `now`, worked out once per window rather than per request
        (time-zone conversion and formatting cost more than the rest of a budget's bookkeeping)."""
        span = self._spans.get(period)
        if span is None or not span.start <= now < span.end:
            span = self._spans[period] = _calendar_span(period, now, self._tz)
        return span


@dataclass(frozen=True, slots=True)
class _Span:
    """One daily or monthly window: its label in shared-state keys, and its bounds in UTC."""

    label: str
    start: datetime
    end: datetime


def _calendar_span(period: Period, now: datetime, tz: tzinfo) -> _Span:
    """The calendar day or month of `tz` containing `now`."""
    local = now.astimezone(tz)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        label, end = local.strftime("%Y-%m-%d"), start + timedelta(days=1)
    else:
        start = start.replace(day=1)
        label, end = local.strftime("%Y-%m"), (start + timedelta(days=32)).replace(day=1)
    return _Span(label, start.astimezone(UTC), end.astimezone(UTC))


def _flag(key: str, threshold: float) -> str:
    """The shared-state key of the fleet-wide flag for `threshold` on the budget window `key`."""
    return f"alert:{key}:{threshold:g}"
