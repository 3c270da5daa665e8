"""Budgets as a pipeline stage: reserve the worst case before the call, settle to the real cost after.

Peers check a budget before a request and add the cost after it, so concurrent requests overshoot.
Here each request first reserves its worst-case cost — the prompt's estimate plus `max_tokens` (or the
model's longest answer) at the priciest deployment that may serve it — against every budget that
applies (key, team, end user, gateway; daily and monthly), all or nothing, through the core's
`Reservations`. Admitted spend can then never pass a budget, however many replicas race. On exit the
hold is settled to the provider's real cost and the rest released; a crashed replica's hold expires
by itself. Crossing an alert threshold (80 % and 100 % by default) is announced once per budget and
window, fleet-wide: the first replica to claim the alert's flag (itself a one-unit reservation) sends it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Literal

from ferryman.core.canonical import ChatRequest, Usage
from ferryman.core.estimate import estimate_input_tokens
from ferryman.core.exchange import Exchange
from ferryman.core.routing import Router
from ferryman.core.shared_state import Ceiling, Reservations, within_limit
from ferryman.errors import PermissionDeniedError, RateLimitError

if TYPE_CHECKING:
    from ferryman.core.pipeline import Answer, Outcome

Period = Literal["daily", "monthly"]
GRACE = timedelta(days=2)  # a window's total outlives its end a little, for reports and late settles
DEFAULT_OUTPUT_TOKENS = 4096  # reserved for when neither the client nor the price names a maximum


@dataclass(frozen=True, slots=True)
class Budget:
    """A cap in USD on one scope for one window; `limit` None is no cap."""

    scope: str  # key | team | end_user | global
    id: str
    name: str  # for people: the key's alias, the team id, the end user
    period: Period
    limit: float


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
    ) -> None:
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

    def budgets(self, exchange: Exchange) -> list[Budget]:
        """Every budget with a limit that applies to `exchange`."""
        caller = exchange.caller
        who = caller.key_id or caller.key_alias
        candidates: list[tuple[str, str, str, tuple[float | None, float | None]]] = [
            (
                "key",
                who,
                caller.key_alias,
                (caller.key_limits.daily_budget_usd, caller.key_limits.monthly_budget_usd),
            )
        ]
        if caller.team_id is not None and caller.team_limits is not None:
            team = caller.team_limits
            candidates.append(
                ("team", caller.team_id, caller.team_id, (team.daily_budget_usd, team.monthly_budget_usd))
            )
        if caller.end_user is not None:
            candidates.append(("end_user", f"{who}/{caller.end_user}", caller.end_user, self._end_user))
        candidates.append(("global", "all", "gateway", self._global))
        budgets = []
        for scope, ident, name, (daily, monthly) in candidates:
            if daily is not None:
                budgets.append(Budget(scope, ident, name, "daily", daily))
            if monthly is not None:
                budgets.append(Budget(scope, ident, name, "monthly", monthly))
        return budgets

    async def enter(self, exchange: Exchange) -> Answer | None:
        """Reserve the worst case on every budget, or refuse before any upstream is called."""
        budgets = self.budgets(exchange)
        if not budgets:
            return None
        now = self._clock()
        worst = self.worst_case(exchange)
        keys = tuple(self.window_key(budget, now) for budget in budgets)
        ceilings = [
            Ceiling(key, budget.limit, (self.resets_at(budget.period, now) - now + GRACE).total_seconds())
            for key, budget in zip(keys, budgets, strict=True)
        ]
        reservation_id = f"budget-{uuid.uuid4().hex}"
        admission = await self._reservations.reserve(reservation_id, ceilings, worst, self._hold_ttl)
        if not admission.allowed:
            budget = (
                budgets[keys.index(admission.refused_key)] if admission.refused_key in keys else budgets[0]
            )
            raise BudgetExceededError(budget, self.resets_at(budget.period, now), now)
        exchange.notes[self.name] = _Hold(reservation_id, tuple(budgets), keys, worst)
        return None

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        """Settle to the real cost (nothing when no upstream was called), then announce crossings."""
        hold = exchange.notes.pop(self.name, None)
        if not isinstance(hold, _Hold):
            return
        spent = exchange.cost if exchange.cost is not None else 0.0
        await self._reservations.settle(hold.reservation_id, spent)
        if spent > 0:
            await self._announce(hold)

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
