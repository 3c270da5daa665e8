"""The one loop that gets an answer from upstream: order → attempt → classify the failure → decide.

Whole answers and streams share it. A stream's attempt is *opening* it: the first batch is awaited
inside the attempt, so an upstream that fails at once still falls back (and still gets a proper error
status), while everything after the first batch is relayed as it arrives. What to do after a failure
is the `AttemptPolicy`'s decision — retry this deployment (after a delay), try the next, or give up —
so retries with backoff, `Retry-After` and circuit breakers plug in as policies, not as new loops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeVar

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
from ferryman.core.limits import DeploymentQuotas, LimitExceededError
from ferryman.core.observer import Attempt, Observer
from ferryman.core.routing import Router, Target
from ferryman.core.upstream import StreamBatch
from ferryman.errors import ProviderError, UpstreamConnectionError, UpstreamStatusError, UpstreamTimeoutError

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
    """A failed attempt, as a policy sees it; `remaining` counts the deployments not yet tried."""

    attempt: Attempt
    error: ProviderError
    kind: str
    remaining: int


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failure: `retry` the same deployment, try the `next`, or `give_up`."""

    action: Literal["retry", "next", "give_up"]
    delay: float = 0.0


GIVE_UP = Decision("give_up")
NEXT = Decision("next")


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
    ) -> None:
        self.router = router
        self.observer = observer
        self.health = health if health is not None else DeploymentHealth()
        self.policy: AttemptPolicy = policy if policy is not None else FallbackPolicy()
        self.quotas = quotas
        self._sleep = sleep
        self._shield = Shield()  # a client that hung up must still give back its quota

    def order(self, model: str) -> list[Target]:
        """The router's order, with deployments that health marks unavailable moved to the end: they
        are tried only when every available one has failed, so an outage of all is still attempted."""
        targets = self.router.choose_order(model)
        now = time.time()
        available = [t for t in targets if self.health.available(t.deployment, now)]
        if len(available) == len(targets):
            return targets
        return available + [t for t in targets if t not in available]

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

    async def stream(self, exchange: Exchange, request: ChatRequest) -> AsyncGenerator[StreamBatch, None]:
        """A stream whose first batch has arrived; the rest is relayed as it comes."""

        async def open_stream(target: Target) -> tuple[StreamBatch, AsyncGenerator[StreamBatch, None]]:
            batches = target.upstream.stream_chat(request)
            try:
                first = await anext(batches)
            except StopAsyncIteration:
                await batches.aclose()
                raise UpstreamConnectionError(
                    "The upstream ended the stream before sending anything.", provider=target.provider
                ) from None
            except BaseException:
                await batches.aclose()
                raise
            return first, batches

        (first, batches), attempt = await self._run(exchange, open_stream)
        return self._relay(exchange, request, attempt, first, batches)

    async def _run(self, exchange: Exchange, call: Callable[[Target], Awaitable[T]]) -> tuple[T, Attempt]:
        """The loop itself: returns the answer and the attempt that gave it (still to be settled)."""
        order = self.order(exchange.model)
        index = 0
        while True:
            target = order[index]
            grant = None
            if self.quotas is not None and self.quotas.limits(target):
                try:
                    grant = await self.quotas.admit(exchange, target)
                except LimitExceededError:
                    if index + 1 == len(order):
                        raise  # no deployment has headroom: the client gets the 429, not the upstream
                    index += 1
                    continue
            attempt = self._begin(exchange, target)
            attempt.grant = grant
            try:
                with self.observer.calling(attempt):
                    result = await call(target)
            except ProviderError as exc:
                exchange.upstream_seconds += time.perf_counter() - attempt.started
                await self._end(attempt, None)
                decision = self._failed(exchange, attempt, exc, remaining=len(order) - index - 1)
                if decision.action == "give_up" or (decision.action == "next" and index + 1 == len(order)):
                    raise
                if decision.delay > 0:
                    await self._sleep(decision.delay)
                index += decision.action == "next"
                continue
            except BaseException:
                exchange.upstream_seconds += time.perf_counter() - attempt.started
                self.observer.attempt_abandoned(exchange, attempt)
                await self._shield.run(self._end(attempt, None))
                raise
            exchange.upstream_seconds += time.perf_counter() - attempt.started
            attempt.answered = True
            return result, attempt

    async def _end(self, attempt: Attempt, tokens: int | None) -> None:
        """Give back what the attempt took from its deployment's quota (once)."""
        grant, attempt.grant = attempt.grant, None
        if grant is not None and self.quotas is not None:
            await self.quotas.end(grant, tokens)

    def _begin(self, exchange: Exchange, target: Target) -> Attempt:
        exchange.attempts += 1
        exchange.provider = target.provider
        exchange.deployment = target.deployment
        exchange.upstream_model = target.upstream_model
        attempt = Attempt(exchange.attempts, target)
        self.observer.attempt_started(exchange, attempt)
        return attempt

    def _failed(self, exchange: Exchange, attempt: Attempt, error: ProviderError, remaining: int) -> Decision:
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
        return self.policy.decide(exchange, Failure(attempt, error, kind, remaining))

    def settle(
        self, exchange: Exchange, attempt: Attempt, usage: Usage, *, estimated: bool = False, ok: bool = True
    ) -> None:
        """Account for what an attempt used: usage, cost (None when the model has no price)."""
        exchange.usage = usage
        exchange.usage_estimated = estimated
        exchange.answered_by = "upstream"
        price = attempt.target.price
        exchange.cost = price.cost(usage) if price is not None else None
        if price is None:
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
                    batch = await anext(batches)
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


def _estimate_usage(request: ChatRequest, output_chars: int, exchange: Exchange) -> Usage:
    """An upstream stream that reported no usage is still counted, by the 4-characters rule."""
    log.warning("stream ended without usage; estimating", extra={"deployment": exchange.deployment})
    input_chars = sum(len(m.text) for m in request.messages)
    return Usage(input_tokens=max(input_chars // 4, 1), output_tokens=output_chars // 4)
