"""The one loop that gets an answer from upstream: order → attempt → classify the failure → decide.

Whole answers and streams share it. A stream's attempt is *opening* it: the first batch is awaited
inside the attempt, so an upstream that fails at once still falls back (and still gets a proper error
status), while everything after the first batch is relayed as it arrives. What to do after a failure
is the `AttemptPolicy`'s decision — retry this deployment (after a delay), try the next, skip to the
next fallback model, or give up — so retries with backoff, `Retry-After` and circuit breakers plug in
as policies (`core/retries.py`), not as new loops. The loop itself keeps what no policy may break:
retries fit the retry budget, every attempt fits the request's deadline (`core/timeouts.py`), and the
models tried after the requested one are those `core/fallbacks.py` allows the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from ferryman.core._shield import Shield
from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageReport,
)
from ferryman.core.deployment_health import DeploymentHealth
from ferryman.core.exchange import Exchange
from ferryman.core.fallbacks import ModelFallbacks
from ferryman.core.limits import DeploymentQuotas, LimitExceededError
from ferryman.core.observer import Attempt, Observer
from ferryman.core.routing import Router, Target
from ferryman.core.timeouts import DeadlineExceededError, FirstTokenTimeoutError, ModelTimeouts
from ferryman.core.upstream import StreamBatch
from ferryman.errors import ProviderError, UpstreamConnectionError, UpstreamStatusError, UpstreamTimeoutError

if TYPE_CHECKING:
    from ferryman.core.retries import RetryBudget

log = logging.getLogger("ferryman.attempts")
T = TypeVar("T")


def classify(error: ProviderError) -> str:
    """The failure's class, as metrics, health and policies name it."""
    if isinstance(error, UpstreamTimeoutError):
        return "timeout"
    if isinstance(error, UpstreamStatusError):
        if error.upstream_status == 429:
            return "rate_limited"
        return "status_4xx" if error.upstream_status < 500 else "status_5xx"
    if error.code == "upstream_malformed":
        return "malformed"
    return "connection"


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt, as a policy sees it: `remaining` counts the model's deployments not yet tried,
    `tries` the attempts this request has made on this deployment (this one included), `models_left`
    the fallback models still to come."""

    attempt: Attempt
    error: ProviderError
    kind: str
    remaining: int
    tries: int = 1
    models_left: int = 0


Action = Literal["retry", "next", "fallback", "give_up"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failure: `retry` the same deployment (after `delay` seconds), try the `next`
    (the model's next deployment, else the next fallback model's first), skip to the next `fallback`
    model, or `give_up`."""

    action: Action
    delay: float = 0.0


GIVE_UP = Decision("give_up")
NEXT = Decision("next")
FALLBACK = Decision("fallback")


class AttemptPolicy(Protocol):
    """Decides after each failed attempt; the loop carries the decision out."""

    def decide(self, exchange: Exchange, failure: Failure) -> Decision:
        """The next step after `failure`."""
        ...


class FallbackPolicy:
    """The default: a failure another upstream might not have moves on to the next deployment; a
    failure of the request itself (a 400, say) gives up at once, since every deployment would refuse it."""

    def decide(self, exchange: Exchange, failure: Failure) -> Decision:
        """Next deployment on a retryable failure, else give up."""
        return NEXT if failure.error.retryable else GIVE_UP


class AttemptLoop:
    """Calls deployments in order until one answers, accounting for every attempt."""

    def __init__(
        self,
        router: Router,
        observer: Observer,
        *,
        health: DeploymentHealth | None = None,
        policy: AttemptPolicy | None = None,
        quotas: DeploymentQuotas | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_budget: RetryBudget | None = None,
        fallbacks: ModelFallbacks | None = None,
        timeouts: ModelTimeouts | None = None,
    ) -> None:
        self.router = router
        self.observer = observer
        self.health = health if health is not None else DeploymentHealth()
        self.policy: AttemptPolicy = policy if policy is not None else FallbackPolicy()
        self.quotas = quotas
        self.retry_budget = retry_budget  # None: retries unbounded (as many as the policy asks)
        self.fallbacks = fallbacks  # None: no fallback models
        self.timeouts = timeouts if timeouts is not None else ModelTimeouts()
        self._sleep = sleep
        self._shield = Shield()  # a client that hung up must still give back its quota

    def order(self, model: str) -> list[Target]:
        """The model's strategy's order, with deployments whose circuit is open moved to the end
        (`core/breaker.py`): they are tried only when every other one has failed, so an outage of all
        is still attempted. Free for a single deployment, and while every circuit is closed."""
        return self.health.arrange(self.router.choose_order(model))

    async def chat(self, exchange: Exchange, request: ChatRequest) -> ChatResponse:
        """A whole chat answer."""
        response, attempt = await self._run(exchange, lambda target: target.upstream.chat(request))
        await self._end(attempt, response.usage.total_tokens)
        self.settle(exchange, attempt, response.usage)
        return replace(response, model=request.model)

    async def embed(self, exchange: Exchange, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embeddings, asking each deployment for its own upstream model id."""

        def call(target: Target) -> Awaitable[EmbeddingResponse]:
            return target.upstream.embed(replace(request, model=target.upstream_model))

        response, attempt = await self._run(exchange, call)
        await self._end(attempt, response.usage.total_tokens)
        self.settle(exchange, attempt, response.usage)
        return replace(response, model=request.model)

    async def count(self, exchange: Exchange, count: Callable[[Target], Awaitable[int]]) -> int:
        """A token count by `count` at the first deployment that gives one; billed as nothing."""
        tokens, attempt = await self._run(exchange, count)
        await self._end(attempt, 0)
        self.settle(exchange, attempt, Usage())
        return tokens

    async def stream(self, exchange: Exchange, request: ChatRequest) -> AsyncGenerator[StreamBatch, None]:
        """A stream whose first batch has arrived; the rest is relayed as it comes."""

        async def open_stream(target: Target) -> tuple[StreamBatch, AsyncGenerator[StreamBatch, None]]:
            batches = target.upstream.stream_chat(request)
            limit = self.timeouts.of(exchange.served_model).first_token
            scope = asyncio.timeout(limit)
            try:
                async with scope:
                    first = await anext(batches)
            except StopAsyncIteration:
                await batches.aclose()
                raise UpstreamConnectionError(
                    "The upstream ended the stream before sending anything.", provider=target.provider
                ) from None
            except TimeoutError:
                await batches.aclose()
                if not scope.expired():
                    raise
                raise FirstTokenTimeoutError(
                    f"The upstream sent nothing within the first-token timeout of {limit:g} s.",
                    provider=target.provider,
                ) from None
            except BaseException:
                await batches.aclose()
                raise
            return first, batches

        (first, batches), attempt = await self._run(exchange, open_stream)
        return self._relay(exchange, request, attempt, first, batches)

    async def _run(self, exchange: Exchange, call: Callable[[Target], Awaitable[T]]) -> tuple[T, Attempt]:
        """The loop itself: returns the answer and the attempt that gave it (still to be settled).

        The requested model's deployments are tried first, then each fallback model's; a `retry`
        stays on the deployment, `next` moves along, `fallback` skips to the next model's first.
        """
        self._start(exchange)
        models = [exchange.model, *self._fallback_models(exchange)]
        tries: Counter[str] = Counter()
        after: Action | None = None  # how the loop went on after the last failure
        for position, model in enumerate(models):
            order = self.order(model)
            index = 0
            while index < len(order):
                target = order[index]
                last = position + 1 == len(models) and index + 1 == len(order)
                self._check_deadline(exchange)
                grant = None
                if self.quotas is not None and self.quotas.limits(target):
                    try:
                        grant = await self.quotas.admit(exchange, target)
                    except LimitExceededError:
                        if last:
                            raise  # no deployment has headroom: the client gets the 429, not the upstream
                        index += 1
                        continue
                exchange.served_model = model
                attempt = self._begin(exchange, target, after)
                attempt.grant = grant
                tries[target.deployment] += 1
                try:
                    with self.observer.calling(attempt):
                        result = await self._within_deadline(exchange, call, target)
                except ProviderError as exc:
                    exchange.upstream_seconds += time.perf_counter() - attempt.started
                    await self._end(attempt, None)
                    remaining, models_left = len(order) - index - 1, len(models) - position - 1
                    decision = self._failed(
                        exchange,
                        attempt,
                        exc,
                        remaining,
                        tries=tries[target.deployment],
                        models_left=models_left,
                    )
                    step = await self._carry_out(decision, remaining, models_left)
                    if step == "give_up":
                        raise
                    after = "fallback" if step == "next" and not remaining else step  # a model change
                    if step == "fallback":
                        break
                    index += step == "next"
                    continue
                except BaseException:
                    exchange.upstream_seconds += time.perf_counter() - attempt.started
                    self.observer.attempt_abandoned(exchange, attempt)
                    await self._shield.run(self._end(attempt, None))
                    raise
                exchange.upstream_seconds += time.perf_counter() - attempt.started
                attempt.answered = True
                return result, attempt
        raise AssertionError("unreachable: the last model's last failure is raised")  # pragma: no cover

    def _start(self, exchange: Exchange) -> None:
        """Count the request for the retry budget, and set its deadline (from its arrival)."""
        if self.retry_budget is not None:
            self.retry_budget.record_request()
        if exchange.deadline is None:
            seconds = self.timeouts.budget(exchange.model, _options(exchange).timeout)
            if seconds is not None:
                exchange.deadline = exchange.started + seconds

    def _fallback_models(self, exchange: Exchange) -> list[str]:
        """The models to try after the requested one: the request's list, else the configured one."""
        requested = _options(exchange).fallbacks
        if self.fallbacks is None:
            return []
        return self.fallbacks.chain(exchange, requested)

    async def _carry_out(self, decision: Decision, remaining: int, models_left: int) -> Action:
        """A policy's decision, carried out as far as a retry's wait; what is left for the loop is where
        to go: the same deployment (`retry`), `next`, `fallback`, or `give_up` (raise the failure)."""
        decision = self._affordable(decision)
        if decision.action == "retry":
            if decision.delay > 0:
                await self._sleep(decision.delay)
            return "retry"
        moving_on = decision.action == "fallback" or (decision.action == "next" and not remaining)
        if decision.action == "give_up" or (moving_on and not models_left):
            return "give_up"  # nothing left to try
        return decision.action

    def _affordable(self, decision: Decision) -> Decision:
        """A retry the budget cannot afford moves on instead: retries must never multiply an outage."""
        if decision.action != "retry" or self.retry_budget is None or self.retry_budget.try_spend():
            return decision
        log.info("retry budget exhausted: moving on instead of retrying")
        return NEXT

    def _check_deadline(self, exchange: Exchange) -> None:
        if exchange.deadline is not None and time.perf_counter() >= exchange.deadline:
            raise _deadline_error(exchange)

    async def _within_deadline(
        self, exchange: Exchange, call: Callable[[Target], Awaitable[T]], target: Target
    ) -> T:
        """`call(target)`, given what is left of the request's deadline."""
        if exchange.deadline is None:
            return await call(target)
        scope = asyncio.timeout(max(exchange.deadline - time.perf_counter(), 0.0))
        try:
            async with scope:
                return await call(target)
        except TimeoutError:
            if scope.expired():
                raise _deadline_error(exchange, target.provider) from None
            raise

    async def _end(self, attempt: Attempt, tokens: int | None) -> None:
        """Give back what the attempt took from its deployment's quota (once)."""
        grant, attempt.grant = attempt.grant, None
        if grant is not None and self.quotas is not None:
            await self.quotas.end(grant, tokens)

    def _begin(self, exchange: Exchange, target: Target, after: Action | None) -> Attempt:
        exchange.attempts += 1
        exchange.provider = target.provider
        exchange.deployment = target.deployment
        exchange.upstream_model = target.upstream_model
        attempt = Attempt(exchange.attempts, target, after)
        self.observer.attempt_started(exchange, attempt)
        return attempt

    def _failed(
        self,
        exchange: Exchange,
        attempt: Attempt,
        error: ProviderError,
        remaining: int,
        *,
        tries: int = 1,
        models_left: int = 0,
    ) -> Decision:
        """Record a failure everywhere it counts, and ask the policy what now."""
        kind = classify(error)
        if error.retryable:  # only failures that say something about the upstream count against it
            self.health.record_failure(attempt.target.deployment, kind)
        self.observer.attempt_failed(exchange, attempt, error, kind)
        log.warning(
            "upstream attempt failed",
            extra={
                "deployment": attempt.target.deployment,
                "error": error.message,
                "retryable": error.retryable,
            },
        )
        return self.policy.decide(exchange, Failure(attempt, error, kind, remaining, tries, models_left))

    def settle(
        self, exchange: Exchange, attempt: Attempt, usage: Usage, *, estimated: bool = False, ok: bool = True
    ) -> None:
        """Account for what an attempt used: usage, cost (None when the model has no price)."""
        exchange.usage = usage
        exchange.usage_estimated = estimated
        exchange.answered_by = "upstream"
        price = attempt.target.price
        if not exchange.billed:
            exchange.cost = 0.0  # free at every provider, priced model or not
        elif price is not None:
            exchange.cost = price.cost(usage)
        else:
            exchange.cost = None
            log.warning("unpriced model: cost unknown", extra={"deployment": attempt.target.deployment})
        if ok:
            self.health.record_success(attempt.target.deployment)
        self.observer.attempt_settled(exchange, attempt)

    async def _relay(
        self,
        exchange: Exchange,
        request: ChatRequest,
        attempt: Attempt,
        first: StreamBatch,
        batches: AsyncGenerator[StreamBatch, None],
    ) -> AsyncGenerator[StreamBatch, None]:
        """Forward batches, watching for usage and the first token; settle however the stream ends
        (a stream cut short has still spent money: its usage is estimated from what was seen)."""
        usage: Usage | None = None
        output_chars = 0
        failed = False
        try:
            batch: StreamBatch | None = first
            while batch is not None:
                for event in batch:
                    if isinstance(event, UsageReport):
                        usage = event.usage
                    elif isinstance(event, TextDelta | ToolCallStart | ToolCallDelta):
                        if exchange.time_to_first_token is None:
                            exchange.time_to_first_token = time.perf_counter() - exchange.started
                            self.observer.first_token(exchange, attempt)
                        output_chars += len(event.text) if isinstance(event, TextDelta) else 0
                yield batch
                waited = time.perf_counter()
                try:
                    if exchange.deadline is None:
                        batch = await anext(batches)
                    else:  # the request's deadline covers its stream to the end
                        batch = await self._within_deadline(exchange, _next_batch(batches), attempt.target)
                except StopAsyncIteration:
                    batch = None
                except ProviderError as exc:
                    failed = True
                    self._failed(exchange, attempt, exc, remaining=0)  # too late to fall back: bytes are out
                    raise
                finally:
                    exchange.upstream_seconds += time.perf_counter() - waited
        finally:
            await batches.aclose()
            estimated = usage is None
            if usage is None:
                usage = _estimate_usage(request, output_chars, exchange)
            self.settle(exchange, attempt, usage, estimated=estimated, ok=not failed)
            await self._shield.run(self._end(attempt, usage.total_tokens))


def _next_batch(
    batches: AsyncGenerator[StreamBatch, None],
) -> Callable[[Target], Awaitable[StreamBatch]]:
    """The stream's next batch, as a call `_within_deadline` can bound."""
    return lambda target: anext(batches)


def _options(exchange: Exchange) -> ChatRequest | EmbeddingRequest:
    """The request, whose `fallbacks` and `timeout` are the client's own options."""
    request = exchange.request
    return request if request is not None else _NO_OPTIONS


_NO_OPTIONS = EmbeddingRequest(model="", inputs=())


def _deadline_error(exchange: Exchange, provider: str | None = None) -> DeadlineExceededError:
    seconds = (exchange.deadline or exchange.started) - exchange.started
    return DeadlineExceededError(
        f"The request did not complete within its timeout of {seconds:g} s.",
        provider=provider or exchange.provider or "ferryman",
    )


def _estimate_usage(request: ChatRequest, output_chars: int, exchange: Exchange) -> Usage:
    """An upstream stream that reported no usage is still counted, by the 4-characters rule."""
    log.warning("stream ended without usage; estimating", extra={"deployment": exchange.deployment})
    input_chars = sum(len(m.text) for m in request.messages)
    return Usage(input_tokens=max(input_chars // 4, 1), output_tokens=output_chars // 4)
