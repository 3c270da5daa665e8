"""Deployment order: weighted by default, complete, zero-weight deployments only as fallbacks; the
strategies themselves are in test_strategies.py."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ferryman.core.routing import Router, Target
from ferryman.errors import NotFoundError
from ferryman.providers.fake import FakeProvider
from ferryman.settings import Deployment


def target(name: str, weight: int) -> Target:
    deployment = Deployment(provider="fake", model=name, weight=weight)
    return Target(FakeProvider(deployment), "fake", name, name, None, weight)


def test_unknown_model_is_404() -> None:
    with pytest.raises(NotFoundError) as exc:
        Router({}).choose_order("nope")
    assert exc.value.status == 404
    assert exc.value.param == "model"


def test_order_contains_every_deployment_once_with_zero_weight_last() -> None:
    router = Router({"m": [target("a", 1), target("b", 0), target("c", 3)]}, rng=random.Random(1))
    for _ in range(50):
        order = [t.deployment for t in router.choose_order("m")]
        assert sorted(order) == ["a", "b", "c"]
        assert order[-1] == "b"


def test_primary_follows_weights() -> None:
    router = Router({"m": [target("a", 1), target("c", 3)]}, rng=random.Random(7))
    firsts = Counter(router.choose_order("m")[0].deployment for _ in range(4000))
    assert 0.7 < firsts["c"] / 4000 < 0.8


def test_a_models_strategy_is_named_and_unknown_models_are_404() -> None:
    router = Router({"m": [target("a", 1), target("b", 1)]}, strategies={"m": "least_busy"})
    assert router.strategy("m") == "least_busy"
    with pytest.raises(NotFoundError):
        router.strategy("nope")
