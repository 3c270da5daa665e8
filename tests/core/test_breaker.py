"""The circuit breaker, on an injected clock: opening, half-open probes, closing, and sharing."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from ferryman.core.attempts import AttemptLoop
from ferryman.core.breaker import BreakerConfig, BreakerSync, CircuitBreaker, CircuitState
from ferryman.core.deployment_health import DeploymentHealth
from ferryman.core.pipeline import Pipeline
from ferryman.core.routing import Router, Target
from ferryman.errors import SharedStateUnavailableError, UpstreamStatusError
from ferryman.testing import Fail, ScriptedUpstream
from tests.core.conftest import RecordingObserver, chat_exchange, target

CONFIG = BreakerConfig(
    failure_threshold=3, failure_ratio=0.5, min_requests=10, window_seconds=30, cooldown_seconds=10
)


class Clock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(config: BreakerConfig = CONFIG) -> tuple[CircuitBreaker, Clock, list[tuple[str, CircuitState]]]:
    clock, changes = Clock(), list[tuple[str, CircuitState]]()
    return CircuitBreaker(config, clock=clock, on_change=lambda d, s: changes.append((d, s))), clock, changes


def targets(*names: str) -> list[Target]:
    return [target(ScriptedUpstream(name)) for name in names]


def names(order: list[Target]) -> list[str]:
    return [t.deployment for t in order]


def test_a_circuit_opens_after_the_threshold_of_failures_in_a_row() -> None:
    circuits, _, changes = breaker()
    for _ in range(2):
        circuits.record_failure("a")
    assert circuits.view("a").state == "closed"
    circuits.record_failure("a")
    assert circuits.view("a").state == "open"
    assert changes == [("a", "open")]
    assert names(circuits.arrange(targets("a", "b"))) == ["b", "a"]  # passed over, still last


def test_a_success_between_failures_keeps_it_closed() -> None:
    circuits, _, _ = breaker()
    for _ in range(4):
        circuits.record_failure("a")
        circuits.record_success("a")
    assert circuits.view("a").state == "closed"


def test_a_failure_ratio_over_the_window_opens_it() -> None:
    circuits, _, _ = breaker()
    for _ in range(5):  # 50 % of 10 attempts, never three failures in a row
        circuits.record_success("a")
        circuits.record_failure("a")
    assert circuits.view("a").state == "open"


def test_the_ratio_needs_min_requests_and_forgets_old_windows() -> None:
    circuits, clock, _ = breaker()
    for _ in range(4):
        circuits.record_failure("a")
        circuits.record_success("a")
    assert circuits.view("a").state == "closed"  # 50 %, but only 8 attempts
    clock.now += 31  # a new window: the old attempts no longer count
    circuits.record_success("a")
    circuits.record_failure("a")
    assert circuits.view("a").window_requests == 2
    assert circuits.view("a").state == "closed"


def test_after_the_cooldown_one_probe_goes_first_and_the_others_skip_it() -> None:
    circuits, clock, changes = breaker()
    for _ in range(3):
        circuits.record_failure("a")
    assert names(circuits.arrange(targets("a", "b"))) == ["b", "a"]
    clock.now += 10
    assert names(circuits.arrange(targets("b", "a"))) == ["a", "b"]  # the probe, tried first
    assert circuits.view("a").state == "half_open"
    assert names(circuits.arrange(targets("a", "b"))) == ["b", "a"]  # no probe to spare
    assert changes == [("a", "open"), ("a", "half_open")]


def test_a_successful_probe_closes_the_circuit() -> None:
    circuits, clock, changes = breaker()
    for _ in range(3):
        circuits.record_failure("a")
    clock.now += 10
    circuits.arrange(targets("a", "b"))
    circuits.record_success("a")
    assert circuits.view("a").state == "closed"
    assert changes[-1] == ("a", "closed")
    assert names(circuits.arrange(targets("a", "b"))) == ["a", "b"]


def test_a_failed_probe_opens_it_again_for_a_whole_cooldown() -> None:
    circuits, clock, changes = breaker()
    for _ in range(3):
        circuits.record_failure("a")
    clock.now += 10
    circuits.arrange(targets("a", "b"))
    circuits.record_failure("a")
    assert circuits.view("a").state == "open"
    assert circuits.view("a").retry_in_seconds == 10
    assert changes == [("a", "open"), ("a", "half_open"), ("a", "open")]
    clock.now += 9
    assert names(circuits.arrange(targets("a", "b"))) == ["b", "a"]


def test_a_probe_that_never_reports_lapses_after_a_cooldown() -> None:
    circuits, clock, _ = breaker(BreakerConfig(failure_threshold=1, cooldown_seconds=10))
    circuits.record_failure("a")
    clock.now += 10
    assert names(circuits.arrange(targets("a", "b")))[0] == "a"
    assert names(circuits.arrange(targets("a", "b")))[0] == "b"
    clock.now += 10  # the probe's request went elsewhere, or was cancelled
    assert names(circuits.arrange(targets("a", "b")))[0] == "a"


def test_more_probes_when_configured() -> None:
    circuits, clock, _ = breaker(BreakerConfig(failure_threshold=1, cooldown_seconds=10, half_open_probes=2))
    circuits.record_failure("a")
    clock.now += 10
    firsts = [names(circuits.arrange(targets("b", "a")))[0] for _ in range(3)]
    assert firsts == ["a", "a", "b"]


def test_when_every_circuit_is_open_all_are_still_in_the_order() -> None:
    circuits, _, _ = breaker()
    for name in ("a", "b"):
        for _ in range(3):
            circuits.record_failure(name)
    assert sorted(names(circuits.arrange(targets("a", "b")))) == ["a", "b"]
    circuits.record_success("b")  # a last resort that answered ends its outage
    assert circuits.view("b").state == "closed"


def test_nothing_is_read_while_every_circuit_is_closed() -> None:
    reads: list[float] = []

    def clock() -> float:
        reads.append(0.0)
        return 0.0

    circuits = CircuitBreaker(CONFIG, clock=clock)
    order = targets("a", "b")
    assert circuits.arrange(order) is order
    assert circuits.arrange(order[:1]) is not None
    assert reads == []


def test_reset_closes_and_forgets() -> None:
    circuits, _, changes = breaker()
    for _ in range(3):
        circuits.record_failure("a")
    circuits.reset("a")
    assert circuits.view("a").state == "closed" and circuits.view("a").consecutive_failures == 0
    assert changes[-1] == ("a", "closed")


async def test_the_loop_skips_an_open_deployment_and_probes_it_after_the_cooldown() -> None:
    a, b = ScriptedUpstream("a"), ScriptedUpstream("b")
    a.set_default(Fail.status(503))
    circuits, clock, _ = breaker()
    observer = RecordingObserver()
    router = Router({"m": [target(a, 1), target(b, 0)]}, random.Random(0))
    pipeline = Pipeline([], AttemptLoop(router, observer, health=DeploymentHealth(circuits)), observer)
    for _ in range(3):
        await pipeline.chat(chat_exchange())
    assert len(a.calls) == 3 and circuits.view("a").state == "open"
    for _ in range(5):
        exchange = chat_exchange()
        await pipeline.chat(exchange)
        assert exchange.deployment == "b" and exchange.attempts == 1
    assert len(a.calls) == 3
    clock.now += 10
    await pipeline.chat(chat_exchange())
    assert len(a.calls) == 4  # the probe, which failed: open again
    assert circuits.view("a").state == "open"
    clock.now += 10
    a.set_default(None)  # the upstream recovered
    exchange = chat_exchange()
    await pipeline.chat(exchange)
    assert exchange.deployment == "a" and circuits.view("a").state == "closed"


async def test_client_errors_never_open_a_circuit() -> None:
    (a,) = [ScriptedUpstream("a")]
    a.set_default(Fail.status(400))
    circuits, _, _ = breaker()
    observer = RecordingObserver()
    router = Router({"m": [target(a)]})
    pipeline = Pipeline([], AttemptLoop(router, observer, health=DeploymentHealth(circuits)), observer)
    for _ in range(5):
        with pytest.raises(UpstreamStatusError):
            await pipeline.chat(chat_exchange())
    assert circuits.view("a").state == "closed" and circuits.view("a").consecutive_failures == 0


class MemoryCircuits:
    """`SharedCircuits` in a dict, on the test's clock; `down` makes every call fail."""

    def __init__(self, clock: Clock) -> None:
        self.until: dict[str, float] = {}
        self.clock = clock
        self.down = False
        self.writes = 0

    async def open_circuits(self) -> dict[str, float]:
        self._check()
        return {d: u - self.clock.now for d, u in self.until.items() if u > self.clock.now}

    async def publish(self, opens: Mapping[str, float], closes: set[str]) -> None:
        self._check()
        self.writes += 1
        for deployment, seconds in opens.items():
            self.until[deployment] = self.clock.now + seconds
        for deployment in closes:
            self.until.pop(deployment, None)

    async def aclose(self) -> None:
        pass

    def _check(self) -> None:
        if self.down:
            raise SharedStateUnavailableError("down")


def fleet(size: int) -> tuple[list[CircuitBreaker], list[BreakerSync], MemoryCircuits, Clock]:
    """`size` replicas' breakers on one store, synced by hand (`sync_once`) instead of in the background."""
    clock = Clock()
    store = MemoryCircuits(clock)
    breakers = [CircuitBreaker(CONFIG, clock=clock) for _ in range(size)]
    return breakers, [BreakerSync(b, store) for b in breakers], store, clock


async def test_one_replica_opening_a_circuit_opens_it_on_the_others() -> None:
    (one, other), (sync_one, sync_other), store, clock = fleet(2)
    for _ in range(3):
        one.record_failure("a")
    await sync_one.sync_once()
    assert store.until == {"a": clock.now + 10}
    await sync_other.sync_once()
    assert other.view("a").state == "open"
    assert names(other.arrange(targets("a", "b"))) == ["b", "a"]
    writes = store.writes
    await sync_one.sync_once()
    await sync_other.sync_once()
    assert store.writes == writes  # nothing new to say: reads only


async def test_a_circuit_closed_on_one_replica_closes_on_the_others() -> None:
    (one, other), (sync_one, sync_other), store, _ = fleet(2)
    for _ in range(3):
        one.record_failure("a")
    await sync_one.sync_once()
    await sync_other.sync_once()
    one.reset("a")  # an operator, or a successful probe
    await sync_one.sync_once()
    assert store.until == {}
    await sync_other.sync_once()
    assert other.view("a").state == "closed"


async def test_a_reset_during_a_sync_is_not_undone_by_the_read_it_overtook() -> None:
    (one, other), (sync_one, sync_other), store, _ = fleet(2)
    for _ in range(3):
        one.record_failure("a")
    await sync_one.sync_once()
    await sync_other.sync_once()
    stale = await store.open_circuits()  # `other`'s sync has read the fleet's circuits...
    other.reset("a")  # ...when an operator resets the circuit on `other`, before the read is applied
    other.apply_shared(stale)
    assert other.view("a").state == "closed"
    await sync_other.sync_once()  # the close reaches the store, and from there the fleet
    assert store.until == {}
    await sync_one.sync_once()
    assert one.view("a").state == "closed"


async def test_a_failing_store_leaves_each_replica_on_its_own_state() -> None:
    (one, other), (sync_one, sync_other), store, _ = fleet(2)
    store.down = True
    for _ in range(3):
        one.record_failure("a")
    await sync_one.sync_once()
    assert sync_one.degraded and one.view("a").state == "open"  # local state still decides
    store.down = False
    await sync_one.sync_once()  # the open circuit is written once the store answers again
    await sync_other.sync_once()
    assert not sync_one.degraded and other.view("a").state == "open"
