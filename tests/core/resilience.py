"""Pipelines serving several models over `ScriptedUpstream`s, with retries, fallbacks and timeouts."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ferryman.core.attempts import AttemptLoop, AttemptPolicy
from ferryman.core.fallbacks import ModelFallbacks
from ferryman.core.pipeline import Pipeline
from ferryman.core.retries import RetryBudget, RetryPolicy, RetryRules
from ferryman.core.routing import Router
from ferryman.core.timeouts import ModelTimeout, ModelTimeouts
from ferryman.testing import ScriptedUpstream
from tests.core.conftest import RecordingObserver, target


class HighJitter(random.Random):
    """Full jitter that always draws its ceiling, so a test can pin the backoff's upper bounds."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class SleepRecorder:
    """Stands in for `asyncio.sleep`: records each wait and returns at once."""

    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def resilient_pipeline(
    routes: Mapping[str, Sequence[ScriptedUpstream]],
    *,
    rules: RetryRules | None = None,
    policy: AttemptPolicy | None = None,
    budget: RetryBudget | None = None,
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    timeouts: Mapping[str, ModelTimeout] | None = None,
    sleep: SleepRecorder | None = None,
    observer: RecordingObserver | None = None,
) -> Pipeline:
    """Each model's upstreams tried in the given order (the first primary, the rest zero-weight)."""
    router = Router(
        {
            model: [target(u, 1 if i == 0 else 0) for i, u in enumerate(upstreams)]
            for model, upstreams in routes.items()
        },
        random.Random(0),
    )
    observer = observer or RecordingObserver()
    loop = AttemptLoop(
        router,
        observer,
        policy=policy if policy is not None else RetryPolicy(rules, rng=HighJitter()),
        sleep=sleep or SleepRecorder(),
        retry_budget=budget,
        fallbacks=ModelFallbacks(fallbacks or {}, list(routes)),
        timeouts=ModelTimeouts(timeouts),
    )
    return Pipeline([], loop, observer)
