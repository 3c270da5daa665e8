"""Rate limits as a pipeline stage: requests and tokens per minute and concurrent requests, per scope.

Every scope that applies to a request — its key, its team, its end user, its model, the gateway as a
whole — is checked together, all or nothing, through the core's shared-state interfaces, so the limits
hold across replicas exactly when the state is shared (Redis) and in one process when it is not. Tokens
per minute reserve the prompt's estimate up front and are settled to the provider's count on exit; a
concurrency slot is a reservation released on exit, and one held by a replica that died expires by
itself after `slot_ttl`. Deployment quotas are not a stage: they are `DeploymentQuotas`, consulted by the
attempt loop before each attempt, so a deployment at its limit is skipped rather than provoked into a 429.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ferryman.core.caller import Limits
from ferryman.core.estimate import estimate_input_tokens
from ferryman.core.exchange import Exchange
from ferryman.core.routing import Target
from ferryman.core.shared_state import Admission, Ceiling, Reservations, Window, WindowCounters
from ferryman.errors import RateLimitError

if TYPE_CHECKING:  # the pipeline imports the attempt loop, which imports this module
    from ferryman.core.pipeline import Answer, Outcome

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


class LimitExceededError(RateLimitError):
    """429: the named scope's limit is reached; `scope` labels `ai_api_rate_limited_total`."""

    def __init__(self, message: str, *, retry_after: float, scope: str) -> None:
        super().__init__(message, retry_after=retry_after, code="rate_limit_exceeded")
        self.scope = scope


@dataclass(slots=True)
class _Held:
    """What a request took, to give back or settle on exit."""

    slot_id: str | None
    tpm_windows: list[Window]
    estimate: int
    scopes: list[Scope] = field(default_factory=list)


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
    ) -> None:
        self._counters = counters
        self._slots = slots
        self._global = global_quota or Quota()
        self._end_user = end_user_quota or Quota()
        self._models = dict(model_quotas or {})
        self._slot_ttl = slot_ttl

    def scopes(self, exchange: Exchange) -> list[Scope]:
        """Every scope with a limit that applies to `exchange`, narrowest first."""
        caller = exchange.caller
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
        """Take a slot, count the request and reserve its estimated tokens, or refuse with 429."""
        scopes = self.scopes(exchange)
        if not scopes:
            return None
        assert exchange.request is not None  # noqa: S101 - the api admitted it before the pipeline
        estimate = estimate_input_tokens(exchange.request)
        slot_id = await self._take_slots(scopes)
        rpm = [Window(f"rpm:{s.kind}:{s.id}", s.quota.rpm, MINUTE) for s in scopes if s.quota.rpm]
        tpm = [Window(f"tpm:{s.kind}:{s.id}", s.quota.tpm, MINUTE) for s in scopes if s.quota.tpm]
        try:
            requests = await self._counters.check_and_add(rpm, 1) if rpm else None
            _refuse_unless(exchange, requests, rpm, scopes, "requests")
            try:
                tokens = await self._counters.check_and_add(tpm, estimate) if tpm else None
                _refuse_unless(exchange, tokens, tpm, scopes, "tokens")
            except BaseException:
                if requests is not None:
                    await self._counters.add(rpm, -1)  # this request was never served
                raise
        except BaseException:
            if slot_id is not None:
                await self._slots.release(slot_id)
            raise
        exchange.notes[self.name] = _Held(slot_id, tpm, estimate, scopes)
        exchange.headers.update(_headers(rpm, requests, "requests") | _headers(tpm, tokens, "tokens"))
        return None

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        """Free the slot; settle the token estimate to what the provider counted (0 if never called)."""
        held = exchange.notes.pop(self.name, None)
        if not isinstance(held, _Held):
            return
        if held.slot_id is not None:
            await self._slots.release(held.slot_id)
        if held.tpm_windows:
            actual = exchange.usage.total_tokens if exchange.usage is not None else 0
            if actual != held.estimate:
                await self._counters.add(held.tpm_windows, actual - held.estimate)

    async def _take_slots(self, scopes: Sequence[Scope]) -> str | None:
        ceilings = [
            Ceiling(f"parallel:{s.kind}:{s.id}", s.quota.max_parallel, self._slot_ttl)
            for s in scopes
            if s.quota.max_parallel
        ]
        if not ceilings:
            return None
        slot_id = f"slot-{uuid.uuid4().hex}"  # never the client's request id: clients may reuse those
        admission = await self._slots.reserve(slot_id, ceilings, 1, self._slot_ttl)
        if not admission.allowed:
            scope = _scope_of(admission.refused_key, scopes)
            raise LimitExceededError(
                f"Too many concurrent requests: the {scope.kind} allows {scope.quota.max_parallel} at once.",
                retry_after=PARALLEL_RETRY_AFTER,
                scope=scope.kind,
            )
        return slot_id


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
    ) -> None:
        self._counters = counters
        self._slots = slots
        self._quotas = {name: quota for name, quota in quotas.items() if quota}
        self._slot_ttl = slot_ttl

    def limits(self, target: Target) -> bool:
        """Whether `target` has a quota at all (most do not: then no round trip is made)."""
        return target.deployment in self._quotas

    async def admit(self, exchange: Exchange, target: Target) -> QuotaGrant:
        """Take the deployment's share for this attempt, or raise `LimitExceededError` when it has no
        headroom (nothing is kept then)."""
        quota, name = self._quotas[target.deployment], target.deployment
        assert exchange.request is not None  # noqa: S101 - admitted before the attempt loop runs
        estimate = estimate_input_tokens(exchange.request)
        slot_id: str | None = None
        if quota.max_parallel:
            slot_id = f"slot-{uuid.uuid4().hex}"
            ceiling = Ceiling(f"parallel:deployment:{name}", quota.max_parallel, self._slot_ttl)
            if not (await self._slots.reserve(slot_id, [ceiling], 1, self._slot_ttl)).allowed:
                raise _deployment_full(name, PARALLEL_RETRY_AFTER)
        rpm = Window(f"rpm:deployment:{name}", quota.rpm, MINUTE) if quota.rpm else None
        tpm = Window(f"tpm:deployment:{name}", quota.tpm, MINUTE) if quota.tpm else None
        try:
            if rpm is not None:
                admission = await self._counters.check_and_add([rpm], 1)
                if not admission.allowed:
                    raise _deployment_full(name, admission.retry_after)
            if tpm is not None:
                admission = await self._counters.check_and_add([tpm], estimate)
                if not admission.allowed:
                    if rpm is not None:
                        await self._counters.add([rpm], -1)
                    raise _deployment_full(name, admission.retry_after)
        except BaseException:
            if slot_id is not None:
                await self._slots.release(slot_id)
            raise
        return QuotaGrant(slot_id, tpm, estimate)

    async def end(self, grant: QuotaGrant, tokens: int | None) -> None:
        """The attempt is over: free its slot, settle its token estimate to `tokens` (None: unknown,
        the estimate stands)."""
        if grant.slot_id is not None:
            await self._slots.release(grant.slot_id)
        if grant.tpm is not None and tokens is not None and tokens != grant.estimate:
            await self._counters.add([grant.tpm], tokens - grant.estimate)


def _deployment_full(name: str, retry_after: float) -> LimitExceededError:
    return LimitExceededError(
        f"Every deployment of this model is at its upstream quota ({name} last).",
        retry_after=retry_after,
        scope="deployment",
    )


def _quota(limits: Limits) -> Quota:
    """A key's or team's stored `Limits` as a quota."""
    return Quota(rpm=limits.rpm_limit, tpm=limits.tpm_limit, max_parallel=limits.max_parallel)


def _scope_of(key: str | None, scopes: Sequence[Scope]) -> Scope:
    for scope in scopes:
        if key is not None and key.endswith(f":{scope.kind}:{scope.id}"):
            return scope
    return scopes[0]


def _refuse_unless(
    exchange: Exchange,
    admission: Admission | None,
    windows: Sequence[Window],
    scopes: Sequence[Scope],
    unit: str,
) -> None:
    """Raise the 429 for a refused admission, with the refusing window's `x-ratelimit-*` headers."""
    if admission is None or admission.allowed:
        return
    scope = _scope_of(admission.refused_key, scopes)
    window = next((w for w in windows if w.key == admission.refused_key), windows[0])
    exchange.headers.update(
        {
            f"x-ratelimit-limit-{unit}": f"{window.limit:g}",
            f"x-ratelimit-remaining-{unit}": "0",
            f"x-ratelimit-reset-{unit}": f"{math.ceil(admission.retry_after)}s",
        }
    )
    raise LimitExceededError(
        f"Rate limit reached: the {scope.kind} allows {window.limit:g} {unit} per minute; "
        f"retry in {math.ceil(admission.retry_after)} s.",
        retry_after=admission.retry_after,
        scope=scope.kind,
    )


def _headers(windows: Sequence[Window], admission: Admission | None, unit: str) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for the tightest window (the one with the least left)."""
    if admission is None or not windows or not admission.remaining:
        return {}
    index = min(range(len(windows)), key=lambda i: admission.remaining[i])
    window = windows[index]
    return {
        f"x-ratelimit-limit-{unit}": f"{window.limit:g}",
        f"x-ratelimit-remaining-{unit}": str(max(math.floor(admission.remaining[index]), 0)),
        f"x-ratelimit-reset-{unit}": f"{window.seconds:g}s",  # a sliding window is fully clear by then
    }
