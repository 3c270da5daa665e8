"""Stages reserve each deployment's own input estimate, and a request's prompt is counted once per counter."""

from __future__ import annotations

from dataclasses import dataclass, field

from ferryman.core.attempts import AttemptLoop
from ferryman.core.budgets import Budgets
from ferryman.core.caller import Caller, Limits
from ferryman.core.canonical import ChatRequest, ImagePart, Message, TextPart, Usage
from ferryman.core.estimate import FRAME_TOKENS_FOR_REPLY, FRAME_TOKENS_PER_MESSAGE, InputEstimates
from ferryman.core.exchange import Exchange
from ferryman.core.limits import MINUTE, DeploymentQuotas, Quota, RateLimits
from ferryman.core.pipeline import Pipeline, Stage
from ferryman.core.pricing import Price
from ferryman.core.routing import Router, Target
from ferryman.core.shared_state import Window
from ferryman.store.memory import MemoryReservations, MemoryWindowCounters
from ferryman.testing import Answer, ScriptedUpstream
from tests.core.conftest import RecordingObserver

PROMPT = "one two three four five six seven eight nine ten"  # 10 words
CALLER = Caller(
    key_alias="app",
    key_id="k1",
    key_limits=Limits(tpm_limit=100_000, daily_budget_usd=1000.0),
)


@dataclass(frozen=True)
class WordsTimes:
    """`factor` tokens per word (the role "user" is one word too): counts easy to work out by hand."""

    factor: int
    calls: list[str] = field(default_factory=list, compare=False, hash=False)

    def count_text(self, text: str) -> int:
        self.calls.append(text)
        return len(text.split()) * self.factor

    def count_image(self, image: ImagePart) -> int:
        return 0


@dataclass
class ByProvider:
    """One counter per provider: "big" counts three tokens a word, the others one."""

    counters: dict[str, WordsTimes] = field(
        default_factory=lambda: {"big": WordsTimes(3), "small": WordsTimes(1)}
    )
    asked: list[tuple[str, str]] = field(default_factory=list)

    def for_model(self, provider: str, model: str) -> WordsTimes:
        self.asked.append((provider, model))
        return self.counters["big" if provider == "big" else "small"]


def estimate(factor: int) -> int:
    """PROMPT's estimate by `WordsTimes(factor)`: OpenAI's framing around role and text."""
    return FRAME_TOKENS_FOR_REPLY + FRAME_TOKENS_PER_MESSAGE + (1 + 10) * factor


def deployment(name: str, provider: str, price: Price) -> Target:
    return Target(ScriptedUpstream(name), provider, name, f"{name}-model", price)


def exchange_for(text: str = PROMPT, max_tokens: int = 100) -> Exchange:
    exchange = Exchange(request_id="req")
    messages = (Message(role="user", parts=(TextPart(text),)),)
    exchange.admit(CALLER, ChatRequest(model="m", messages=messages, max_tokens=max_tokens))
    return exchange


def test_worst_case_counts_each_deployment_with_its_own_counter() -> None:
    # The cheap deployment's tokenizer counts three times as many tokens: its input costs 3 x 1 = 3 per
    # token of the small count against 2 at the pricier one, so it is the worst case, not the pricier.
    cheap, dear = Price(input=1.0, output=0.0), Price(input=2.0, output=0.0)
    router = Router({"m": [deployment("cheap", "big", cheap), deployment("dear", "other", dear)]})
    stage = Budgets(MemoryReservations(), router, estimates=InputEstimates(ByProvider()))
    assert stage.worst_case(exchange_for()) == max(estimate(3) * 1.0, estimate(1) * 2.0) / 1e6
    assert estimate(3) * 1.0 > estimate(1) * 2.0  # the case this test is about
    without_counters = Budgets(MemoryReservations(), router).worst_case(exchange_for())
    assert without_counters != stage.worst_case(exchange_for())  # the counters were used


async def test_rate_limits_reserve_the_highest_estimate_over_the_models_deployments() -> None:
    price = Price(input=1.0, output=2.0)
    router = Router({"m": [deployment("a", "small", price), deployment("b", "big", price)]})
    counters = MemoryWindowCounters()
    stage = RateLimits(counters, MemoryReservations(), router=router, estimates=InputEstimates(ByProvider()))
    exchange = exchange_for()
    await stage.enter(exchange)
    assert await counters.count(Window("tpm:key:k1", 100_000, MINUTE)) == estimate(3)
    assert exchange.headers["x-ratelimit-remaining-tokens"] == str(100_000 - estimate(3))


async def test_a_deployment_quota_reserves_that_deployments_own_estimate() -> None:
    price = Price(input=1.0, output=2.0)
    small, big = deployment("a", "small", price), deployment("b", "big", price)
    counters = MemoryWindowCounters()
    quotas = DeploymentQuotas(
        counters,
        MemoryReservations(),
        {"a": Quota(tpm=1000), "b": Quota(tpm=1000)},
        estimates=InputEstimates(ByProvider()),
    )
    exchange = exchange_for()
    assert (await quotas.admit(exchange, small)).estimate == estimate(1)
    assert (await quotas.admit(exchange, big)).estimate == estimate(3)
    assert await counters.count(Window("tpm:deployment:b", 1000, MINUTE)) == estimate(3)


async def test_the_prompt_is_counted_once_per_request_and_counter_across_every_stage() -> None:
    counters_by_provider = ByProvider()
    estimates = InputEstimates(counters_by_provider)
    price = Price(input=1.0, output=2.0)
    # Two deployments on the "small" counter (one count serves both) and one on the "big" one.
    targets = [
        deployment("a", "small", price),
        deployment("b", "also-small", price),
        deployment("c", "big", price),
    ]
    router = Router({"m": targets})
    state = MemoryWindowCounters()
    stages: list[Stage] = [
        RateLimits(state, MemoryReservations(), router=router, estimates=estimates),
        Budgets(MemoryReservations(), router, estimates=estimates),
    ]
    quotas = DeploymentQuotas(
        state, MemoryReservations(), {t.deployment: Quota(tpm=10**6) for t in targets}, estimates=estimates
    )
    observer = RecordingObserver()
    pipeline = Pipeline(stages, AttemptLoop(router, observer, quotas=quotas), observer)
    for upstream in (t.upstream for t in targets):
        assert isinstance(upstream, ScriptedUpstream)
        upstream.set_default(Answer.text("ok", usage=Usage(input_tokens=5, output_tokens=5)))
    for _ in range(2):
        await pipeline.chat(exchange_for())
    for counter in counters_by_provider.counters.values():
        assert counter.calls.count(PROMPT) == 2  # once per request, for all three stages and targets
    assert len(counters_by_provider.asked) == 3  # a counter is chosen once per deployment, not per request


def test_without_counters_every_deployment_gets_the_characters_rule() -> None:
    price = Price(input=1.0, output=2.0)
    estimates, exchange = InputEstimates(), exchange_for("x" * 400)
    assert estimates.for_target(exchange, deployment("a", "big", price)) == 400 // 4 + 4
    assert estimates.most(exchange, []) == 400 // 4 + 4
