"""The app's limiter wiring (`api.app.limiter_state`): the Redis call timed into
`ai_api_shared_state_seconds`, and each fail-over transition a metric and a log line."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

import pytest

from ferryman.api.app import limiter_state
from ferryman.core.shared_state import Admission, Hold, Reservations, Window
from ferryman.errors import SharedStateUnavailableError
from ferryman.observability.metrics import Metrics
from ferryman.settings import settings_from_mapping
from ferryman.store.backends import open_shared_state
from ferryman.store.memory import MemoryWindowCounters


class Unplugged(MemoryWindowCounters):
    """In-process counters that fail like an unreachable Redis while `down`."""

    down = False

    async def admit(
        self,
        windows: Sequence[tuple[Window, float]],
        hold: Hold | None = None,
        *,
        holds: Reservations | None = None,
    ) -> Admission:
        if self.down:
            raise SharedStateUnavailableError("shared state (Redis) failed: ConnectionError")
        return await super().admit(windows, hold, holds=holds)


async def test_the_redis_call_is_timed_and_each_transition_is_a_metric_and_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    local = await open_shared_state("memory://")
    shared_memory = await open_shared_state("memory://")
    counters = Unplugged()
    shared = dataclasses.replace(shared_memory, counters=counters)
    settings = settings_from_mapping({"redis_url": "redis://127.0.0.1:1/0", "models": []})
    metrics = Metrics.create()
    state = limiter_state(settings, shared, local, metrics)
    sample = metrics.registry.get_sample_value
    window = Window("rpm:key:k", 10, 60)

    assert (await state.counters.admit([(window, 1.0)])).allowed
    assert sample("ai_api_shared_state_seconds_count", {"operation": "admit"}) == 1
    assert sample("ai_api_rate_limiter_degraded") == 0

    counters.down = True
    with caplog.at_level(logging.WARNING, logger="ferryman.app"):
        assert (await state.counters.admit([(window, 1.0)])).allowed  # fail-open: the local share
    assert sample("ai_api_rate_limiter_degraded") == 1
    assert "rate limits now fail_open" in caplog.text

    counters.down = False
    caplog.clear()
    await asyncio.sleep(1.1)  # the failover tries Redis again a second after its last failure
    with caplog.at_level(logging.WARNING, logger="ferryman.app"):
        assert (await state.counters.admit([(window, 1.0)])).allowed
    assert sample("ai_api_rate_limiter_degraded") == 0
    assert "shared across replicas" in caplog.text
    assert sample("ai_api_shared_state_seconds_count", {"operation": "admit"}) == 3
