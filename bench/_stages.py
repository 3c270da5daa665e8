"""What each pipeline stage costs per request, measured in-process so the figure is the stage's own.

The HTTP benchmark's CPU per request moves by ±10 % from run to run on this machine, far more than a
stage costs, so each stage is also timed alone: the same request through the real attempt loop
(answered by `ScriptedUpstream`, no observers) with no stages, then with each of the app's stages by
itself. The difference is the stage's enter + exit, in microseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ferryman.api.app import LimiterState, StageServices, pipeline_stages
from ferryman.core.attempts import AttemptLoop
from ferryman.core.breaker import BreakerConfig, CircuitBreaker
from ferryman.core.caller import Caller, Limits
from ferryman.core.canonical import ChatRequest, Message, TextPart
from ferryman.core.deployment_health import DeploymentHealth
from ferryman.core.exchange import Exchange
from ferryman.core.observer import NullObserver, Observer
from ferryman.core.pipeline import Pipeline, Stage
from ferryman.core.pricing import Price
from ferryman.core.routing import Router, Target
from ferryman.core.strategies import DeploymentLoad, StrategyName
from ferryman.settings import settings_from_mapping
from ferryman.store.backends import open_shared_state
from ferryman.testing import ScriptedUpstream

MODEL = "bench-model"
ROUTING_STRATEGIES: tuple[StrategyName, ...] = (
    "weighted",
    "least_busy",
    "lowest_latency",
    "most_headroom",
    "priority",
)
ROUTING_GOAL_US = 50.0  # the routing issue's: strategies and breaker add at most 0.05 ms per request
# A key with every limit and a budget, none ever reached: each stage does its whole work per request.
BENCH_CALLER = Caller(
    key_alias="bench",
    key_id="bench",
    key_limits=Limits(rpm_limit=10**9, tpm_limit=10**12, max_parallel=10**6, daily_budget_usd=10.0**9),
)


@dataclass(frozen=True, slots=True)
class StageCost:
    """One row: a stage's name and its cost in microseconds per request (enter + exit)."""

    name: str
    microseconds: float


def measure_stage_costs(requests: int = 20_000, rounds: int = 5) -> tuple[StageCost, ...]:
    """The pipeline with no stages, then each stage's own cost on top of it (best of `rounds`)."""
    return asyncio.run(_measure(requests, rounds))


async def _measure(requests: int, rounds: int) -> tuple[StageCost, ...]:
    router = Router({MODEL: [Target(ScriptedUpstream(), "scripted", "bench", MODEL, Price(0.15, 0.6))]})
    settings = settings_from_mapping(
        {"models": [{"name": MODEL, "deployments": [{"provider": "fake", "model": MODEL}]}]}
    )
    shared = await open_shared_state("memory://")
    bare = await _best(router, (), requests, rounds)
    costs = [StageCost("pipeline and attempt loop, no stages", bare)]
    services = StageServices(LimiterState(shared.counters, shared.reservations), shared.reservations)
    for stage in pipeline_stages(settings, router, services, shared.ledger):
        with_stage = await _best(router, (stage,), requests, rounds)
        costs.append(StageCost(stage.name, max(with_stage - bare, 0.0)))
    return (*costs, *await _routing_costs(requests, rounds))


async def _routing_costs(requests: int, rounds: int) -> list[StageCost]:
    """What each routing strategy and the circuit breaker add to the attempt loop, for a model of two
    deployments: against weighted random with no breaker and no load bookkeeping (the loop before
    strategies), each strategy with the breaker on and the in-flight / latency observer feeding it."""
    targets = [Target(ScriptedUpstream(), "scripted", f"bench-{n}", MODEL, Price(0.15, 0.6)) for n in (1, 2)]
    plain = await _best(Router({MODEL: targets}), (), requests, rounds, health=DeploymentHealth())
    costs = []
    for strategy in ROUTING_STRATEGIES:
        load = DeploymentLoad()
        router = Router({MODEL: targets}, strategies={MODEL: strategy}, load=load)
        health = DeploymentHealth(CircuitBreaker(BreakerConfig()))
        timed = await _best(router, (), requests, rounds, health=health, observer=load)
        costs.append(StageCost(f"routing: {strategy} + breaker", max(timed - plain, 0.0)))
    return costs


async def _best(
    router: Router,
    stages: Sequence[Stage],
    requests: int,
    rounds: int,
    *,
    health: DeploymentHealth | None = None,
    observer: Observer | None = None,
) -> float:
    """Microseconds per request through `stages`, the best of `rounds` (the least disturbed run)."""
    observer = observer or NullObserver()
    pipeline = Pipeline(stages, AttemptLoop(router, observer, health=health), observer)
    request = ChatRequest(model=MODEL, messages=(Message(role="user", parts=(TextPart("Say hello."),)),))
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for number in range(requests):
            exchange = Exchange(request_id=f"bench-{number}")  # unique: the ledger records each one
            exchange.admit(BENCH_CALLER, request)
            await pipeline.chat(exchange)
        best = min(best, (time.perf_counter() - started) / requests * 1e6)
    return best


def render_stage_costs(costs: Sequence[StageCost]) -> str:
    """The RESULTS.md section."""
    if not costs:
        return ""
    lines = [
        "## Pipeline stages\n",
        "Each stage's own cost, in-process (see `bench/_stages.py`): the same request through the attempt "
        "loop and `ScriptedUpstream`, without observers, with no stages and then with each stage alone.\n",
        "| stage | µs per request |",
        "|---|---:|",
    ]
    lines += [f"| {cost.name} | {cost.microseconds:.2f} |" for cost in costs]
    routing = [cost for cost in costs if cost.name.startswith("routing: ")]
    if routing:
        worst = max(routing, key=lambda cost: cost.microseconds)
        verdict = "met" if worst.microseconds <= ROUTING_GOAL_US else "**missed**"
        lines += [
            "",
            "The `routing:` rows are a model of two deployments, each strategy with the circuit breaker on "
            "and the in-flight / latency observer feeding it, against weighted random without either "
            f"(the loop before strategies). Goal: at most {ROUTING_GOAL_US:g} µs each; the dearest, "
            f"{worst.name.removeprefix('routing: ')}, adds {worst.microseconds:.2f} µs: {verdict}.",
        ]
    return "\n".join(lines) + "\n"
