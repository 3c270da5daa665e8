"""Core fixtures: pipelines over `ScriptedUpstream`s, and recorders for what stages and observers see."""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from ferryman.core.attempts import AttemptLoop, AttemptPolicy
from ferryman.core.canonical import ChatRequest, EmbeddingRequest, Message, TextPart
from ferryman.core.deployment_health import DeploymentHealth
from ferryman.core.exchange import Exchange
from ferryman.core.observer import Attempt
from ferryman.core.pipeline import Answer, Outcome, Pipeline, Stage
from ferryman.core.pricing import Price
from ferryman.core.routing import Router, Target
from ferryman.errors import ProviderError
from ferryman.testing import ScriptedUpstream

PRICE = Price(input=1.0, output=2.0)  # $ per million tokens: costs are easy to check by hand


def target(upstream: ScriptedUpstream, weight: int = 1, price: Price | None = PRICE) -> Target:
    """A deployment named after the upstream's label."""
    return Target(upstream, "scripted", upstream.label, f"{upstream.label}-model", price, weight)


def chat_exchange(text: str = "hello there", *, stream: bool = False, model: str = "m") -> Exchange:
    request = ChatRequest(
        model=model, messages=(Message(role="user", parts=(TextPart(text),)),), stream=stream
    )
    exchange = Exchange(request_id="req-test")
    exchange.admit(exchange.caller, request)
    return exchange


def embedding_exchange(model: str = "m") -> Exchange:
    exchange = Exchange(request_id="req-embed")
    exchange.admit(exchange.caller, EmbeddingRequest(model=model, inputs=("a b",)))
    return exchange


@dataclass
class RecordingObserver:
    """Every event, in order, as (event, attempt number) pairs."""

    events: list[tuple[str, int]] = field(default_factory=list)
    finished: list[BaseException | None] = field(default_factory=list)
    afters: list[str | None] = field(default_factory=list)  # each attempt's `after`, in order

    def attempt_started(self, exchange: Exchange, attempt: Attempt) -> None:
        self.events.append(("started", attempt.number))
        self.afters.append(attempt.after)

    def calling(self, attempt: Attempt) -> AbstractContextManager[object]:
        return nullcontext()

    def attempt_failed(self, exchange: Exchange, attempt: Attempt, error: ProviderError, kind: str) -> None:
        self.events.append((f"failed:{kind}", attempt.number))

    def first_token(self, exchange: Exchange, attempt: Attempt) -> None:
        self.events.append(("first_token", attempt.number))

    def attempt_settled(self, exchange: Exchange, attempt: Attempt) -> None:
        self.events.append(("settled", attempt.number))

    def attempt_abandoned(self, exchange: Exchange, attempt: Attempt) -> None:
        self.events.append(("abandoned", attempt.number))

    def request_finished(self, exchange: Exchange, error: BaseException | None) -> None:
        self.finished.append(error)

    def endings(self) -> list[int]:
        """Attempt numbers in the order their attempt ended (settled, abandoned, or failed unanswered)."""
        return [
            n for event, n in self.events if event in ("settled", "abandoned") or event.startswith("failed")
        ]


class ProbeStage:
    """A stage that records its enters and exits in a shared journal, and can refuse or answer."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        *,
        refuse: Exception | None = None,
        answer: Answer | None = None,
    ) -> None:
        self.name = name
        self.journal = journal
        self.refuse = refuse
        self.answer = answer
        self.outcomes: list[Outcome] = []

    async def enter(self, exchange: Exchange) -> Answer | None:
        self.journal.append(f"enter:{self.name}")
        if self.refuse is not None:
            raise self.refuse
        return self.answer

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        self.journal.append(f"exit:{self.name}")
        self.outcomes.append(outcome)


def build_pipeline(
    upstreams: Sequence[ScriptedUpstream],
    stages: Sequence[Stage] = (),
    *,
    observer: RecordingObserver | None = None,
    policy: AttemptPolicy | None = None,
    health: DeploymentHealth | None = None,
    weights: Sequence[int] | None = None,
    seed: int = 0,
) -> Pipeline:
    """A pipeline serving model `m` from `upstreams`, tried in the given order unless `weights` say."""
    observer = observer or RecordingObserver()
    if weights is None:  # first upstream primary, the rest zero-weight fallbacks in order
        weights = [1] + [0] * (len(upstreams) - 1)
    router = Router(
        {"m": [target(u, w) for u, w in zip(upstreams, weights, strict=True)]}, random.Random(seed)
    )
    loop = AttemptLoop(router, observer, health=health, policy=policy)
    return Pipeline(stages, loop, observer)
