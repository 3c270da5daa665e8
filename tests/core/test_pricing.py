"""The pinned price table and cost arithmetic."""

from __future__ import annotations

import datetime

import pytest

from ferryman.core.canonical import Usage
from ferryman.core.pricing import PINNED_PRICES, PRICE_TABLE_VERSION, Price, price_for

ANTHROPIC = {model: price for model, price in PINNED_PRICES.items() if model.startswith("claude-")}
EMBEDDINGS = {model: price for model, price in PINNED_PRICES.items() if "embedding" in model}
CHAT = {model: price for model, price in PINNED_PRICES.items() if model not in EMBEDDINGS}


def test_cost_uses_cached_rate_for_the_cached_part_of_the_input() -> None:
    price = Price(input=2.0, output=10.0, cached_input=0.5)
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000, cached_tokens=400_000)
    assert price.cost(usage) == pytest.approx(0.6 * 2.0 + 0.4 * 0.5 + 0.5 * 10.0)


def test_cost_without_cached_rate_charges_full_input() -> None:
    assert Price(1.0, 1.0).cost(Usage(1_000_000, 0, 1_000_000)) == pytest.approx(1.0)


def test_cost_bills_every_token_kind_at_its_own_rate() -> None:
    # Claude Sonnet 4.5's rates: 3 in, 15 out, 0.30 cache read, 3.75 cache write.
    price = Price(3.00, 15.00, cached_input=0.30, cache_write=3.75)
    usage = Usage(
        input_tokens=10_000,
        output_tokens=2_000,
        cached_tokens=6_000,
        cache_write_tokens=3_000,
        reasoning_tokens=500,
    )
    # 1,000 fresh x 3 + 6,000 read x 0.30 + 3,000 written x 3.75 + 2,000 out x 15 (reasoning inside)
    assert price.cost(usage) == pytest.approx((3_000 + 1_800 + 11_250 + 30_000) / 1_000_000, rel=1e-12)


def test_reasoning_is_part_of_the_output_and_is_not_billed_twice() -> None:
    price = Price(1.0, 8.0)
    with_reasoning = Usage(input_tokens=100, output_tokens=1_000, reasoning_tokens=900)
    assert price.cost(with_reasoning) == price.cost(Usage(100, 1_000))


def test_cache_writes_without_their_own_rate_bill_at_the_input_rate() -> None:
    usage = Usage(input_tokens=1_000_000, cache_write_tokens=400_000)
    assert Price(2.0, 0.0).cost(usage) == pytest.approx(2.0)
    assert Price(2.0, 0.0, cache_write=2.5).cost(usage) == pytest.approx(0.6 * 2.0 + 0.4 * 2.5)


def test_cache_counts_beyond_the_input_never_make_fresh_input_negative() -> None:
    # A malformed upstream count: reads come first, writes get what is left, nothing is billed below zero.
    price = Price(1.0, 0.0, cached_input=0.1, cache_write=10.0)
    usage = Usage(input_tokens=1_000_000, cached_tokens=800_000, cache_write_tokens=800_000)
    assert price.cost(usage) == pytest.approx(0.8 * 0.1 + 0.2 * 10.0)


def test_known_models_are_priced_and_dated_snapshots_fall_back() -> None:
    assert price_for("gpt-4o-mini") == PINNED_PRICES["gpt-4o-mini"]
    assert price_for("gpt-4o-2024-08-06") == PINNED_PRICES["gpt-4o"]
    assert price_for("claude-sonnet-4-5-20250929") == PINNED_PRICES["claude-sonnet-4-5"]


def test_unknown_model_is_unpriced_not_free() -> None:
    assert price_for("my-local-llama") is None


def test_override_wins() -> None:
    override = Price(0.0, 0.0)
    assert price_for("gpt-4o", override) is override


# --- The pinned table ---------------------------------------------------------------------------------


def test_table_version_is_a_date() -> None:
    assert datetime.date.fromisoformat(PRICE_TABLE_VERSION) >= datetime.date(2026, 12, 1)


@pytest.mark.parametrize("model", sorted(CHAT))
def test_every_chat_model_has_its_output_limit_and_a_nonzero_price(model: str) -> None:
    price = CHAT[model]
    assert price.max_output_tokens is not None and price.max_output_tokens >= 4_096
    assert price.input > 0 and price.output > price.input  # nothing listed here is free


@pytest.mark.parametrize("model", sorted(PINNED_PRICES))
def test_cache_reads_are_discounted_and_writes_never_cheaper_than_input(model: str) -> None:
    price = PINNED_PRICES[model]
    assert price.cached_input is None or 0 < price.cached_input < price.input
    assert price.cache_write is None or price.cache_write >= price.input


@pytest.mark.parametrize("model", sorted(ANTHROPIC))
def test_anthropic_cache_writes_are_one_and_a_quarter_input_and_reads_a_tenth(model: str) -> None:
    price = ANTHROPIC[model]
    assert price.cache_write == pytest.approx(1.25 * price.input)
    assert price.cached_input == pytest.approx(0.1 * price.input)


def test_only_anthropic_bills_cache_writes_apart() -> None:
    assert {model for model, price in PINNED_PRICES.items() if price.cache_write is not None} == set(
        ANTHROPIC
    )


@pytest.mark.parametrize("model", sorted(EMBEDDINGS))
def test_embedding_models_write_no_output_so_have_no_output_price_or_limit(model: str) -> None:
    price = EMBEDDINGS[model]
    assert (price.output, price.max_output_tokens) == (0.0, None)
    assert price.input > 0
