"""Rate limits as a stage and deployment quotas in the attempt loop, socket-free on in-memory state."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from ferryman.core._shield import Background
from ferryman.core.attempts import AttemptLoop
from ferryman.core.caller import Caller, Limits
from ferryman.core.canonical import ChatRequest, Message, TextPart, Usage
from ferryman.core.estimate import estimate_input_tokens
from ferryman.core.exchange import Exchange
from ferryman.core.failover import Failover, LimiterUnavailableError
from ferryman.core.limits import (
    MINUTE,
    PARALLEL_RETRY_AFTER,
    DeploymentQuotas,
    LimitExceededError,
    Quota,
    RateLimits,
)
from ferryman.core.pipeline import Outcome, Pipeline
from ferryman.core.routing import Router
from ferryman.core.shared_state import Admission, Ceiling, Hold, Reservations, Window, WindowCounters
from ferryman.errors import SharedStateUnavailableError
from ferryman.store.memory import MemoryReservations, MemoryWindowCounters
from ferryman.testing import Answer, ScriptedUpstream, Stream
from tests.core.conftest import RecordingObserver, target

KEY = Caller(key_alias="app", key_id="k1", key_limits=Limits(rpm_limit=3))


def exchange_for(caller: Caller = KEY, text: str = "hello there", *, stream: bool = False) -> Exchange:
    exchange = Exchange(request_id="req")
    messages = (Message(role="user", parts=(TextPart(text),)),)
    exchange.admit(caller, ChatRequest(model="m", messages=messages, stream=stream))
    return exchange


def limited_pipeline(
    upstream: ScriptedUpstream | None = None, counters: MemoryWindowCounters | None = None, **quotas: Quota
) -> tuple[Pipeline, MemoryWindowCounters]:
    counters = counters or MemoryWindowCounters()
    stage = RateLimits(
        counters,
        MemoryReservations(),
        global_quota=quotas.get("global_quota"),
        end_user_quota=quotas.get("end_user_quota"),
        model_quotas={"m": quotas["model_quota"]} if "model_quota" in quotas else None,
    )
    observer = RecordingObserver()
    router = Router({"m": [target(upstream or ScriptedUpstream())]})
    return Pipeline([stage], AttemptLoop(router, observer), observer), counters


async def test_a_key_gets_exactly_its_requests_per_minute() -> None:
    pipeline, _ = limited_pipeline()
    for remaining in ("2", "1", "0"):
        exchange = exchange_for()
        await pipeline.chat(exchange)
        assert exchange.headers["x-ratelimit-remaining-requests"] == remaining
        assert exchange.headers["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(LimitExceededError) as refused:
        await pipeline.chat(exchange_for())
    assert refused.value.status == 429 and refused.value.scope == "key"
    assert 0 < refused.value.retry_after <= MINUTE
    assert "3 requests per minute" in refused.value.message


async def test_a_keys_changed_limits_apply_from_its_next_request() -> None:
    pipeline, _ = limited_pipeline()
    for _ in range(3):
        await pipeline.chat(exchange_for())
    with pytest.raises(LimitExceededError):
        await pipeline.chat(exchange_for())
    raised = Caller(key_alias="app", key_id="k1", key_limits=Limits(rpm_limit=5))  # the admin raised it
    exchange = exchange_for(raised)
    await pipeline.chat(exchange)
    assert exchange.headers["x-ratelimit-limit-requests"] == "5"
    assert exchange.headers["x-ratelimit-remaining-requests"] == "1"  # the same window: 4 of 5 used
    teamed = Caller(
        key_alias="app",
        key_id="k1",
        key_limits=Limits(rpm_limit=50),
        team_id="t",
        team_limits=Limits(rpm_limit=1),
    )
    await pipeline.chat(exchange_for(teamed))
    with pytest.raises(LimitExceededError) as refused:
        await pipeline.chat(exchange_for(teamed))  # the team it joined allows one
    assert refused.value.scope == "team"
    unlimited = Caller(key_alias="app", key_id="k1")
    exchange = exchange_for(unlimited)
    await pipeline.chat(exchange)  # limits removed: nothing counts it any more
    assert "x-ratelimit-limit-requests" not in exchange.headers


async def test_concurrent_requests_never_pass_the_limit() -> None:
    upstream = ScriptedUpstream()
    pipeline, _ = limited_pipeline(upstream)
    results = await asyncio.gather(
        *(pipeline.chat(exchange_for()) for _ in range(20)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert all(isinstance(r, LimitExceededError) for r in results if isinstance(r, BaseException))
    assert len(upstream.calls) == 3  # a refused request never reaches the upstream


async def test_tokens_reserve_the_estimate_and_settle_to_what_the_provider_counted() -> None:
    upstream = ScriptedUpstream()
    upstream.script(Answer.text("ok", usage=Usage(input_tokens=40, output_tokens=60)))
    caller = Caller(key_alias="app", key_id="k1", key_limits=Limits(tpm_limit=1000))
    pipeline, counters = limited_pipeline(upstream)
    exchange = exchange_for(caller)
    await pipeline.chat(exchange)
    assert await counters.count(Window("tpm:key:k1", 1000, MINUTE)) == 100
    assert exchange.headers["x-ratelimit-limit-tokens"] == "1000"


async def test_a_request_over_its_token_limit_gives_back_its_request_count() -> None:
    caller = Caller(key_alias="app", key_id="k1", key_limits=Limits(rpm_limit=5, tpm_limit=10))
    pipeline, counters = limited_pipeline()
    with pytest.raises(LimitExceededError, match="tokens per minute"):
        await pipeline.chat(exchange_for(caller, "word " * 200))
    assert await counters.count(Window("rpm:key:k1", 5, MINUTE)) == 0


async def test_concurrency_slots_are_taken_and_given_back() -> None:
    upstream = ScriptedUpstream()
    upstream.script(Stream.text("a b", chunks=2), Stream.text("c d", chunks=2))
    caller = Caller(key_alias="app", key_id="k1", key_limits=Limits(max_parallel=2))
    pipeline, _ = limited_pipeline(upstream)
    first = await pipeline.stream(exchange_for(caller, stream=True))
    second = await pipeline.stream(exchange_for(caller, stream=True))
    with pytest.raises(LimitExceededError, match="2 at once"):
        await pipeline.chat(exchange_for(caller))
    [_ async for _ in first]  # the first stream ends: its slot is free again
    await pipeline.chat(exchange_for(caller))
    await second.aclose()


class GatedCounters(MemoryWindowCounters):
    """Counters whose `finish` waits for the test to open its gate: a remote store's slow reply."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def finish(
        self,
        windows: Sequence[tuple[Window, float]],
        release: str | None = None,
        *,
        holds: Reservations | None = None,
        lazy: bool = False,
    ) -> None:
        await self.gate.wait()
        await super().finish(windows, release, holds=holds)


async def test_a_background_release_lets_the_answer_go_first_and_is_drained() -> None:
    counters, slots, background = GatedCounters(), MemoryReservations(), Background()
    caller = Caller(key_alias="app", key_id="k1", key_limits=Limits(max_parallel=1, tpm_limit=10**6))
    stage = RateLimits(counters, slots, background=background)
    observer = RecordingObserver()
    pipeline = Pipeline([stage], AttemptLoop(Router({"m": [target(ScriptedUpstream())]}), observer), observer)
    await asyncio.wait_for(pipeline.chat(exchange_for(caller)), 1)  # answered with the release still unsent
    with pytest.raises(LimitExceededError, match="1 at once"):  # the slot is still held meanwhile
        await pipeline.chat(exchange_for(caller))
    drained = asyncio.ensure_future(background.drain())
    await asyncio.sleep(0.01)
    assert not drained.done()  # drain waits for the release in flight
    counters.gate.set()
    await asyncio.wait_for(drained, 1)
    await pipeline.chat(exchange_for(caller))  # the slot came back


@pytest.mark.parametrize(
    ("scope", "caller", "quotas"),
    [
        ("team", Caller(key_alias="a", key_id="k", team_id="t", team_limits=Limits(rpm_limit=1)), {}),
        ("end_user", Caller(key_alias="a", key_id="k", end_user="alice"), {"end_user_quota": Quota(rpm=1)}),
        ("model", Caller(key_alias="a", key_id="k"), {"model_quota": Quota(rpm=1)}),
        ("global", Caller(key_alias="a", key_id="k"), {"global_quota": Quota(rpm=1)}),
    ],
)
async def test_each_scope_limits_and_names_itself(
    scope: str, caller: Caller, quotas: dict[str, Quota]
) -> None:
    pipeline, _ = limited_pipeline(**quotas)
    await pipeline.chat(exchange_for(caller))
    with pytest.raises(LimitExceededError) as refused:
        await pipeline.chat(exchange_for(caller))
    assert refused.value.scope == scope


async def test_end_users_of_one_key_are_limited_apart() -> None:
    pipeline, _ = limited_pipeline(end_user_quota=Quota(rpm=1))
    for user in ("alice", "bob"):
        await pipeline.chat(exchange_for(Caller(key_alias="a", key_id="k", end_user=user)))
    with pytest.raises(LimitExceededError):
        await pipeline.chat(exchange_for(Caller(key_alias="a", key_id="k", end_user="alice")))


async def test_an_unlimited_request_costs_no_state_call() -> None:
    class Exploding(MemoryWindowCounters):
        async def check_and_add(self, windows: Sequence[Window], amount: float) -> Admission:
            raise AssertionError("no limit applies: no call expected")

        async def admit(
            self,
            windows: Sequence[tuple[Window, float]],
            hold: Hold | None = None,
            *,
            holds: Reservations | None = None,
        ) -> Admission:
            raise AssertionError("no limit applies: no call expected")

    pipeline, _ = limited_pipeline(counters=Exploding())
    exchange = exchange_for(Caller(key_alias="free", key_id="k2"))
    await pipeline.chat(exchange)
    assert "x-ratelimit-limit-requests" not in exchange.headers


class CountingCounters:
    """`WindowCounters` that log every call by name into `calls`, shared with `CountingReservations`."""

    def __init__(self, inner: WindowCounters, calls: list[str]) -> None:
        self.inner, self.calls = inner, calls

    async def check_and_add(self, windows: Sequence[Window], amount: float) -> Admission:
        self.calls.append("check_and_add")
        return await self.inner.check_and_add(windows, amount)

    async def add(self, windows: Sequence[Window], amount: float) -> None:
        self.calls.append("add")
        await self.inner.add(windows, amount)

    async def count(self, window: Window) -> float:
        self.calls.append("count")
        return await self.inner.count(window)

    async def admit(
        self,
        windows: Sequence[tuple[Window, float]],
        hold: Hold | None = None,
        *,
        holds: Reservations | None = None,
    ) -> Admission:
        self.calls.append("admit")
        inner_holds = holds.inner if isinstance(holds, CountingReservations) else holds
        return await self.inner.admit(windows, hold, holds=inner_holds)

    async def finish(
        self,
        windows: Sequence[tuple[Window, float]],
        release: str | None = None,
        *,
        holds: Reservations | None = None,
        lazy: bool = False,
    ) -> None:
        self.calls.append("finish")
        inner_holds = holds.inner if isinstance(holds, CountingReservations) else holds
        await self.inner.finish(windows, release, holds=inner_holds)


class CountingReservations:
    """`Reservations` that log every call by name into `calls`."""

    def __init__(self, inner: Reservations, calls: list[str]) -> None:
        self.inner, self.calls = inner, calls

    async def reserve(
        self, reservation_id: str, ceilings: Sequence[Ceiling], amount: float, ttl: float
    ) -> Admission:
        self.calls.append("reserve")
        return await self.inner.reserve(reservation_id, ceilings, amount, ttl)

    async def settle(self, reservation_id: str, actual: float) -> None:
        self.calls.append("settle")
        await self.inner.settle(reservation_id, actual)

    async def release(self, reservation_id: str) -> None:
        self.calls.append("release")
        await self.inner.release(reservation_id)

    async def level(self, key: str) -> tuple[float, float]:
        self.calls.append("level")
        return await self.inner.level(key)

    async def restore(self, key: str, committed: float, ttl: float, *, if_absent: bool = False) -> bool:
        self.calls.append("restore")
        return await self.inner.restore(key, committed, ttl, if_absent=if_absent)


async def test_a_request_with_every_kind_of_limit_is_admitted_in_one_state_call() -> None:
    calls: list[str] = []
    counters, slots = MemoryWindowCounters(), MemoryReservations()
    key_limits = Limits(rpm_limit=5, tpm_limit=1000, max_parallel=2)
    team_limits = Limits(rpm_limit=10, tpm_limit=5000, max_parallel=4)
    caller = Caller(key_alias="app", key_id="k1", key_limits=key_limits, team_id="t", team_limits=team_limits)
    stage = RateLimits(
        CountingCounters(counters, calls),
        CountingReservations(slots, calls),
        global_quota=Quota(rpm=100, tpm=100_000, max_parallel=10),
    )
    exchange = exchange_for(caller)
    assert exchange.request is not None
    estimate = estimate_input_tokens(exchange.request)
    await stage.enter(exchange)
    assert calls == ["admit"]  # requests, tokens and a slot, for every scope: one call
    for scope in ("key:k1", "team:t", "global:all"):
        assert await counters.count(Window(f"rpm:{scope}", 1, MINUTE)) == 1
        assert await counters.count(Window(f"tpm:{scope}", 1, MINUTE)) == estimate
        assert await slots.level(f"parallel:{scope}") == (0, 1)
    assert exchange.headers["x-ratelimit-remaining-requests"] == "4"  # the key: the tightest
    assert exchange.headers["x-ratelimit-remaining-tokens"] == str(1000 - estimate)
    exchange.usage = Usage(input_tokens=40, output_tokens=60)
    await stage.exit(exchange, Outcome("answered"))
    assert calls == ["admit", "finish"]  # the slot given back and the estimate settled to 100: one call
    assert await slots.level("parallel:key:k1") == (0, 0)
    assert await counters.count(Window("tpm:team:t", 1, MINUTE)) == 100
    calls.clear()
    full = [exchange_for(caller), exchange_for(caller)]
    for held in full:
        await stage.enter(held)
    calls.clear()
    with pytest.raises(LimitExceededError, match="2 at once"):
        await stage.enter(exchange_for(caller))
    assert calls == ["admit"]  # a refusal leaves nothing to roll back
    assert await counters.count(Window("rpm:key:k1", 1, MINUTE)) == 3


async def test_a_full_slot_is_named_before_a_full_window() -> None:
    caller = Caller(key_alias="app", key_id="k1", key_limits=Limits(rpm_limit=1, max_parallel=1))
    stage = RateLimits(MemoryWindowCounters(), MemoryReservations())
    first = exchange_for(caller)
    await stage.enter(first)
    with pytest.raises(LimitExceededError, match="1 at once") as both_full:  # the slot frees soonest
        await stage.enter(exchange_for(caller))
    assert (both_full.value.retry_after, both_full.value.scope) == (PARALLEL_RETRY_AFTER, "key")
    await stage.exit(first, Outcome("answered"))
    refused = exchange_for(caller)
    with pytest.raises(LimitExceededError, match="1 requests per minute") as window_full:
        await stage.enter(refused)
    assert MINUTE - 5 < window_full.value.retry_after <= MINUTE
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_a_deployment_quota_is_one_state_call_per_attempt() -> None:
    calls: list[str] = []
    quotas = DeploymentQuotas(
        CountingCounters(MemoryWindowCounters(), calls),
        CountingReservations(MemoryReservations(), calls),
        {"a": Quota(rpm=2, tpm=1000, max_parallel=1)},
    )
    a = ScriptedUpstream("a")
    observer = RecordingObserver()
    pipeline = Pipeline([], AttemptLoop(Router({"m": [target(a)]}), observer, quotas=quotas), observer)
    await pipeline.chat(exchange_for(Caller(key_alias="x")))
    assert calls[0] == "admit" and calls.count("admit") == 1
    assert not {"check_and_add", "reserve"} & set(calls)
    await pipeline.chat(exchange_for(Caller(key_alias="x")))
    calls.clear()
    with pytest.raises(LimitExceededError) as refused:
        await pipeline.chat(exchange_for(Caller(key_alias="x")))
    assert calls == ["admit"]
    assert refused.value.scope == "deployment" and refused.value.retry_after > PARALLEL_RETRY_AFTER


async def test_a_deployment_at_its_quota_is_passed_over_and_never_provoked() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    quotas = DeploymentQuotas(
        MemoryWindowCounters(), MemoryReservations(), {"a": Quota(rpm=2), "b": Quota(rpm=1)}
    )
    router = Router({"m": [target(a, 1), target(b, 0)]})
    observer = RecordingObserver()
    pipeline = Pipeline([], AttemptLoop(router, observer, quotas=quotas), observer)
    deployments = []
    for _ in range(3):
        exchange = exchange_for(Caller(key_alias="x"))
        await pipeline.chat(exchange)
        deployments.append(exchange.deployment)
    assert deployments == ["a", "a", "b"]
    with pytest.raises(LimitExceededError) as refused:
        await pipeline.chat(exchange_for(Caller(key_alias="x")))
    assert refused.value.scope == "deployment"
    assert (len(a.calls), len(b.calls)) == (2, 1)


async def test_a_deployment_concurrency_slot_is_held_for_the_whole_stream() -> None:
    a = ScriptedUpstream("a")
    a.script(Stream.text("x y", chunks=2))
    quotas = DeploymentQuotas(MemoryWindowCounters(), MemoryReservations(), {"a": Quota(max_parallel=1)})
    observer = RecordingObserver()
    pipeline = Pipeline([], AttemptLoop(Router({"m": [target(a)]}), observer, quotas=quotas), observer)
    stream = await pipeline.stream(exchange_for(Caller(key_alias="x"), stream=True))
    with pytest.raises(LimitExceededError):
        await pipeline.chat(exchange_for(Caller(key_alias="x")))
    [_ async for _ in stream]
    await pipeline.chat(exchange_for(Caller(key_alias="x")))


class Unreachable(MemoryWindowCounters):
    """A shared state that is down until `up` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False

    async def check_and_add(self, windows: Sequence[Window], amount: float) -> Admission:
        if not self.up:
            raise SharedStateUnavailableError("redis down")
        return await super().check_and_add(windows, amount)

    async def admit(
        self,
        windows: Sequence[tuple[Window, float]],
        hold: Hold | None = None,
        *,
        holds: Reservations | None = None,
    ) -> Admission:
        if not self.up:
            raise SharedStateUnavailableError("redis down")
        return await super().admit(windows, hold, holds=holds)

    async def finish(
        self,
        windows: Sequence[tuple[Window, float]],
        release: str | None = None,
        *,
        holds: Reservations | None = None,
        lazy: bool = False,
    ) -> None:
        if not self.up:
            raise SharedStateUnavailableError("redis down")
        await super().finish(windows, release, holds=holds)


def failover(
    shared: Unreachable,
    policy: str,
    clock: list[float],
    changes: list[bool],
    *,
    shared_slots: MemoryReservations | None = None,
    local_counters: MemoryWindowCounters | None = None,
    local_slots: MemoryReservations | None = None,
) -> Failover:
    """A failover on `shared` with 3 expected replicas; the other stores are fresh unless given."""
    return Failover(
        shared,
        MemoryReservations() if shared_slots is None else shared_slots,
        MemoryWindowCounters() if local_counters is None else local_counters,
        MemoryReservations() if local_slots is None else local_slots,
        policy=policy,  # type: ignore[arg-type]
        replicas=3,
        retry_seconds=1.0,
        on_change=changes.append,
        clock=lambda: clock[0],
    )


def failover_and_stores(
    shared: Unreachable, policy: str, clock: list[float], changes: list[bool]
) -> tuple[Failover, MemoryReservations, MemoryWindowCounters, MemoryReservations]:
    """`failover`, with the shared slots and the local counters and slots it was built on, to inspect."""
    shared_slots, local_counters, local_slots = (
        MemoryReservations(),
        MemoryWindowCounters(),
        MemoryReservations(),
    )
    state = failover(
        shared,
        policy,
        clock,
        changes,
        shared_slots=shared_slots,
        local_counters=local_counters,
        local_slots=local_slots,
    )
    return state, shared_slots, local_counters, local_slots


async def test_fail_open_enforces_a_local_share_then_recovers() -> None:
    shared, clock, changes = Unreachable(), [0.0], list[bool]()
    state = failover(shared, "fail_open", clock, changes)
    window = [Window("rpm:key:k", 30, MINUTE)]
    allowed = [(await state.check_and_add(window, 1)).allowed for _ in range(12)]
    assert allowed.count(True) == 10  # 30 across 3 expected replicas
    assert changes == [True] and state.degraded
    shared.up = True
    assert not (await state.check_and_add(window, 1)).allowed  # still local until the retry time
    clock[0] = 1.5
    assert (await state.check_and_add(window, 1)).allowed  # shared again, by itself
    assert changes == [True, False] and not state.degraded


async def test_fail_closed_refuses_while_the_shared_state_is_down() -> None:
    shared, clock, changes = Unreachable(), [0.0], list[bool]()
    state = failover(shared, "fail_closed", clock, changes)
    with pytest.raises(LimiterUnavailableError) as refused:
        await state.check_and_add([Window("rpm:key:k", 30, MINUTE)], 1)
    assert refused.value.status == 503
    await state.add([Window("rpm:key:k", 30, MINUTE)], -1)  # corrections never raise


async def test_fail_open_admits_on_a_local_share_and_releases_local_holds_locally() -> None:
    shared, clock, changes = Unreachable(), [0.0], list[bool]()
    state, shared_slots, local_counters, local_slots = failover_and_stores(
        shared, "fail_open", clock, changes
    )
    rpm, tpm = Window("rpm:key:k", 30, MINUTE), Window("tpm:key:k", 3000, MINUTE)
    parallel = Ceiling("parallel:key:k", 6, 60)  # 2 for each of 3 expected replicas
    answers = [
        await state.admit([(rpm, 1), (tpm, 40)], Hold(f"s{i}", (parallel,), 1, 60), holds=state)
        for i in range(3)
    ]
    assert [a.allowed for a in answers] == [True, True, False]
    assert answers[0].remaining == (9, 960, 1)  # the local shares: 10 requests, 1000 tokens, 2 slots
    assert (await local_counters.count(tpm), await local_slots.level(parallel.key)) == (80, (0, 2))
    shared.up, clock[0] = True, 1.5
    assert (await state.admit([(rpm, 1)], Hold("s9", (parallel,), 1, 60), holds=state)).allowed
    assert await shared_slots.level(parallel.key) == (0, 1)  # shared again, holds and all
    await state.release("s0")  # made locally, released locally although the shared state is back
    assert await local_slots.level(parallel.key) == (0, 1)
    with pytest.raises(ValueError):
        await state.admit([], Hold("s10", (parallel,), 1, 60), holds=shared_slots)  # not its own slots


async def test_finish_releases_where_the_hold_was_taken_and_corrects_where_counting_is_done() -> None:
    shared, clock, changes = Unreachable(), [0.0], list[bool]()
    # corrections and releases never refuse, whatever the policy
    state, shared_slots, local_counters, _ = failover_and_stores(shared, "fail_closed", clock, changes)
    tpm, parallel = Window("tpm:key:k", 3000, MINUTE), Ceiling("parallel:key:k", 6, 60)
    shared.up = True
    assert (await state.admit([(tpm, 40)], Hold("shared", (parallel,), 1, 60), holds=state)).allowed
    shared.up = False
    await state.finish([(tpm, 10)], "shared", holds=state)  # Redis down: the shared hold lapses by its TTL
    assert await shared_slots.level(parallel.key) == (0, 1)
    assert await local_counters.count(tpm) == 10  # the correction is counted where counting is done now
    clock[0] = 1.5
    shared.up = True
    await state.finish([(tpm, 20)], "shared", holds=state)
    assert await shared_slots.level(parallel.key) == (0, 0)
    assert await shared.count(tpm) == 60
    with pytest.raises(ValueError):
        await state.finish([], "shared", holds=shared_slots)  # not its own slots


async def test_fail_closed_refuses_an_admission_while_the_shared_state_is_down() -> None:
    shared, clock, changes = Unreachable(), [0.0], list[bool]()
    state = failover(shared, "fail_closed", clock, changes)
    with pytest.raises(LimiterUnavailableError):
        await state.admit(
            [(Window("rpm:key:k", 30, MINUTE), 1)], Hold("s", (Ceiling("p", 1, 60),), 1, 60), holds=state
        )
