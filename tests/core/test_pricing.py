"""The pinned price table and cost arithmetic."""

from __future__ import annotations

import pytest

from ferryman.core.canonical import Usage
from ferryman.core.pricing import PINNED_PRICES, Price, price_for


def test_cost_uses_cached_rate_for_the_cached_part_of_the_input() -> None:
    price = Price(input=2.0, output=10.0, cached_input=0.5)
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000, cached_tokens=400_000)
    assert price.cost(usage) == pytest.approx(0.6 * 2.0 + 0.4 * 0.5 + 0.5 * 10.0)


def test_cost_without_cached_rate_charges_full_input() -> None:
    assert Price(1.0, 1.0).cost(Usage(1_000_000, 0, 1_000_000)) == pytest.approx(1.0)


def test_known_models_are_priced_and_dated_snapshots_fall_back() -> None:
    assert price_for("gpt-4o-mini") == PINNED_PRICES["gpt-4o-mini"]
    assert price_for("gpt-4o-2024-08-06") == PINNED_PRICES["gpt-4o"]
    assert price_for("claude-sonnet-4-5-20250929") == PINNED_PRICES["claude-sonnet-4-5"]


def test_unknown_model_is_unpriced_not_free() -> None:
    assert price_for("my-local-llama") is None


def test_override_wins() -> None:
    override = Price(0.0, 0.0)
    assert price_for("gpt-4o", override) is override
