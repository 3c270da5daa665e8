"""The observer in-process: the children it keeps move the same series `labels(...)` would."""

from __future__ import annotations

import pytest

from ferryman.core.exchange import Exchange
from ferryman.observability import metrics as metrics_module
from ferryman.observability.metrics import Metrics
from ferryman.observability.metrics_observer import MetricsObserver


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
