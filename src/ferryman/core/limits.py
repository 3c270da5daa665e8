"""Rate limits as a pipeline stage: requests and tokens per minute and concurrent requests, per scope.

Every scope that applies to a request — its key, its team, its end user, its model, the gateway as a
whole — is checked together, all or nothing, in one `WindowCounters.admit` call (one Redis round trip,
one script, whatever mix of limits applies), so the limits hold across replicas exactly when the state
is shared (Redis) and in one process when it is not, and a refusal leaves nothing to roll back. Tokens
per minute reserve the prompt's estimate up front and are settled to the provider's count on exit; a
concurrency slot is a hold taken in that same call and released on exit (the settle and the release
are one `finish` call: one round trip again), and one held by a replica that died expires by itself
after `slot_ttl`. Deployment quotas are not a stage: they are
`DeploymentQuotas`, consulted by the attempt loop before each attempt (one `admit` call too), so a
deployment at its limit is skipped rather than provoked into a 429.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferryman.core._ids import unique_id
from ferryman.core._shield import Background
from ferryman.core.caller import Limits
from ferryman.core.estimate import InputEstimates
from ferryman.core.exchange import Exchange
from ferryman.core.routing import Router, Target
from ferryman.core.shared_state import (
    Admission,
    Ceiling,
    Hold,
    Reservations,
    Window,
    WindowCounters,
    within_limit,
)
from ferryman.errors import RateLimitError

if TYPE_CHECKING:  # the pipeline imports the attempt loop, which imports this module
    from ferryman.core.pipeline import Answer, Outcome
    from ferryman.core.strategies import HeadroomBook

MINUTE = 60.0
PARALLEL_RETRY_AFTER = 1.0  # a slot frees when some request ends: worth trying again soon


@dataclass(frozen=True, slots=True)
class Quota:
    """What one scope allows; `None` is unlimited on that axis."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.max_parallel))


@dataclass(frozen=True, slots=True)
class Scope:
    """One level a request is limited at: `kind` names it in errors and metrics, `id` keys its state."""

    kind: str
    id: str
    quota: Quota


_PLANS_KEPT = 10_000  # callers' plans kept (see `RateLimits._plan`); past it they start over


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a request of one caller for one model is counted in: its scopes, the requests and tokens
    windows and the concurrency ceilings among them, in the order an admission's reply follows."""

    scopes: tuple[Scope, ...]
    rpm: tuple[Window, ...]
    tpm: tuple[Window, ...]
    parallel: tuple[Ceiling, ...]


class LimitExceededError(RateLimitError):
    """429: the named scope's limit is reached; `scope` labels `ai_api_rate_limited_total`."""

    def __init__(self, message: str, *, retry_after: float, scope: str) -> None:
        super().__init__(message, retry_after=retry_after, code="rate_limit_exceeded")
        self.scope = scope


@dataclass(slots=True)
class _Held:
    """What a request took, to give back or settle on exit."""

    slot_id: str | None
    tpm_windows: Sequence[Window]
    estimate: int


class RateLimits:
    """The stage; see the module docstring. Scopes come from the caller and from config."""

    name = "rate_limits"

    def __init__(
        self,
        counters: WindowCounters,
        slots: Reservations,
        *,
        global_quota: Quota | None = None,
        end_user_quota: Quota | None = None,
        model_quotas: Mapping[str, Quota] | None = None,
        slot_ttl: float = 900.0,
        router: Router | None = None,
        estimates: InputEstimates | None = None,
        background: Background | None = None,
    ) -> None:
        """`estimates` counts the prompt by each of the model's deployments in `router` and reserves
        the highest (no deployment is chosen yet); without them, the characters rule.

        With `background`, the exit's release and correction are sent without the answer waiting for
        them (worth it when the counters are remote: a round trip off every request's latency); the
        slot is then free a moment after the answer rather than before it."""
        self._counters = counters
        self._slots = slots
        self._global = global_quota or Quota()
        self._end_user = end_user_quota or Quota()
        self._models = dict(model_quotas or {})
        self._slot_ttl = slot_ttl
        self._router = router
        self._estimates = estimates or InputEstimates()
        self._plans: dict[tuple[object, ...], _Plan] = {}
        self._background = background
        # Whether any scope the config sets has a limit: without one, a caller without limits of its
        # own (most keys of most gateways) passes without a single object built.
        self._configured = bool(self._global or self._end_user or any(self._models.values()))

    def scopes(self, exchange: Exchange) -> list[Scope]:
        """Every scope with a limit that applies to `exchange`, narrowest first."""
        caller = exchange.caller
        if not (self._configured or _limited(caller.key_limits) or _limited(caller.team_limits)):
            return []
        who = caller.key_id or caller.key_alias
        scopes = [Scope("key", who, _quota(caller.key_limits))]
        if caller.team_id is not None and caller.team_limits is not None:
            scopes.append(Scope("team", caller.team_id, _quota(caller.team_limits)))
        if caller.end_user is not None:
            scopes.append(Scope("end_user", f"{who}/{caller.end_user}", self._end_user))
        scopes.append(Scope("model", exchange.model, self._models.get(exchange.model, Quota())))
        scopes.append(Scope("global", "all", self._global))
        return [scope for scope in scopes if scope.quota]

    async def enter(self, exchange: Exchange) -> Answer | None:
        """Count the request, reserve its estimated tokens and take a slot in one call, or refuse with 429."""
        plan = self._plan(exchange)
        if plan is None:
            return None
        rpm, tpm = plan.rpm, plan.tpm
        estimate = (
            self._estimate(exchange) if tpm and exchange.billed else 0
        )  # settled only where a TPM window took it
        slot = _slot(plan.parallel, self._slot_ttl)
        windows = [(window, 1.0) for window in rpm] + [(window, float(estimate)) for window in tpm]
        admission = await self._counters.admit(windows, slot, holds=self._slots)
        if not admission.allowed:
            raise _refusal(exchange, admission, rpm, tpm, slot, plan.scopes)
        exchange.notes[self.name] = _Held(slot.reservation_id if slot else None, tpm, estimate)
        requests, tokens = admission.remaining[: len(rpm)], admission.remaining[len(rpm) : len(windows)]
        _headers(exchange.headers, rpm, requests, "requests")
        _headers(exchange.headers, tpm, tokens, "tokens")
        return None

    def _plan(self, exchange: Exchange) -> _Plan | None:
        """The request's scopes and their units (None: no limit applies), kept per caller and model:
        a key's requests would otherwise build the same scopes, windows and ceilings every time. The
        signature holds every input of `scopes`, so a key or team whose limits change gets a new plan."""
        caller = exchange.caller
        key_limits, team_limits = caller.key_limits, caller.team_limits
        if not (self._configured or _limited(key_limits) or _limited(team_limits)):
            return None
        signature = (
            caller.key_id or caller.key_alias,
            key_limits.rpm_limit,
            key_limits.tpm_limit,
            key_limits.max_parallel,
            caller.team_id,
            None
            if team_limits is None
            else (team_limits.rpm_limit, team_limits.tpm_limit, team_limits.max_parallel),
            caller.end_user,
            exchange.model,
        )
        plan = self._plans.get(signature)
        if plan is None:
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()  # many distinct keys or end users: start over, stay bounded
            plan = self._plans[signature] = self._build_plan(self.scopes(exchange))
        return plan if plan.scopes else None

    def _build_plan(self, scopes: list[Scope]) -> _Plan:
        rpm: list[Window] = []
        tpm: list[Window] = []
        parallel: list[Ceiling] = []
        for scope in scopes:
            requests, tokens, ceiling = _units(f"{scope.kind}:{scope.id}", scope.quota, self._slot_ttl)
            if requests is not None:
                rpm.append(requests)
            if tokens is not None:
                tpm.append(tokens)
            if ceiling is not None:
                parallel.append(ceiling)
        return _Plan(tuple(scopes), tuple(rpm), tuple(tpm), tuple(parallel))

    def _estimate(self, exchange: Exchange) -> int:
        """The prompt's estimate at the deployment of its model that counts it highest."""
        targets = self._router.targets(exchange.model) if self._router is not None else ()
        return self._estimates.most(exchange, targets)

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        """Free the slot; settle the token estimate to what the provider counted (0 if never called)."""
        held = exchange.notes.pop(self.name, None)
        if not isinstance(held, _Held):
            return
        corrections: list[tuple[Window, float]] = []
        if held.tpm_windows:
            actual = exchange.usage.total_tokens if exchange.usage is not None else 0
            corrections = [(window, float(actual - held.estimate)) for window in held.tpm_windows]
        if held.slot_id is not None or any(amount for _, amount in corrections):
            # one call (one round trip): the token correction and the slot's release together
            if self._background is None:
                await self._counters.finish(corrections, held.slot_id, holds=self._slots)
            else:  # nobody waits: it may ride along with the next call to the store
                finish = self._counters.finish(corrections, held.slot_id, holds=self._slots, lazy=True)
                self._background.spawn(finish, "rate-limit release")


@dataclass(frozen=True, slots=True)
class QuotaGrant:
    """What one attempt took from its deployment's quota, to give back or settle when it ends."""

    slot_id: str | None
    tpm: Window | None
    estimate: int


class DeploymentQuotas:
    """Each deployment's own upstream quota (requests and tokens per minute, concurrent requests),
    asked by the attempt loop before an attempt: a deployment without headroom is passed over."""

    def __init__(
        self,
        counters: WindowCounters,
        slots: Reservations,
        quotas: Mapping[str, Quota],
        slot_ttl: float = 900.0,
        estimates: InputEstimates | None = None,
        headroom: HeadroomBook | None = None,
    ) -> None:
        """`estimates` counts the prompt as each deployment's own model does (default: by characters);
        `headroom` hears what each admission left, for the `most_headroom` strategy."""
        self._counters = counters
        self._slots = slots
        self._quotas = {name: quota for name, quota in quotas.items() if quota}
        # Each deployment's windows and ceiling, built once: the quotas are the config's, fixed.
        self._by_deployment = {
            name: _units(f"deployment:{name}", quota, slot_ttl) for name, quota in self._quotas.items()
        }
        self._slot_ttl = slot_ttl
        self._estimates = estimates or InputEstimates()
        self._headroom = headroom

    def limits(self, target: Target) -> bool:
        """Whether `target` has a quota at all (most do not: then no round trip is made)."""
        return target.deployment in self._quotas

    async def admit(self, exchange: Exchange, target: Target) -> QuotaGrant:
        """Take the deployment's share for this attempt in one call, or raise `LimitExceededError` when
        it has no headroom (nothing is kept then)."""
        name = target.deployment
        rpm, tpm, ceiling = self._by_deployment[name]
        estimate = self._estimates.for_target(exchange, target) if tpm and exchange.billed else 0
        slot = _slot((ceiling,) if ceiling else (), self._slot_ttl)
        windows = [(window, amount) for window, amount in ((rpm, 1.0), (tpm, float(estimate))) if window]
        admission = await self._counters.admit(windows, slot, holds=self._slots)
        if self._headroom is not None and windows:
            self._headroom.note(name, _fraction_left(admission, windows))
        if not admission.allowed:
            slot_full = _full_ceiling(admission, slot, len(windows)) is not None
            raise _deployment_full(name, PARALLEL_RETRY_AFTER if slot_full else admission.retry_after)
        return QuotaGrant(slot.reservation_id if slot else None, tpm, estimate)

    async def end(self, grant: QuotaGrant, tokens: int | None) -> None:
        """The attempt is over: free its slot, settle its token estimate to `tokens` (None: unknown,
        the estimate stands)."""
        corrections: list[tuple[Window, float]] = []
        if grant.tpm is not None and tokens is not None and tokens != grant.estimate:
            corrections = [(grant.tpm, float(tokens - grant.estimate))]
        if grant.slot_id is not None or corrections:
            await self._counters.finish(corrections, grant.slot_id, holds=self._slots)


def _units(name: str, quota: Quota, slot_ttl: float) -> tuple[Window | None, Window | None, Ceiling | None]:
    """The requests window, tokens window and concurrency ceiling `quota` sets under `name` (a scope's
    `kind:id`, or `deployment:<label>`); None where it sets no limit."""
    return (
        Window(f"rpm:{name}", quota.rpm, MINUTE) if quota.rpm else None,
        Window(f"tpm:{name}", quota.tpm, MINUTE) if quota.tpm else None,
        Ceiling(f"parallel:{name}", quota.max_parallel, slot_ttl) if quota.max_parallel else None,
    )


def _fraction_left(admission: Admission, windows: Sequence[tuple[Window, float]]) -> float:
    """The fraction of its limit the tightest window has left after `admission` (0 when refused)."""
    if not admission.allowed:
        return 0.0
    fraction = 1.0
    for (window, _), left in zip(windows, admission.remaining, strict=False):
        if window.limit > 0:
            fraction = min(fraction, max(left, 0.0) / window.limit)
    return fraction


def _deployment_full(name: str, retry_after: float) -> LimitExceededError:
    return LimitExceededError(
        f"Every deployment of this model is at its upstream quota ({name} last).",
        retry_after=retry_after,
        scope="deployment",
    )


def _limited(limits: Limits | None) -> bool:
    """Whether a key's or team's stored `Limits` set any rate limit."""
    return limits is not None and (
        limits.rpm_limit is not None or limits.tpm_limit is not None or limits.max_parallel is not None
    )


def _quota(limits: Limits) -> Quota:
    """A key's or team's stored `Limits` as a quota."""
    return Quota(rpm=limits.rpm_limit, tpm=limits.tpm_limit, max_parallel=limits.max_parallel)


def _scope_of(key: str | None, scopes: Sequence[Scope]) -> Scope:
    for scope in scopes:
        if key is not None and key.endswith(f":{scope.kind}:{scope.id}"):
            return scope
    return scopes[0]


def _slot(ceilings: Sequence[Ceiling], ttl: float) -> Hold | None:
    """One concurrency slot on every ceiling, as a single hold (`None`: no concurrency limit applies)."""
    if not ceilings:
        return None
    return Hold(unique_id("slot"), tuple(ceilings), 1, ttl)


def _full_ceiling(admission: Admission, slot: Hold | None, windows: int) -> Ceiling | None:
    """The first of the slot's ceilings that refused, if any did.

    `refused_key` names only the first refusal, and windows come first. A refusal's `remaining` (after
    the `windows` entries) is what each ceiling had left, so the slot did not fit where its amount does
    not fit in that (read the same way on a `Failover`'s local share, whose limits are smaller).
    """
    if slot is None:
        return None
    for ceiling, left in zip(slot.ceilings, admission.remaining[windows:], strict=False):
        if not within_limit(slot.amount, left):
            return ceiling
    return None


def _refusal(
    exchange: Exchange,
    admission: Admission,
    rpm: Sequence[Window],
    tpm: Sequence[Window],
    slot: Hold | None,
    scopes: Sequence[Scope],
) -> LimitExceededError:
    """The 429 for a refused admission, naming the scope and unit that refused.

    A full concurrency slot is named first, with `PARALLEL_RETRY_AFTER` (a slot frees when any request
    ends, and the slot's own wait is when the holds lapse, up to `slot_ttl`); otherwise the refusing
    window, with its `x-ratelimit-*` headers and the admission's wait for every refusing window.
    """
    full = _full_ceiling(admission, slot, len(rpm) + len(tpm))
    window = next((w for w in (*rpm, *tpm) if w.key == admission.refused_key), None)
    if full is not None or window is None:  # by the contract, a key that is no window is a ceiling
        scope = _scope_of(full.key if full is not None else admission.refused_key, scopes)
        return LimitExceededError(
            f"Too many concurrent requests: the {scope.kind} allows {scope.quota.max_parallel} at once.",
            retry_after=PARALLEL_RETRY_AFTER,
            scope=scope.kind,
        )
    scope, unit = _scope_of(window.key, scopes), "requests" if window in rpm else "tokens"
    exchange.headers.update(
        {
            f"x-ratelimit-limit-{unit}": f"{window.limit:g}",
            f"x-ratelimit-remaining-{unit}": "0",
            f"x-ratelimit-reset-{unit}": f"{math.ceil(admission.retry_after)}s",
        }
    )
    return LimitExceededError(
        f"Rate limit reached: the {scope.kind} allows {window.limit:g} {unit} per minute; "
        f"retry in {math.ceil(admission.retry_after)} s.",
        retry_after=admission.retry_after,
        scope=scope.kind,
    )


def _headers(
    headers: dict[str, str], windows: Sequence[Window], remaining: Sequence[float], unit: str
) -> None:
    """OpenAI's `x-ratelimit-*` headers for the tightest window (the one with the least left), set in
    `headers`."""
    if not windows or len(remaining) != len(windows):
        return
    index = 0
    for other in range(1, len(windows)):
        if remaining[other] < remaining[index]:
            index = other
    window = windows[index]
    names = _HEADER_NAMES[unit]
    headers[names[0]] = f"{window.limit:g}"
    headers[names[1]] = str(max(math.floor(remaining[index]), 0))
    headers[names[2]] = f"{window.seconds:g}s"  # a sliding window is fully clear by then


_HEADER_NAMES = {
    unit: (f"x-ratelimit-limit-{unit}", f"x-ratelimit-remaining-{unit}", f"x-ratelimit-reset-{unit}")
    for unit in ("requests", "tokens")
}
