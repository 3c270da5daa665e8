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
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import partial
from typing import TYPE_CHECKING, Literal, Protocol

from ferryman.core.canonical import ChatRequest, Usage
from ferryman.core.estimate import estimate_input_tokens
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
        timezone: tzinfo = UTC,
        thresholds: Sequence[float] = (0.8, 1.0),
        hold_ttl: float = 900.0,
        on_alert: Callable[[BudgetAlert], None] = lambda alert: None,
        on_level: Callable[[Budget, float], None] = lambda budget, ratio: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        record: SpendRecord | None = None,
    ) -> None:
        """`record` is the ledger lost levels are rebuilt from; without one (tests, a gateway keeping no
        ledger) a level the shared state does not hold counts as zero."""
        self._reservations = reservations
        self._router = router
        self._global = global_budget
        self._end_user = end_user_budget
        self._tz = timezone
        self._thresholds = tuple(sorted(thresholds))
        self._hold_ttl = hold_ttl
        self._on_alert = on_alert
        self._on_level = on_level
        self._clock = clock
        self._record = record
        self._rebuilding: dict[str, asyncio.Future[None]] = {}  # window key -> its rebuild in flight

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
            candidates.append(("end_user", ident, caller.end_user, spender, self._end_user))
        candidates.append(("global", "all", "gateway", (None, None, None), self._global))
        budgets = []
        for scope, ident, name, (key_id, team_id, end_user), (daily, monthly) in candidates:
            if daily is not None:
                budgets.append(Budget(scope, ident, name, "daily", daily, key_id, team_id, end_user))
            if monthly is not None:
                budgets.append(Budget(scope, ident, name, "monthly", monthly, key_id, team_id, end_user))
        return budgets

    async def enter(self, exchange: Exchange) -> Answer | None:
        """Reserve the worst case on every budget, or refuse before any upstream is called."""
        budgets = self.budgets(exchange)
        if not budgets:
            return None
        now = self._clock()
        worst = self.worst_case(exchange)
        keys = tuple(self.window_key(budget, now) for budget in budgets)
        restorable = self._record is not None
        ceilings = [
            Ceiling(key, budget.limit, self._lifetime(budget, now), restorable=restorable)
            for key, budget in zip(keys, budgets, strict=True)
        ]
        reservation_id = f"budget-{uuid.uuid4().hex}"
        admission = await self._reserve(reservation_id, budgets, ceilings, worst, now)
        if not admission.allowed:
            budget = (
                budgets[keys.index(admission.refused_key)] if admission.refused_key in keys else budgets[0]
            )
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
            await self._reservations.settle(hold.reservation_id, spent)
            if spent > 0:
                await self._announce(hold)
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
        priciest deployment of its model (a fallback may serve it)."""
        request = exchange.request
        assert request is not None  # noqa: S101 - admitted before the pipeline runs
        prices = [target.price for target in self._router.targets(exchange.model)]
        if any(price is None for price in prices):
            raise PermissionDeniedError(
                f"Model {exchange.model!r} has no price, so no budget can cover it; "
                "set a price for its deployments.",
                param="model",
                code="model_unpriced",
            )
        input_tokens = estimate_input_tokens(request)
        worst = 0.0
        for price in prices:
            assert price is not None  # noqa: S101 - checked above
            if isinstance(request, ChatRequest):
                output = request.max_tokens or price.max_output_tokens or DEFAULT_OUTPUT_TOKENS
            else:
                output = 0
            worst = max(worst, price.cost(Usage(input_tokens=input_tokens, output_tokens=output)))
        return worst

    async def _announce(self, hold: _Hold) -> None:
        now = self._clock()
        for budget, key in zip(hold.budgets, hold.keys, strict=True):
            if budget.limit <= 0:
                continue
            committed, _held = await self._reservations.level(key)
            self._on_level(budget, committed / budget.limit)
            for threshold in self._thresholds:
                if not within_limit(threshold * budget.limit, committed):
                    break
                flag, claim_id = f"alert:{key}:{threshold:g}", f"alert-{uuid.uuid4().hex}"
                resets_at = self.resets_at(budget.period, now)
                ttl = (resets_at - now + GRACE).total_seconds()
                claim = await self._reservations.reserve(claim_id, [Ceiling(flag, 1, ttl)], 1, self._hold_ttl)
                if claim.allowed:  # this replica holds the flag: it alone announces the crossing
                    await self._reservations.settle(claim_id, 1)  # committed: claimed for the window
                    self._on_alert(BudgetAlert(budget, threshold, committed, resets_at))

    def window_key(self, budget: Budget, now: datetime) -> str:
        """The shared-state key of `budget`'s window containing `now`."""
        local = now.astimezone(self._tz)
        window = local.strftime("%Y-%m-%d") if budget.period == "daily" else local.strftime("%Y-%m")
        return f"budget:{budget.scope}:{budget.id}:{budget.period}:{window}"

    def window_start(self, period: Period, now: datetime) -> datetime:
        """When the window containing `now` began, in UTC."""
        local = now.astimezone(self._tz).replace(hour=0, minute=0, second=0, microsecond=0)
        return (local if period == "daily" else local.replace(day=1)).astimezone(UTC)

    def resets_at(self, period: Period, now: datetime) -> datetime:
        """When the window containing `now` ends, in UTC (calendar days and months of the time zone)."""
        local = now.astimezone(self._tz)
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if period == "daily":
            end = start + timedelta(days=1)
        else:
            start = start.replace(day=1)
            end = (start + timedelta(days=32)).replace(day=1)
        return end.astimezone(UTC)
