"""The observer in-process: the children it keeps move the same series `labels(...)` would."""

from __future__ import annotations

import pytest

from ferryman.core.exchange import Exchange
from ferryman.core.observer import Attempt
from ferryman.core.pricing import Price
from ferryman.core.routing import Target
from ferryman.observability import metrics as metrics_module
from ferryman.observability.metrics import Metrics
from ferryman.observability.metrics_observer import MetricsObserver
from ferryman.testing import ScriptedUpstream


def finished(model: str) -> Exchange:
    exchange = Exchange(request_id="r", model=model, provider="openai", cache_result="miss")
    exchange.finished = exchange.started + 0.3
    return exchange


def test_counts_stay_right_past_the_bound_on_kept_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "_MAX_CHILDREN", 3)  # forgets them every few requests
    metrics = Metrics.create()
    observer = MetricsObserver(metrics)
    for model in ["a", "b", "c", "a", "b", "a"]:
        observer.request_finished(finished(model), None)
    sample = metrics.registry.get_sample_value
    for model, count in {"a": 3, "b": 2, "c": 1}.items():
        assert (
            sample("ai_api_requests_total", {"provider": "openai", "status": "success", "model": model})
            == count
        )
        assert (
            sample("ai_api_request_duration_seconds_count", {"provider": "openai", "model": model}) == count
        )
        assert (
            sample(
                "ai_api_request_duration_seconds_bucket", {"provider": "openai", "model": model, "le": "0.5"}
            )
            == count
        )
    assert sample("ai_api_gateway_overhead_seconds_count", {"provider": "openai"}) == 6
    assert sample("ai_api_cache_requests_total", {"result": "miss"}) == 6


def test_each_attempt_after_the_first_is_counted_by_where_it_went() -> None:
    metrics = Metrics.create()
    observer = MetricsObserver(metrics)
    exchange = Exchange(request_id="r", model="m", provider="openai")
    exchange.served_model = "m"
    target = Target(ScriptedUpstream(), "openai", "a", "m", Price(1.0, 1.0))
    for number, after in enumerate([None, "retry", "next", "retry"], start=1):
        observer.attempt_started(exchange, Attempt(number, target, after))
    exchange.served_model = "n"
    observer.attempt_started(exchange, Attempt(5, target, "fallback"))

    def retries(model: str, after: str) -> float | None:
        labels = {"provider": "openai", "model": model, "after": after}
        return metrics.registry.get_sample_value("ai_api_upstream_retries_total", labels)

    assert (retries("m", "retry"), retries("m", "next"), retries("n", "fallback")) == (2, 1, 1)
    assert (
        metrics.registry.get_sample_value(
            "ai_api_upstream_attempts_total", {"provider": "openai", "model": "m"}
        )
        == 4
    )
