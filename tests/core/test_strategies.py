"""Routing strategies: their distributions and orders, alone and fed by the attempt loop."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import get_args

import pytest

from ferryman.core.attempts import AttemptLoop
from ferryman.core.caller import Caller
from ferryman.core.canonical import ChatRequest, Message, TextPart
from ferryman.core.exchange import Exchange
from ferryman.core.limits import DeploymentQuotas, Quota
from ferryman.core.observer import combine
from ferryman.core.pipeline import Pipeline
from ferryman.core.routing import Router, Target
from ferryman.core.strategies import STRATEGIES, DeploymentLoad, HeadroomBook, StrategyName
from ferryman.settings import ModelRoute
from ferryman.store.memory import MemoryReservations, MemoryWindowCounters
from ferryman.testing import ScriptedUpstream, Stream
from tests.core.conftest import RecordingObserver, chat_exchange, target


def targets(*specs: tuple[str, int]) -> list[Target]:
    return [target(ScriptedUpstream(name), weight) for name, weight in specs]


def router(strategy: StrategyName, *specs: tuple[str, int], seed: int = 0, **kwargs: object) -> Router:
    return Router({"m": targets(*specs)}, random.Random(seed), strategies={"m": strategy}, **kwargs)  # type: ignore[arg-type]


def firsts(router: Router, times: int) -> Counter[str]:
    return Counter(router.choose_order("m")[0].deployment for _ in range(times))


def pipeline_over(route: Router, quotas: DeploymentQuotas | None = None) -> Pipeline:
    observer = RecordingObserver()
    loop = AttemptLoop(route, combine([observer, route.load]), quotas=quotas)
    return Pipeline([], loop, observer)


def test_the_config_names_every_strategy() -> None:
    field = ModelRoute.model_fields["strategy"]
    assert set(get_args(field.annotation)) == set(STRATEGIES)
    assert field.default == "weighted"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_orders_every_deployment_once_zero_weight_last(strategy: StrategyName) -> None:
    route = router(strategy, ("a", 1), ("z", 0), ("b", 2), ("c", 1))
    for _ in range(50):
        order = [t.deployment for t in route.choose_order("m")]
        assert sorted(order) == ["a", "b", "c", "z"]
        assert order[-1] == "z"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_single_deployment_is_returned_at_once(strategy: StrategyName) -> None:
    (only,) = targets(("a", 1))
    route = Router({"m": [only]}, strategies={"m": strategy})
    assert route.choose_order("m") == [only]
    assert route.strategy("m") == strategy


def test_weighted_follows_the_weights() -> None:
    counts = firsts(router("weighted", ("a", 1), ("b", 3)), 8000)
    assert 0.72 < counts["b"] / 8000 < 0.78


def test_weighted_is_the_default() -> None:
    route = Router({"m": targets(("a", 1), ("b", 3))}, random.Random(3))
    assert route.strategy("m") == "weighted"
    assert 0.7 < firsts(route, 4000)["b"] / 4000 < 0.8


def test_least_busy_prefers_the_idle_deployment_and_breaks_ties_at_random() -> None:
    route = router("least_busy", ("a", 1), ("b", 1), ("c", 1))
    route.load.in_flight.update({"a": 2, "b": 0, "c": 1})
    assert [t.deployment for t in route.choose_order("m")] == ["b", "c", "a"]
    route.load.in_flight.update({"a": 0, "b": 0, "c": 0})
    counts = firsts(route, 3000)
    assert all(800 < counts[name] < 1200 for name in "abc")


async def test_least_busy_sends_the_next_request_away_from_a_busy_deployment() -> None:
    route = router("least_busy", ("a", 1), ("b", 1), seed=1)
    a, b = (t.upstream for t in route.targets("m"))
    assert isinstance(a, ScriptedUpstream) and isinstance(b, ScriptedUpstream)
    a.set_default(Stream.text("slow answer", chunks=2, delay=0.2))
    b.set_default(Stream.text("slow answer", chunks=2, delay=0.2))
    pipeline = pipeline_over(route)
    exchanges = [chat_exchange() for _ in range(6)]
    tasks = []
    for exchange in exchanges:  # each starts while the earlier ones are still in flight
        tasks.append(asyncio.create_task(pipeline.chat(exchange)))
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert Counter(e.deployment for e in exchanges) == {"a": 3, "b": 3}
    assert route.load.in_flight == {"a": 0, "b": 0}


def test_lowest_latency_goes_to_the_fastest_and_explores_unmeasured_first() -> None:
    route = router("lowest_latency", ("a", 1), ("b", 1), ("c", 1))
    route.load.record_latency("a", 0.9)
    route.load.record_latency("b", 0.1)
    assert firsts(route, 200)["c"] > 180  # never measured: tried first (but for exploration)
    route.load.record_latency("c", 0.5)
    counts = firsts(route, 2000)
    assert counts["b"] / 2000 > 0.9  # the rest is exploration
    assert counts["a"] > 0 and counts["c"] > 0


async def test_lowest_latency_moves_traffic_away_from_a_slow_deployment() -> None:
    route = router("lowest_latency", ("slow", 1), ("fast", 1), seed=2)
    slow, fast = (t.upstream for t in route.targets("m"))
    assert isinstance(slow, ScriptedUpstream) and isinstance(fast, ScriptedUpstream)
    slow.set_default(Stream.text("one two", chunks=2, delay=0.03))
    pipeline = pipeline_over(route)
    served: Counter[str] = Counter()
    for _ in range(40):
        exchange = chat_exchange()
        await pipeline.chat(exchange)
        served[exchange.deployment] += 1
    assert served["fast"] >= 34, served
    latency = route.load.latency
    assert latency["slow"] > 0.02 > latency["fast"]


async def test_lowest_latency_measures_a_stream_by_its_first_token() -> None:
    route = router("lowest_latency", ("a", 1), ("b", 1))
    a, _ = (t.upstream for t in route.targets("m"))
    assert isinstance(a, ScriptedUpstream)
    pipeline = pipeline_over(route)
    a.script(Stream.text("w x y z", chunks=4, delay=0.05))  # the first word after one delay
    exchange = chat_exchange(stream=True)
    route.load.latency["b"] = 10.0  # so `a` goes first
    async for _ in await pipeline.stream(exchange):
        pass
    assert exchange.deployment == "a"
    assert 0.04 < route.load.latency["a"] < 0.12  # the first token's time; the whole stream's is 0.15


def test_most_headroom_avoids_the_deployment_near_its_limit() -> None:
    now = [0.0]
    book = HeadroomBook(clock=lambda: now[0])
    route = router("most_headroom", ("a", 1), ("b", 1), ("c", 1), headroom=book)
    book.note("a", 0.05)
    book.note("b", 0.6)
    assert [t.deployment for t in route.choose_order("m")] == ["c", "b", "a"]  # c: no quota, all of it
    now[0] += 60  # a minute on, `a`'s window has refilled
    assert book.headroom("a") == 1.0


async def test_most_headroom_reads_what_the_deployment_quotas_admitted() -> None:
    book = HeadroomBook()
    route = router("most_headroom", ("small", 1), ("large", 1), headroom=book)
    quotas = DeploymentQuotas(
        MemoryWindowCounters(),
        MemoryReservations(),
        {"small": Quota(rpm=10), "large": Quota(rpm=100)},
        headroom=book,
    )
    pipeline = pipeline_over(route, quotas)
    served: Counter[str] = Counter()
    for _ in range(20):
        exchange = Exchange(request_id="r")
        request = ChatRequest(model="m", messages=(Message(role="user", parts=(TextPart("hi"),)),))
        exchange.admit(Caller(key_alias="k"), request)
        await pipeline.chat(exchange)
        served[exchange.deployment] += 1
    assert served["large"] >= 18, served
    assert book.headroom("small") < book.headroom("large") < 1.0


def test_priority_is_config_order_or_explicit_priority() -> None:
    assert [t.deployment for t in router("priority", ("a", 1), ("b", 1)).choose_order("m")] == ["a", "b"]
    a, b, c = targets(("a", 1), ("b", 1), ("c", 1))
    ranked = [
        Target(a.upstream, a.provider, "a", "a", None, 1, priority=None),
        Target(b.upstream, b.provider, "b", "b", None, 1, priority=2),
        Target(c.upstream, c.provider, "c", "c", None, 1, priority=1),
    ]
    route = Router({"m": ranked}, strategies={"m": "priority"})
    assert all([t.deployment for t in route.choose_order("m")] == ["c", "b", "a"] for _ in range(10))


def test_strategies_ignore_other_models() -> None:
    route = Router(
        {"m": targets(("a", 1), ("b", 1)), "n": targets(("c", 1), ("d", 1))},
        strategies={"m": "priority"},
    )
    assert route.strategy("m") == "priority" and route.strategy("n") == "weighted"
    loaded = DeploymentLoad()
    assert Router({"m": targets(("a", 1))}, load=loaded).load is loaded
